"""Issue 6, must show 1: export, then verify-bundle OK; bagit.py --validate OK on the unpacked bag;
the open-tool checks of docs/verify-bundle.md, run exactly as documented, succeed on the bundle
and fail on tampered ones."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from recorderd.appliance import Appliance
from recorderd.cli import main
from storage import bagtext
from storage.audit import entries
from storage.chainproof import AUDIT_FILE, PROOF_FILE
from tests.exports.bundles import members_of, rezip
from tests.exports.conftest import recording_ids

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "verify-bundle.md"
VENV_BIN = Path(sys.executable).parent
SETUP_MARK = "<!-- setup:"


@pytest.fixture(scope="module")
def exported(export_box: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of every recording tagged 'evidence', made with `recorderd export`."""
    out = tmp_path_factory.mktemp("roundtrip") / "bundle.zip"
    assert main(["--config", str(export_box), "export", "--query", "evidence", "--reason",
                 "FCA request 2026/17:\nall calls of the complaint", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def public_key(export_box: Path, exported: Path) -> Path:
    key = exported.parent / "recorderd-signing-key.pem"
    result = subprocess.run([str(VENV_BIN / "recorderd"), "--config", str(export_box), "keys", "public"],
                            capture_output=True, check=True)
    key.write_bytes(result.stdout)
    return key


def verify_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["verify-bundle", *argv])
    return code, capsys.readouterr().out


def test_export_then_verify_bundle_is_ok(exported: Path, public_key: Path, appliance: Appliance,
                                         capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out = verify_cli(capsys, str(exported), "--pubkey", str(public_key))
    assert code == 0 and out.startswith("OK "), out
    assert "3 recording(s)" in out and "--pubkey" in out
    code, out = verify_cli(capsys, str(exported), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["problems"] == [] and report["recordings"] == 3
    with zipfile.ZipFile(exported) as archive:
        archive.extractall(tmp_path / "bag")
        names = archive.namelist()
    assert main(["verify-bundle", str(tmp_path / "bag"), "--pubkey", str(public_key)]) == 0
    ids = recording_ids(appliance)
    assert sorted(n for n in names if n.startswith("data/recordings/")) == sorted(
        f"data/recordings/{rid}.wav" for rid in ids)


def test_the_bundle_holds_the_decrypted_audio_and_the_metadata(exported: Path, export_box: Path,
                                                                 appliance: Appliance, tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with zipfile.ZipFile(exported) as archive:
        archive.extractall(bag)
    for rid in recording_ids(appliance):
        plain = tmp_path / f"{rid}.wav"
        assert main(["--config", str(export_box), "export-audio", rid, "--out", str(plain)]) == 0
        assert (bag / "data" / "recordings" / f"{rid}.wav").read_bytes() == plain.read_bytes()
        meta = json.loads((bag / "data" / "metadata" / f"{rid}.json").read_text())
        assert meta["recording_id"] == rid and meta["tags"] == ["evidence"]
        assert meta["caller"].startswith("+4930555") and "completeness" in meta and "consent" in meta
        assert meta["catalog"]["state"] == "complete" and meta["qa_scores"] == []
    info, problems = bagtext.parse_bag_info((bag / "bag-info.txt").read_bytes())
    assert problems == []
    assert info["Export-Reason"] == "FCA request 2026/17: all calls of the complaint"
    assert info["Recording-Count"] == "3" and info["Export-Query"] == "evidence"
    assert info["Export-Requester"].endswith("@cli (admin)") and info["Export-Approver"].startswith("none")
    assert info["Appliance-Id"] and info["Export-Created"].endswith("Z")


def test_the_export_is_audited_and_its_audit_trail_is_in_the_bundle(exported: Path, appliance: Appliance) -> None:
    with zipfile.ZipFile(exported) as archive:
        lines = [json.loads(line) for line in archive.read(AUDIT_FILE).splitlines()]
        proof = json.loads(archive.read(PROOF_FILE))
        bundle_id = bagtext.parse_bag_info(archive.read("bag-info.txt"))[0]["External-Identifier"]
    ids = set(recording_ids(appliance))
    reads = [e for e in lines if e["action"] == "export.read"
             and json.loads(e["detail"])["export"] == f"export:{bundle_id}"]
    assert sorted(e["object"] for e in reads) == sorted(ids)   # each recording read once, for this export
    started = [e for e in lines if e["object"] == f"export:{bundle_id}"]
    assert [e["outcome"] for e in started] == ["started"]
    assert {e["object"] for e in lines if e["action"] == "record"} == ids   # the recordings' own history
    assert proof["checkpoints"] and max(c["seq"] for c in proof["checkpoints"]) >= max(e["seq"] for e in lines)
    done = entries(appliance.catalog, object=f"export:{bundle_id}")
    assert [e.outcome for e in done] == ["started", "ok"]
    assert json.loads(done[-1].detail)["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()


def test_export_refuses_without_a_reason_or_matches(export_box: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "x.zip")
    assert main(["--config", str(export_box), "export", "--query", "evidence", "--reason", " ", "--out", out]) == 2
    assert main(["--config", str(export_box), "export", "--query", "no-such-call-anywhere", "--reason", "r",
                 "--out", out]) == 1
    assert "no recordings match" in capsys.readouterr().err
    assert main(["--config", str(export_box), "export", "--id", "19990101T000000Z-000000000000", "--reason", "r",
                 "--out", out]) == 1
    assert "not in the catalog" in capsys.readouterr().err
    assert not Path(out).exists() and not list(tmp_path.glob(".*.part"))


# ---------------------------------------------------------------------------------------------
# the documented open-tool path, run exactly as written


def documented_steps() -> list[str]:
    """Every ```sh block of docs/verify-bundle.md except the setup block (marked)."""
    text = DOC.read_text()
    steps = []
    for match in re.finditer(r"```sh\n(.*?)```", text, re.S):
        before = text[:match.start()].rstrip().splitlines()[-1]
        if not before.startswith(SETUP_MARK):
            steps.append(match.group(1))
    return steps


def run_steps(workdir: Path) -> list[tuple[str, int, str]]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    results = []
    for step in documented_steps():
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", step], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=60)
        results.append((step, done.returncode, done.stdout + done.stderr))
    return results


def test_the_documented_steps_cover_bagit_and_openssl() -> None:
    steps = documented_steps()
    assert any(s.startswith("bagit.py --validate bundle") for s in steps)
    assert any("openssl pkeyutl -verify -pubin -inkey recorderd-signing-key.pem -rawin" in s for s in steps)
    assert any(s.startswith("rm -rf bundle") and "unzip" in s for s in steps)


def _workdir(tmp_path: Path, name: str, bundle: bytes, public_key: Path) -> Path:
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "bundle.zip").write_bytes(bundle)
    (workdir / "recorderd-signing-key.pem").write_bytes(public_key.read_bytes())
    return workdir


def test_the_documented_steps_succeed_on_the_bundle(exported: Path, public_key: Path, tmp_path: Path) -> None:
    results = run_steps(_workdir(tmp_path, "good", exported.read_bytes(), public_key))
    failed = [(step, output) for step, code, output in results if code != 0]
    assert not failed, failed
    outputs = "\n".join(output for _, _, output in results)
    assert "bundle is valid" in outputs and "Signature Verified Successfully" in outputs
    fingerprint = next(o for s, _, o in results if s.startswith("grep '^Signing-Key-SHA256:'"))
    recorded = re.search(r"Signing-Key-SHA256: ([0-9a-f]{64})", fingerprint)
    assert recorded is not None and fingerprint.count(recorded[1]) == 2   # the two lines agree
    assert any(o.startswith("OK bundle.zip") for s, _, o in results if s.startswith("recorderd verify-bundle"))


def _reseal(contents: dict[str, bytes], sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """Re-zip after recomputing both manifests (what a forger can do without the key); with
    ``sign`` (the appliance's own signing function) also re-sign the tag manifest."""
    sha = {n: hashlib.sha512(d).hexdigest() for n, d in contents.items()}
    contents = dict(contents)
    contents[bagtext.MANIFEST] = bagtext.manifest_text({n: h for n, h in sha.items() if n.startswith("data/")})
    tags = (bagtext.BAGIT, bagtext.BAG_INFO, bagtext.MANIFEST, bagtext.PUBLIC_KEY)
    contents[bagtext.TAGMANIFEST] = bagtext.manifest_text(
        {n: hashlib.sha512(contents[n]).hexdigest() for n in tags})
    if sign is not None:
        contents[bagtext.SIGNATURE] = sign(contents[bagtext.TAGMANIFEST])
    return rezip(contents)


def _failing(results: list[tuple[str, int, str]]) -> list[str]:
    return [step.split()[0] for step, code, _ in results if code != 0]


def test_the_documented_steps_fail_on_tampered_bundles(exported: Path, public_key: Path, tmp_path: Path,
                                                        appliance: Appliance) -> None:
    original = members_of(exported.read_bytes())
    wav = next(n for n in original if n.startswith("data/recordings/"))
    flipped = bytearray(original[wav])
    flipped[len(flipped) // 2] ^= 0x01
    # 1. one audio byte changed: bagit.py (and recorderd) fail
    results = run_steps(_workdir(tmp_path, "audio", rezip({**original, wav: bytes(flipped)}), public_key))
    assert "bagit.py" in _failing(results) and "recorderd" in _failing(results)
    # 2. the reason rewritten and every checksum recomputed: bagit.py passes, the signature does not
    info = original[bagtext.BAG_INFO].replace(b"Export-Reason: FCA", b"Export-Reason: XXX")
    results = run_steps(_workdir(tmp_path, "info", _reseal({**original, bagtext.BAG_INFO: info}), public_key))
    assert "bagit.py" not in _failing(results)
    assert "openssl" in _failing(results) and "recorderd" in _failing(results)
    # 3. a forged audit checkpoint inside a bag re-signed with the appliance's own key: only the
    #    checkpoint step (and recorderd) can tell
    proof = json.loads(original[PROOF_FILE])
    proof["checkpoints"][0]["signature"] = proof["checkpoints"][0]["signature"][::-1]
    forged = {**original, PROOF_FILE: (json.dumps(proof, indent=1, ensure_ascii=False) + "\n").encode()}
    assert len(forged[PROOF_FILE]) == len(original[PROOF_FILE])   # Payload-Oxum still holds
    results = run_steps(_workdir(tmp_path, "checkpoint", _reseal(forged, appliance.keys.sign), public_key))
    assert _failing(results) == ["jq", "recorderd"], _failing(results)

