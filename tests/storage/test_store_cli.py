"""Issue 3, end to end through the command line: init, replay --store, search, show,
export-audio, verify, audit verify, keys.

Must show 1 (round trip and search), 2 (no plaintext in the vault) and 3 (tampering is
detected and named) with real captures from the corpus and generated ones.
"""

from __future__ import annotations

import collections
import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main
from tests.gen.callgen import CallPlan, write_capture

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "pcap"
SAMPLES = ["dtmf_rfc2833_g711a.pcap", "g722_sipp_fs.pcap", "srtp_sdes_two_legs_pcmu.pcap",
           "asterisk_two_legs_pcmu.pcap"]


def run(config: Path, *argv: str) -> int:
    return main(["--config", str(config), *argv])


def run_json(config: Path, capsys: pytest.CaptureFixture, *argv: str) -> Any:
    capsys.readouterr()
    assert run(config, *argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "calls.pcap"
    plans = [CallPlan(call_id=f"gen-{i}@pbx.example", start_ts=1_700_000_000.0 + i, duration_s=3.0,
                      caller_num=f"+49301234{i:04d}", callee_num=f"70{i:02d}", caller_port=30000 + 2 * i,
                      callee_port=32000 + 2 * i) for i in range(5)]
    write_capture(str(path), plans, seed=11)
    return path


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, generated: Path) -> Path:
    """One appliance with the samples and the generated calls stored, tagged."""
    root = tmp_path_factory.mktemp("appliance")
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    captures = [str(CORPUS / name) for name in SAMPLES]
    assert run(config, "replay", *captures, "--store", "--tag", "corpus") == 0
    assert run(config, "replay", str(generated), "--store", "--tag", "generated", "--tag", "batch-7") == 0
    return config


def plain_replays(tmp: Path, captures: list[Path]) -> dict[str, Path]:
    """call_id -> the WAV `replay --out` writes, one capture at a time as --store read them."""
    found: dict[str, Path] = {}
    for capture in captures:
        out = tmp / capture.stem
        assert main(["replay", str(capture), "--out", str(out)]) == 0
        for meta in out.glob("*.json"):
            if meta.name != "not-recorded.json":
                found[json.loads(meta.read_text())["call_id"]] = meta.with_suffix(".wav")
    return found


