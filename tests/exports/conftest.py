"""One small appliance for the export tests: `recorderd init` plus three short generated calls
(1.0, 1.2 and 1.4 s, so their WAVs differ) stored with `replay --store` (tagged), and the ways
to open its stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recorderd.appliance import Appliance, open_appliance
from recorderd.cli import main
from recorderd.config import load
from tests.gen.callgen import CallPlan, write_capture

CALLS = 3


@pytest.fixture(scope="session")
def export_box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config path of an appliance holding CALLS short recordings tagged 'evidence'."""
    root = tmp_path_factory.mktemp("export-box")
    capture = root / "calls.pcap"
    plans = [CallPlan(call_id=f"exp-{i}@pbx.example", start_ts=1_700_000_000.0 + 10 * i, duration_s=1.0 + 0.2 * i,
                      caller_num=f"+4930555{i:04d}", callee_num=f"71{i:02d}", caller_port=30000 + 2 * i,
                      callee_port=32000 + 2 * i) for i in range(CALLS)]
    write_capture(str(capture), plans, seed=5)
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    assert main(["--config", str(config), "replay", str(capture), "--store", "--tag", "evidence"]) == 0
    return config


@pytest.fixture
def appliance(export_box: Path) -> Iterator[Appliance]:
    app = open_appliance(load(export_box), recover=False, warnings=None)
    try:
        yield app
    finally:
        app.close()


def recording_ids(app: Appliance) -> list[str]:
    return [row.recording_id for row in app.catalog.search(None, limit=100, order_by="started_at").rows]
