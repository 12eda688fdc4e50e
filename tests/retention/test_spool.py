"""Issue 7, Must show 4: spool import of 100 files, some still being written while it runs (in
place and slowly, by atomic rename, sidecar late, XML sidecars): all ingested once, none twice,
none partial; bad files moved aside with the reason; duplicates and an interrupted import."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from capture.wavfile import wav_header
from recorderd.appliance import Appliance, open_appliance
from recorderd.config import load
from storage.recordingsink import VaultSink, resolve_path
from storage.recovery import recover_crashed
from storage.spool import SpoolImporter, SpoolSettings, SpoolWatcher
from storage.vault import VaultReader
from tests.retention.conftest import RATE, make_appliance, sidecar_xml, tone

DEADLINE_S = 40.0


def fields(i: int) -> dict[str, Any]:
    return {"call_id": f"spool-{i}@pbx", "started_at": 1_714_557_600 + 60 * i, "caller": f"+4930777{i:04d}",
            "callee": f"80{i:02d}", "direction": "inbound" if i % 2 else "outbound", "agent_id": f"agent-{i % 5}"}


def write_sidecar(path: Path, data: dict[str, Any], *, xml: bool) -> None:
    path.write_text(sidecar_xml(data) if xml else json.dumps(data))


def audio_of(i: int) -> np.ndarray:
    return tone(200 + 7 * i, 0.5 + (i % 4) * 0.25, channels=2 if i % 3 == 0 else 1)


def write_slowly(path: Path, audio: np.ndarray, pause_s: float) -> None:
    """In place, the way many PBXs write: a header with size 0 first, audio in pieces with
    pauses shorter than stable_s, the real sizes last."""
    channels = 1 if audio.ndim == 1 else 2
    with open(path, "wb") as out:
        out.write(wav_header(RATE, channels, 0))
        data = audio.astype("<i2").tobytes()
        for start in range(0, len(data), 2000):
            out.write(data[start:start + 2000])
            out.flush()
            time.sleep(pause_s)
        out.seek(0)
        out.write(wav_header(RATE, channels, len(audio)))


def producer(spool: Path, i: int) -> None:
    """One pair, written in one of five ways."""
    name, data, audio = f"rec{i:03d}", fields(i), audio_of(i)
    kind = i % 5
    if kind == 0:      # in place, quickly
        sf.write(spool / f"{name}.wav", audio, RATE, subtype="PCM_16")
        write_sidecar(spool / f"{name}.json", data, xml=False)
    elif kind == 1:    # sidecar first, then the WAV slowly in place
        write_sidecar(spool / f"{name}.json", data, xml=False)
        write_slowly(spool / f"{name}.wav", audio, pause_s=0.05)
    elif kind == 2:    # atomic rename of both
        sf.write(spool / f".{name}.wav.tmp", audio, RATE, subtype="PCM_16", format="WAV")
        write_sidecar(spool / f"{name}.json.part", data, xml=False)
        os.replace(spool / f".{name}.wav.tmp", spool / f"{name}.wav")
        os.replace(spool / f"{name}.json.part", spool / f"{name}.json")
    elif kind == 3:    # the WAV first, the sidecar half a second later
        sf.write(spool / f"{name}.wav", audio, RATE, subtype="PCM_16")
        time.sleep(0.5)
        write_sidecar(spool / f"{name}.json", data, xml=False)
    else:              # an XML sidecar, WAV written slowly
        write_sidecar(spool / f"{name}.xml", data, xml=True)
        write_slowly(spool / f"{name}.wav", audio, pause_s=0.03)


@pytest.fixture
def appliance(tmp_path: Path) -> Any:
    config = make_appliance(tmp_path / "box", spool={"orphan_s": 30.0, "rescan_s": 5.0})
    with open_appliance(load(config), warnings=None) as app:
        yield app


def importer_for(app: Appliance) -> SpoolImporter:
    return SpoolImporter(SpoolSettings.from_config(app.config["spool"]), app.vault_dir, app.keys, app.catalog, app.audit)


def stored_audio(app: Appliance, recording_id: str) -> np.ndarray:
    wrapped = app.catalog.get_key(recording_id)
    detail = app.catalog.get(recording_id)
    assert wrapped is not None and detail is not None and detail.recording.vault_path
    key = app.keys.unwrap(wrapped.kek_id, wrapped.wrapped_key, recording_id)
    with VaultReader(resolve_path(app.vault_dir, detail.recording.vault_path), key, recording_id) as vault:
        return np.frombuffer(b"".join(vault.iter_pcm()), "<i2").reshape(-1, 2)


def spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.is_file())


def test_hundred_files_some_still_being_written(appliance: Appliance) -> None:
    importer = importer_for(appliance)
    spool = importer.settings.directory
    watcher = SpoolWatcher(importer, tick_s=0.2)
    watcher.start()
    try:
        writers = [threading.Thread(target=lambda k=k: [producer(spool, i) for i in range(k, 100, 4)])
                   for k in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and spool_files(spool):
            time.sleep(0.1)
    finally:
        watcher.stop()
    assert spool_files(spool) == [], "everything dropped was taken"
    assert not list(importer.settings.rejected_dir.iterdir()), watcher.reports.rejected
    assert watcher.errors == 0
    imported = watcher.reports.imported
    assert sorted(item["name"] for item in imported) == [f"rec{i:03d}" for i in range(100)], "each once"
    result = appliance.catalog.search(None, tag="spool", limit=500, count_limit=None)
    assert result.total == 100
    by_call = {row.call_id: row for row in result.rows}
    assert len(by_call) == 100, "no call twice"
    for i in range(100):
        row = by_call[f"spool-{i}@pbx"]
        assert row.state == "complete" and row.agent_id == f"agent-{i % 5}" and row.caller == f"+4930777{i:04d}"
        assert row.direction == ("inbound" if i % 2 else "outbound")
        source = audio_of(i)
        stereo = source if source.ndim == 2 else np.stack([source, source], axis=1)
        assert np.array_equal(stored_audio(appliance, row.recording_id), stereo), f"rec{i:03d} not whole"


def drop_pair(spool: Path, name: str, wav: bytes, sidecar: str, suffix: str = ".json") -> None:
    (spool / f"{name}.wav").write_bytes(wav)
    (spool / f"{name}{suffix}").write_text(sidecar)


def wav_bytes(audio: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "x.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path.read_bytes()


def test_bad_files_are_moved_aside_with_the_reason(tmp_path: Path, cli: Callable[..., Any]) -> None:
    config = make_appliance(tmp_path / "box", spool={"orphan_s": 1.0})
    spool = tmp_path / "box" / "spool"
    spool.mkdir(exist_ok=True)
    good = wav_bytes(tone(440, 0.5), tmp_path)
    valid = json.dumps(fields(1))
    drop_pair(spool, "badjson", good, "{call_id: nope")
    drop_pair(spool, "nocallid", good, json.dumps({"started_at": "2024-05-01T10:00:00Z"}))
    drop_pair(spool, "baddate", good, json.dumps({"call_id": "x", "started_at": "yesterday"}))
    drop_pair(spool, "notawav", b"ID3\x03\x00 an mp3 perhaps, certainly not RIFF", valid)
    drop_pair(spool, "dtd", good, '<!DOCTYPE r [<!ENTITY a "x">]><recording><call_id>&a;</call_id></recording>', ".xml")
    (spool / "dtd16.wav").write_bytes(good)   # UTF-16: no "<!DOCTYPE" bytes for a byte search to find
    (spool / "dtd16.xml").write_bytes(('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "x">]>'
                                       '<recording><call_id>&a;</call_id></recording>').encode("utf-16"))
    drop_pair(spool, "threech", wav_bytes(np.zeros((800, 3), np.int16), tmp_path), valid)
    drop_pair(spool, "truncated", good[:-400], valid)   # the header promises 400 bytes more
    (spool / "orphan.wav").write_bytes(good)
    (spool / "both.wav").write_bytes(good)
    (spool / "both.json").write_text(valid)
    (spool / "both.xml").write_text(sidecar_xml(fields(2)))
    expected = {
        "badjson": "is not valid JSON", "nocallid": "call_id is missing", "baddate": "started_at: not a timestamp",
        "notawav": "not a WAV file", "dtd": "DTD or entities is refused",
        "dtd16": "DTD or entities is refused", "threech": "1 or 2 channels",
        "truncated": "incomplete WAV after 1 s: the header promises", "orphan": "no sidecar (.json or .xml) arrived",
        "both": "two sidecars",
    }
    deadline = time.monotonic() + 15
    while spool_files(spool) and time.monotonic() < deadline:
        code, out, err = cli(config, "spool", "run", "--once", "--json")
        time.sleep(0.3)
    assert spool_files(spool) == []
    rejected = tmp_path / "box" / "spool" / "rejected"
    for name, why in expected.items():
        reason = (rejected / f"{name}.reason").read_text()
        assert why in reason, (name, reason)
        assert (rejected / f"{name}.wav").exists()
    assert (rejected / "badjson.json").read_text() == "{call_id: nope"
    code, out, _ = cli(config, "search", "--json")
    assert json.loads(out)["total"] == 0, "nothing bad was catalogued"


def test_duplicates_and_json_report(tmp_path: Path, cli: Callable[..., Any]) -> None:
    config = make_appliance(tmp_path / "box")
    spool = tmp_path / "box" / "spool"
    spool.mkdir(exist_ok=True)
    wav = wav_bytes(tone(600, 0.5), tmp_path)
    drop_pair(spool, "one", wav, json.dumps(fields(7)))
    code, out, _ = cli(config, "spool", "run", "--once", "--json")
    report = json.loads(out)
    assert code == 0 and list(report) == ["imported", "rejected", "duplicates", "pending"]
    assert [item["name"] for item in report["imported"]] == ["one"]
    drop_pair(spool, "again", wav, json.dumps(fields(7)))   # the same bytes, another name
    report = json.loads(cli(config, "spool", "run", "--once", "--json")[1])
    assert report["duplicates"] == ["again"] and report["imported"] == []
    assert spool_files(spool) == []
    assert json.loads(cli(config, "search", "--json")[1])["total"] == 1


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no clean-up."""


