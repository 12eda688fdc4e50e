"""Issue 7, Must show 1: retention with an injected clock at period - 1 day, period and period + 1
day, with and without holds, with overlapping rules: no early deletion, no held deletion, every
due recording purged, tombstones and audit entries present, and a purged recording can no
longer be decrypted, not even from a backup taken before the purge.

The recordings come in through the spool (real WAV + sidecar files, so every attribute the
rules match on is set), the rules and holds through the command line, and the purge runs
through `recorderd retention apply --now T`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import pytest

from recorderd.appliance import open_appliance
from recorderd.config import load
from retention.purge import Purger
from retention.store import Actor
from storage.audit import entries
from storage.catalog import CatalogReader
from storage.keys import KeyDirError, KeyStore
from storage.vault import VaultReader
from tests.retention.conftest import Drop, drop, make_appliance, tone

DAY = timedelta(days=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def started(end: str, seconds: float) -> str:
    return (at(end) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


# name: (sidecar fields, seconds of audio, end of the call, expected expiry or None when held)
CALLS: dict[str, tuple[dict[str, Any], float, str, str | None]] = {
    # inbound 6 m and desk 1 m overlap: 6 months wins
    "A": ({"direction": "inbound", "agent_id": "desk-1"}, 6, "2024-01-31T10:00:00", "2024-07-31T10:00:00"),
    # desk 1 m from 31 January: there is no 31 February, so 1 March, never earlier
    "B": ({"direction": "outbound", "agent_id": "desk-2"}, 6, "2024-01-31T10:00:00", "2024-03-01T10:00:00"),
    # the default year from a leap day
    "C": ({"direction": "outbound"}, 6, "2024-02-29T12:00:00", "2025-03-01T12:00:00"),
    # a misdial: its own 30 days
    "D": ({"direction": "outbound"}, 2, "2024-03-10T08:00:00", "2024-04-09T08:00:00"),
    # a misdial on an inbound line: the longer inbound period wins
    "E": ({"direction": "inbound"}, 2, "2024-03-10T08:00:00", "2024-09-10T08:00:00"),
    # trading 2 y beats inbound 6 m
    "F": ({"direction": "inbound", "tags": ["trading"]}, 6, "2024-01-15T00:00:00", "2026-01-15T00:00:00"),
    # held on the recording itself (due 2025-03-31T23:00 otherwise)
    "G": ({"direction": "outbound"}, 6, "2024-03-31T23:00:00", None),
    # held through a search (tag complaint; due 2024-12-31T12:00 otherwise)
    "H": ({"direction": "outbound", "tags": ["complaint"]}, 6, "2023-12-31T12:00:00", None),
}
RULES = [
    ("default", "1y", "--default"), ("misdial", "30d", "--max-duration", "5"),
    ("inbound", "6m", "--direction", "inbound"), ("trading", "2y", "--tag", "trading"),
    ("desk", "1m", "--agent", "desk-*"),
]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Drop]]:
    root = tmp_path_factory.mktemp("retention")
    config = make_appliance(root / "box")
    drops = {}
    for i, (name, (fields, seconds, end, _)) in enumerate(CALLS.items()):
        drops[name] = drop(root / "box" / "spool", name, tone(300 + 100 * i, seconds), call_id=f"call-{name}@pbx",
                           started_at=started(end, seconds), caller=f"+4930555{i:04d}", callee=f"70{i:02d}",
                           **fields)
    from recorderd.cli import main

    assert main(["--config", str(config), "spool", "run", "--once", "--max-wait", "10"]) == 0
    return config, drops


def ids_by_call(config: Path, cli_json: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    rows = cli_json(config, "search", "--limit", "100", "--unmask")["rows"]
    return {row["call_id"].split("-")[1].split("@")[0]: row for row in rows}


def online_backup(config: Path, target: Path) -> None:
    """What an offsite backup holds: the encrypted vault files as they are and a catalog snapshot
    taken with SQLite's online backup API (never the key directory)."""
    settings = load(config)["storage"]
    target.mkdir()
    shutil.copytree(settings["vault_dir"], target / "vault")
    source = apsw.Connection(settings["catalog"], flags=apsw.SQLITE_OPEN_READONLY)
    copy = apsw.Connection(str(target / "catalog.db"))
    with copy.backup("main", source, "main") as job:
        job.step(-1)
    copy.close()
    source.close()