def test_round_trip_is_sample_identical(appliance: Path, generated: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    expected = plain_replays(tmp_path, [CORPUS / n for n in SAMPLES] + [generated])
    listing = run_json(appliance, capsys, "search", "--limit", "500")
    assert listing["total"] == len(expected)
    for row in listing["rows"]:
        out = tmp_path / f"{row['recording_id']}.wav"
        assert run(appliance, "export-audio", row["recording_id"], "--out", str(out)) == 0
        ours, ours_rate = sf.read(out, dtype="int16")
        theirs, their_rate = sf.read(expected[row["call_id"]], dtype="int16")
        assert ours_rate == their_rate
        assert np.array_equal(ours, theirs), row["call_id"]
        assert out.read_bytes() == expected[row["call_id"]].read_bytes()


def test_search_by_number_part_call_id_and_tag(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    # part of the caller's number (middle digits), and of the callee's
    hits = run_json(appliance, capsys, "search", "2340003", "--unmask")
    assert [r["call_id"] for r in hits["rows"]] == ["gen-3@pbx.example"]
    hits = run_json(appliance, capsys, "search", "--party", "7003", "--unmask")
    assert {r["call_id"] for r in hits["rows"]} == {"gen-3@pbx.example"}
    hits = run_json(appliance, capsys, "search", "25672@192.168.105.110")
    assert [r["call_id"] for r in hits["rows"]] == ["25672@192.168.105.110"]
    assert run_json(appliance, capsys, "search", "--tag", "batch-7")["total"] == 5
    assert run_json(appliance, capsys, "search", "--tag", "corpus")["total"] == 1 + 1 + 2 + 2


def test_numbers_are_masked_unless_asked(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    row = run_json(appliance, capsys, "search", "gen-1@pbx.example")["rows"][0]
    assert row["caller"] != "+493012340001" and "*" in row["caller"]
    row = run_json(appliance, capsys, "search", "gen-1@pbx.example", "--unmask")["rows"][0]
    assert row["caller"] == "+493012340001"
    shown = run_json(appliance, capsys, "show", row["recording_id"])
    assert "*" in shown["caller"] and "kek_id" not in shown


def test_json_output_is_stable(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    first = run_json(appliance, capsys, "search", "--tag", "generated", "--order", "started_at")
    second = run_json(appliance, capsys, "search", "--tag", "generated", "--order", "started_at")
    assert first == second
    assert list(first) == ["total", "rows", "total_exact"]
    assert [r["call_id"] for r in first["rows"]] == [f"gen-{i}@pbx.example" for i in range(5)]


def byte_entropy(data: bytes) -> float:
    counts = collections.Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


def test_no_plaintext_in_the_vault(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    rows = run_json(appliance, capsys, "search", "--limit", "500", "--unmask")["rows"]
    needles = [b"RIFF", b"WAVE", b"SIP/2.0", b"INVITE"]
    for row in rows:
        needles += [row["call_id"].encode(), (row["caller"] or "").encode(), (row["callee"] or "").encode()]
    needles = [n for n in needles if len(n) >= 4]
    vault = appliance.parent / "vault"
    files = list(vault.rglob("*.rdv"))
    assert len(files) == len(rows)
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} in {path}"
        assert byte_entropy(data) > 7.9


def fresh_copy(appliance: Path, tmp_path: Path) -> Path:
    box = tmp_path / "box"
    shutil.copytree(appliance.parent, box, symlinks=True)
    return box / "recorderd.toml"


def vault_files(config: Path) -> list[Path]:
    return sorted((config.parent / "vault").rglob("*.rdv"))


def test_verify_passes_on_an_untouched_vault(appliance: Path, tmp_path: Path) -> None:
    assert run(fresh_copy(appliance, tmp_path), "verify") == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "drop_segment", "orphan"])
def test_verify_names_the_damaged_recording(appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            damage: str) -> None:
    config = fresh_copy(appliance, tmp_path)
    files = vault_files(config)
    big = max(files, key=lambda p: p.stat().st_size)
    other = next(p for p in files if p != big)
    data = bytearray(big.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        big.write_bytes(bytes(data))
    elif damage == "truncate":
        big.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "swap":
        a, b = big.read_bytes(), other.read_bytes()
        big.write_bytes(b)
        other.write_bytes(a)
    elif damage == "drop_segment":
        segment = 65536 + 16
        header = 60 + len(big.stem)   # fixed fields (storage/vault.py layout) + recording id
        del data[header: header + segment]
        big.write_bytes(bytes(data))
    else:
        shutil.copy(other, other.with_name("intruder.rdv"))
    capsys.readouterr()
    assert run(config, "verify") == 1
    said = capsys.readouterr().out
    name = "intruder.rdv" if damage == "orphan" else big.stem.split(".")[0]
    assert name in said, said


def test_wrong_kek_is_named(appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = fresh_copy(appliance, tmp_path)
    kek = next((config.parent / "keys").glob("kek-*.key"))
    kek.write_bytes(bytes(len(kek.read_bytes())))
    capsys.readouterr()
    assert run(config, "verify") == 1
    assert "problem" in capsys.readouterr().out


def test_audit_chain_verifies_and_names_an_edited_entry(appliance: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    config = fresh_copy(appliance, tmp_path)
    assert run(config, "audit", "verify") == 0
    db = sqlite3.connect(config.parent / "catalog.db")
    triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for name in triggers:  # an attacker with the file drops the guards first
        db.execute(f'DROP TRIGGER "{name}"')
    (seq,) = db.execute("SELECT seq FROM audit WHERE action = 'import_captures' ORDER BY seq LIMIT 1").fetchone()
    db.execute("UPDATE audit SET actor = 'nobody' WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    capsys.readouterr()
    assert run(config, "audit", "verify") == 1
    assert f"entry {seq}" in capsys.readouterr().out


def test_every_command_leaves_an_audit_entry(appliance: Path, tmp_path: Path) -> None:
    config = fresh_copy(appliance, tmp_path)
    row_id = None
    db = sqlite3.connect(config.parent / "catalog.db")
    (row_id,) = db.execute("SELECT recording_id FROM recordings LIMIT 1").fetchone()
    before = db.execute("SELECT count(*) FROM audit").fetchone()[0]
    db.close()
    assert run(config, "search", "gen") == 0
    assert run(config, "show", row_id) == 0
    assert run(config, "export-audio", row_id, "--out", str(tmp_path / "x.wav"), "--reason", "test") == 0
    assert run(config, "verify") == 0
    db = sqlite3.connect(config.parent / "catalog.db")
    actions = [r[0] for r in db.execute("SELECT action FROM audit WHERE seq > ? ORDER BY seq", (before,))]
    db.close()
    assert actions == ["search", "view", "export_audio", "verify"]


def test_unknown_id_and_bad_key_dir_are_clear_errors(appliance: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    config = fresh_copy(appliance, tmp_path)
    capsys.readouterr()
    assert run(config, "show", "no-such-recording") == 1
    assert "no recording no-such-recording" in capsys.readouterr().err
    (config.parent / "keys").chmod(0o755)
    assert run(config, "search") == 2
    assert "storage.key_dir" in capsys.readouterr().err


def test_key_rotation_rewraps_everything_and_resumes(appliance: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = fresh_copy(appliance, tmp_path)
    import recorderd.commands.keys as keys_cmd
    from storage.catalog import Catalog

    real = Catalog.set_wrapped_keys
    calls = {"n": 0}

    def dies_after_first_batch(self: Catalog, items: Any, **kw: Any) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("killed midway")
        return real(self, items, **kw)

    monkeypatch.setattr(keys_cmd, "ROTATE_BATCH", 3)
    monkeypatch.setattr(Catalog, "set_wrapped_keys", dies_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        run(config, "keys", "rotate")
    monkeypatch.setattr(Catalog, "set_wrapped_keys", real)
    status = run_json(config, capsys, "keys", "status")
    assert sum(k["data_keys"] for k in status["keks"] if not k["active"]) > 0   # halfway
    assert run(config, "verify") == 0                                           # all still decrypt
    assert run(config, "keys", "rotate") == 0                                   # resumes
    status = run_json(config, capsys, "keys", "status")
    assert len(status["keks"]) == 2
    assert all(k["data_keys"] == 0 for k in status["keks"] if not k["active"])
    assert run(config, "verify") == 0


def test_public_key_and_escrow(appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from storage.keys import KeyStore

    config = fresh_copy(appliance, tmp_path)
    capsys.readouterr()
    assert run(config, "keys", "public") == 0
    assert capsys.readouterr().out.startswith("-----BEGIN PUBLIC KEY-----")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert run(config, "keys", "export-escrow", "--out", str(tmp_path / "escrow.json")) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery staple\n"))
    assert run(config, "keys", "export-escrow", "--out", str(tmp_path / "escrow.json")) == 0
    keks = KeyStore.import_escrow((tmp_path / "escrow.json").read_bytes(), "correct horse battery staple")
    assert set(keks) == {p.name[4:-4] for p in (config.parent / "keys").glob("kek-*.key")}


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_committed(tmp_path: Path, generated: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    import subprocess

    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    vault = tmp_path / "box" / "vault"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k,mode=0700", "tmpfs", str(vault)], check=True)
    try:
        capsys.readouterr()
        assert run(config, "replay", str(generated), "--store") == 1
        said = capsys.readouterr().err
        assert "disk full" in said and "committed and intact" in said
        # the next start of a recorder recovers what was being written; then everything verifies
        from recorderd.appliance import open_appliance
        from recorderd.config import load

        with open_appliance(load(config), warnings=None) as app:      # still full: nothing breaks
            assert all(r.note.startswith("not recovered yet") for r in app.recovered)
        subprocess.run(["mount", "-o", "remount,size=20m", str(vault)], check=True)   # space freed
        with open_appliance(load(config), warnings=None) as app:
            assert app.recovered and all("recorder crash" in r.note for r in app.recovered)
        listing = run_json(config, capsys, "search", "--limit", "100")
        assert listing["total"] >= 1
        assert {r["state"] for r in listing["rows"]} <= {"complete", "partial"}
        assert run(config, "verify") == 0
    finally:
        subprocess.run(["umount", "-l", str(vault)], check=False)


def test_one_recorder_writes_a_vault_at_a_time(tmp_path: Path) -> None:
    from recorderd.appliance import ApplianceError, open_appliance
    from recorderd.config import load

    assert main(["init", str(tmp_path / "box")]) == 0
    config = load(tmp_path / "box" / "recorderd.toml")
    with open_appliance(config, warnings=None):
        with pytest.raises(ApplianceError, match="another recorder"):
            open_appliance(config, warnings=None)
        with open_appliance(config, recover=False, warnings=None):   # readers are welcome
            pass
    with open_appliance(config, warnings=None):                       # released on close
        pass


def test_masked_uris_keep_their_host(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    row = run_json(appliance, capsys, "search", "25672@192.168.105.110")["rows"][0]
    user, _, host = row["caller_uri"].partition("@")
    assert "*" in user and "*" not in host and host.startswith("192.168.105.")


def test_init_keeps_every_path_inside_the_appliance(tmp_path: Path) -> None:
    """A self-contained layout (tests, demos): no setting that names a file or directory points
    outside DIR, except the shipped Whisper model (read-only, installed by the package)."""
    from recorderd.config import PATH_SETTINGS, load

    assert main(["init", str(tmp_path / "box")]) == 0
    config = load(tmp_path / "box" / "recorderd.toml")
    outside = {f"{section}.{key}" for section, key in PATH_SETTINGS
               if not Path(config[section][key]).is_relative_to(tmp_path / "box")}
    assert outside == {"analysis.model_dir"}