def test_an_interrupted_import_is_done_again_once(appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    importer = importer_for(appliance)
    spool = importer.settings.directory
    sf.write(spool / "cut.wav", tone(350, 1.0), RATE, subtype="PCM_16")
    (spool / "cut.json").write_text(json.dumps(fields(3)))

    def die(self: VaultSink, handle: Any, metadata: dict[str, Any]) -> None:
        handle.writer.detach()   # the .part stays, as after a kill
        raise Crash

    monkeypatch.setattr(VaultSink, "close", die)
    monkeypatch.setattr(VaultSink, "discard", lambda self, handle: None)
    importer.settings = SpoolSettings(spool, importer.settings.rejected_dir, stable_s=0.0)
    with pytest.raises(Crash):
        importer.scan()
    monkeypatch.undo()
    # the next start recovers the active row as partial ...
    recovered = recover_crashed(appliance.catalog, appliance.keys, appliance.vault_dir, appliance.audit)
    assert len(recovered) == 1
    # ... and the spool, whose files are still there, discards that copy and imports it whole
    report = importer.scan()
    assert [item["name"] for item in report.imported] == ["cut"]
    rows = appliance.catalog.search("spool-3@pbx").rows
    assert [row.state for row in rows] == ["complete"]
    assert np.array_equal(stored_audio(appliance, rows[0].recording_id)[:, 0], tone(350, 1.0))
    assert spool_files(spool) == []


def test_the_daemon_imports_the_spool_when_enabled(tmp_path: Path) -> None:
    """`recorderd run` with [spool] enabled: a stage of its own (with a heartbeat) that imports
    what is dropped while the daemon records."""
    from recorderd.daemon import Daemon

    config = make_appliance(tmp_path / "box", spool={"enabled": True},
                            daemon={"metrics_listen": "off", "min_free_mb": 0, "resume_free_mb": 0})
    spool = tmp_path / "box" / "spool"
    daemon = Daemon(config)
    try:
        daemon.start()
        assert daemon.spool is not None and daemon.heartbeats is not None
        sf.write(spool / "live.wav", tone(700, 0.5), RATE, subtype="PCM_16")
        (spool / "live.json").write_text(json.dumps(fields(11)))
        deadline = time.monotonic() + 15
        while spool_files(spool) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool_files(spool) == []
        assert "spool" in daemon.heartbeats.stages and "spool" not in daemon.heartbeats.stale()
        assert daemon.appliance is not None
        assert [r.call_id for r in daemon.appliance.catalog.search("spool-11@pbx").rows] == ["spool-11@pbx"]
    finally:
        daemon.stop()