def decrypt_from_backup(backup: Path, key_dir: Path, recording_id: str) -> np.ndarray:
    """With the appliance's current key directory, open a recording as an earlier backup holds it."""
    reader = CatalogReader(backup / "catalog.db")
    try:
        wrapped = reader.get_key(recording_id)
        path = reader.get(recording_id).recording.vault_path  # type: ignore[union-attr]
    finally:
        reader.close()
    assert wrapped is not None and path
    data_key = KeyStore(key_dir).unwrap(wrapped.kek_id, wrapped.wrapped_key, recording_id)
    with VaultReader(backup / "vault" / path, data_key, recording_id) as vault:
        pcm = b"".join(vault.iter_pcm())
    return np.frombuffer(pcm, "<i2").reshape(-1, 2)


def tombstones(config: Path) -> dict[str, tuple[Any, ...]]:
    conn = apsw.Connection(load(config)["storage"]["catalog"], flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {row[0]: row for row in conn.execute(
            "SELECT recording_id, call_id, caller_hash, callee_hash, rule, expired_at, files_removed_at "
            "FROM retention_tombstones")}
    finally:
        conn.close()


def test_retention_with_a_test_clock(box: tuple[Path, dict[str, Drop]], tmp_path: Path, cli: Callable[..., Any],
                                     cli_json: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config, drops = box
    monkeypatch.setenv("LOGNAME", "alice")
    rows = ids_by_call(config, cli_json)
    assert sorted(rows) == sorted(CALLS), "every spool drop became one recording"
    rid = {name: row["recording_id"] for name, row in rows.items()}
    for name, period, *criteria in RULES:
        saved = cli_json(config, "retention", "rule", "add", name, "--period", period, *criteria)
        assert saved["saved"] is True
    listed = cli_json(config, "retention", "rule", "list")["rules"]
    assert {r["name"]: r["period"] for r in listed} == {name: period for name, period, *_ in RULES}
    hold_g = cli_json(config, "retention", "hold", "add", "--case", "ACME v Bank", "--reason", "litigation",
                      "--recording", rid["G"])
    hold_h = cli_json(config, "retention", "hold", "add", "--case", "complaint 17", "--reason", "regulator",
                      "--tag", "complaint")
    assert (hold_g["recordings"], hold_h["recordings"]) == (1, 1)

    # first run, nothing due yet: keys move under their expiry month's KEK; then a backup is taken
    first = cli_json(config, "retention", "apply", "--now", "2024-02-01T00:00:00Z")
    assert first["purged"] == 0 and first["keys"]["rewrapped"] == len(CALLS)
    backup = tmp_path / "backup"
    online_backup(config, backup)
    key_dir = Path(load(config)["storage"]["key_dir"])

    expiry = {name: at(spec[3]) for name, spec in CALLS.items() if spec[3] is not None}
    instants = sorted({when + offset for when in expiry.values() for offset in (-DAY, timedelta(0), DAY)})
    purged: set[str] = set()
    for now in instants:
        stamp = now.isoformat().replace("+00:00", "Z")
        planned = cli_json(config, "retention", "plan", "--now", stamp)
        due = {name for name, when in expiry.items() if when <= now}
        planned_ids = {i for tally in planned["rules"].values() for i in tally["ids"]}
        assert planned_ids == {rid[n] for n in due - purged}, stamp
        result = cli_json(config, "retention", "apply", "--now", stamp)
        purged |= {name for name in CALLS if rid[name] in result["ids"]}
        assert purged == due, f"at {stamp}: purged {sorted(purged)}, due {sorted(due)}"
        states = {name: row["state"] for name, row in ids_by_call(config, cli_json).items()}
        assert {n for n, s in states.items() if s == "purged"} == due
        assert states["G"] != "purged" and states["H"] != "purged"
    assert purged == set(expiry)
    # the held ones were due (and counted as held) at the end
    final = cli_json(config, "retention", "plan", "--now", instants[-1].isoformat().replace("+00:00", "Z"))
    assert final["held"]["count"] == 2 and final["held"]["by_case"] == {"ACME v Bank": 1, "complaint 17": 1}

    # tombstones: one per purged recording, the governing rule, keyed hashes (never the number)
    stones = tombstones(config)
    assert set(stones) == {rid[n] for n in purged}
    expected_rule = {"A": "inbound", "B": "desk", "C": "default", "D": "misdial", "E": "inbound", "F": "trading"}
    for name in purged:
        stone = stones[rid[name]]
        assert stone[1] == f"call-{name}@pbx" and stone[4] == expected_rule[name]
        assert stone[5] == expiry[name].timestamp() and stone[6] is not None
        assert len(stone[2]) == 64 and drops[name].fields["caller"] not in stone[2]
    # audit: one retention_purge entry per purged recording, and the chain verifies
    with open_appliance(load(config), recover=False, warnings=None) as app:
        reader = app.catalog.reader()
        purges = entries(reader, action="retention_purge")
        reader.close()
    assert sorted(e.object for e in purges) == sorted(rid[n] for n in purged)
    assert cli(config, "audit", "verify")[0] == 0
    # nothing of the purged recordings is left in the vault, and they cannot be decrypted
    vault = Path(load(config)["storage"]["vault_dir"])
    assert not [p for p in vault.rglob("*.rdv*") if any(rid[n] in p.name for n in purged)]
    code, _, err = cli(config, "export-audio", rid["B"], "--out", str(tmp_path / "b.wav"))
    assert code == 1 and f"recording {rid['B']} was purged: its key is destroyed" in err
    shown = cli_json(config, "show", rid["B"], "--unmask")
    assert shown["caller"] is None and shown["metadata"] == {} and shown["tags"] == []

    # the backup taken before the purges: the purged recordings' KEKs are gone, so not even the
    # copy can be decrypted; the held ones in the same backup still can
    for name in purged:
        with pytest.raises(KeyDirError, match="no KEK with id"):
            decrypt_from_backup(backup, key_dir, rid[name])
    for name in ("G", "H"):
        audio = decrypt_from_backup(backup, key_dir, rid[name])
        assert np.array_equal(audio[:, 0], drops[name].audio)

    # a rerun at the same instant purges nothing twice
    again = cli_json(config, "retention", "apply", "--now", instants[-1].isoformat().replace("+00:00", "Z"))
    assert again["purged"] == 0 and again["files_removed"] == 0 and again["finished_earlier"] == []
    assert len(tombstones(config)) == len(purged)

    # releasing H needs a second admin
    hold = str(hold_h["id"])
    requested = cli_json(config, "retention", "hold", "release", hold, "--reason", "case closed")
    assert requested["state"] == "release_requested"
    code, _, err = cli(config, "retention", "hold", "release", hold, "--approve")
    assert code == 1 and "four eyes" in err
    monkeypatch.setenv("LOGNAME", "bob")
    released = cli_json(config, "retention", "hold", "release", hold, "--approve")
    assert released["state"] == "released" and released["released_by"] == "bob@cli"
    assert [h["id"] for h in cli_json(config, "retention", "hold", "list")["holds"]] == [hold_g["id"]]
    last = cli_json(config, "retention", "apply", "--now", instants[-1].isoformat().replace("+00:00", "Z"))
    assert last["ids"] == [rid["H"]]
    with pytest.raises(KeyDirError):
        decrypt_from_backup(backup, key_dir, rid["H"])
    # G is still held and still readable in the appliance itself
    code, _, _ = cli(config, "export-audio", rid["G"], "--out", str(tmp_path / "g.wav"))
    assert code == 0


def test_test_clock_is_refused_unless_configured(tmp_path: Path, cli: Callable[..., Any]) -> None:
    config = make_appliance(tmp_path / "box", retention={"allow_test_clock": False})
    code, _, err = cli(config, "retention", "plan", "--now", "2030-01-01T00:00:00Z")
    assert code == 2 and "retention.allow_test_clock is false" in err
    assert cli(config, "retention", "plan")[0] == 0


def test_a_crashed_purge_is_finished_by_the_next_run(tmp_path: Path, cli: Callable[..., Any],
                                                     cli_json: Callable[..., Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Key destroyed, then the process dies before the vault file is deleted: the recording is
    already unreadable, and the next run deletes the file and completes the tombstone."""
    config = make_appliance(tmp_path / "box")
    for i in range(2):
        drop(tmp_path / "box" / "spool", f"x{i}", tone(500, 2), call_id=f"x{i}@pbx", started_at=f"2024-01-0{i + 1}T00:00:00Z")
    assert cli(config, "spool", "run", "--once")[0] == 0
    cli_json(config, "retention", "rule", "add", "default", "--period", "30d", "--default")
    ids = sorted(r["recording_id"] for r in cli_json(config, "search")["rows"])

    def crash(self: Purger, recording_id: str, vault_path: str | None) -> int:
        raise OSError("simulated crash after the key was destroyed")

    monkeypatch.setattr(Purger, "_remove_files", crash)
    with open_appliance(load(config), recover=False, warnings=None) as app:
        purger = Purger(app.catalog, app.audit, app.keys, app.vault_dir, Actor("test"))
        with pytest.raises(OSError, match="simulated crash"):
            purger.apply(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
    monkeypatch.undo()
    vault = Path(load(config)["storage"]["vault_dir"])
    assert len(list(vault.rglob("*.rdv"))) == 2, "the files survived the crash"
    assert [stone[6] for stone in tombstones(config).values()] == [None, None], "tombstones not completed yet"
    for rid in ids:
        code, _, err = cli(config, "export-audio", rid, "--out", str(tmp_path / "a.wav"))
        assert code == 1 and "purged" in err
    result = cli_json(config, "retention", "apply", "--now", "2024-06-01T00:00:00Z")
    # both keys were destroyed in the batch's transaction before the crash: both are finished now
    assert sorted(result["finished_earlier"]) == ids and result["ids"] == []
    assert not list(vault.rglob("*.rdv"))
    assert all(stone[6] is not None for stone in tombstones(config).values())
    assert cli_json(config, "retention", "apply", "--now", "2024-06-01T00:00:00Z")["finished_earlier"] == []


def test_rule_commands_json_and_errors(tmp_path: Path, cli: Callable[..., Any], cli_json: Callable[..., Any]) -> None:
    config = make_appliance(tmp_path / "box")
    for i, seconds in enumerate((2, 6, 6)):
        drop(tmp_path / "box" / "spool", f"r{i}", tone(450, seconds), call_id=f"r{i}@pbx",
             started_at=f"2024-01-0{i + 1}T00:00:00Z", direction="inbound" if i == 2 else "outbound")
    assert cli(config, "spool", "run", "--once")[0] == 0
    added = cli_json(config, "retention", "rule", "add", "default", "--period", "1y", "--default")
    assert added == {"rule": "default", "saved": True,
                     "impact": {"changed": 3, "newly_due": 3, "no_longer_due": 0, "due_before": 0, "due_after": 3,
                                "examples": added["impact"]["examples"]}}
    dry = cli_json(config, "retention", "rule", "add", "inbound", "--period", "7y", "--direction", "inbound",
                   "--dry-run")
    assert dry["saved"] is False and dry["impact"]["changed"] == 1
    assert [r["name"] for r in cli_json(config, "retention", "rule", "list")["rules"]] == ["default"]
    code, _, err = cli(config, "retention", "rule", "add", "default", "--period", "2y", "--default")
    assert code == 2 and "exists already (use --replace" in err
    code, _, err = cli(config, "retention", "rule", "add", "x", "--period", "7 weeks")
    assert code == 2 and "not a period: '7 weeks'" in err
    code, _, err = cli(config, "retention", "rule", "add", "d2", "--period", "1y", "--default")
    assert code == 2 and "only one default rule" in err
    replaced = cli_json(config, "retention", "rule", "add", "default", "--period", "2y", "--default", "--replace")
    assert replaced["impact"]["changed"] == 3
    listed = cli_json(config, "retention", "rule", "list")["rules"]
    assert [(r["name"], r["period"], r["default"]) for r in listed] == [("default", "2y", True)]
    assert list(listed[0]) == ["name", "period", "default", "criteria", "description", "created_by", "created_at",
                               "updated_by", "updated_at"]
    removed = cli_json(config, "retention", "rule", "remove", "default")
    assert removed["saved"] is True and removed["impact"]["changed"] == 3
    code, _, err = cli(config, "retention", "rule", "remove", "default")
    assert code == 2 and "no retention rule named 'default'" in err
    hold = cli_json(config, "retention", "hold", "add", "--case", "c", "--reason", "r", "--query", "r1@pbx")
    assert hold["recordings"] == 1 and hold["search"] == {"query": "r1@pbx"}
    code, _, err = cli(config, "retention", "hold", "add", "--case", "c", "--reason", "r", "--recording", "nope")
    assert code == 2 and "unknown recording id 'nope'" in err
    code, _, err = cli(config, "retention", "hold", "add", "--case", "c", "--reason", "r")
    assert code == 2 and "on one recording or on a search" in err
    holds = cli_json(config, "retention", "hold", "list", "--all")["holds"]
    assert [h["case"] for h in holds] == ["c"] and list(holds[0])[:4] == ["id", "case", "reason", "state"]
    with open_appliance(load(config), recover=False, warnings=None) as app:
        reader = app.catalog.reader()
        actions = [e.action for e in entries(reader) if e.action.startswith(("retention_rule", "legal_hold"))]
        reader.close()
    assert actions == ["retention_rule_save", "retention_rule_list", "retention_rule_save", "retention_rule_list",
                       "retention_rule_remove", "legal_hold_place", "legal_hold_list"]
