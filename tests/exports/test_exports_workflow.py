"""Issue 6, must show 3 (four eyes): a requester cannot approve their own export, an unapproved
bundle cannot be downloaded, and every step is in the audit log. Also: background builds with
progress, expiry deletes bundles, failures are named, a stopped build is failed at start."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from recorderd.appliance import Appliance, open_appliance
from recorderd.cli import main
from recorderd.config import load
from storage.audit import HASHED_FIELDS, entries, entry_hash
from storage.bundle_verify import verify_bundle
from storage.export_policy import ExportRefused, ExportState
from storage.exports import SYSTEM, Actor, ExportService, ExportSettings
from tests.exports.conftest import recording_ids

ALICE = Actor("alice", "auditor")
BOB = Actor("bob", "admin")
CAROL = Actor("carol", "admin")
QUINN = Actor("quinn", "qa")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def service_for(app: Appliance, bundle_dir: Path, clock: Clock | None = None, *, background: bool = False,
                max_recordings: int = 100) -> ExportService:
    settings = ExportSettings(bundle_dir, expire_hours=24.0, request_expire_hours=48.0,
                              max_recordings=max_recordings, appliance_id="test-box")
    return ExportService(app.catalog, app.audit, app.keys, app.vault_dir, settings,
                         clock=clock or Clock(), background=background)


@pytest.fixture
def service(appliance: Appliance, tmp_path: Path) -> Iterator[ExportService]:
    svc = service_for(appliance, tmp_path / "exports")
    yield svc
    svc.close()


def trail(app: Appliance, export_id: int) -> list[tuple[str, str, str]]:
    """(actor, action, outcome) of the export's audit entries, in order."""
    return [(e.actor, e.action, e.outcome) for e in entries(app.catalog, object=f"export:{export_id}")]


def test_a_requester_cannot_approve_their_own_export(service: ExportService, appliance: Appliance) -> None:
    ids = recording_ids(appliance)
    mine = service.request(CAROL, "internal review", recording_ids=ids[:1])
    with pytest.raises(ExportRefused, match="cannot approve or reject their own export"):
        service.approve(mine.id, CAROL)
    with pytest.raises(ExportRefused, match="cannot approve or reject their own export"):
        service.reject(mine.id, CAROL)
    theirs = service.request(ALICE, "complaint 17", recording_ids=ids[:1])
    with pytest.raises(ExportRefused, match="role auditor may not approve"):
        service.approve(theirs.id, ALICE)
    assert service.store.get(mine.id).state == ExportState.REQUESTED       # type: ignore[union-attr]
    assert trail(appliance, mine.id) == [("carol", "export.request", "ok"), ("carol", "export.approve", "denied"),
                                         ("carol", "export.reject", "denied")]
    assert trail(appliance, theirs.id)[-1] == ("alice", "export.approve", "denied")
    # the database refuses it too, whatever the code above does
    with pytest.raises(apsw.ConstraintError):
        appliance.catalog.writer.call(lambda conn: conn.execute(
            "UPDATE exports SET approver = requester WHERE id = ?", (mine.id,)))


def test_an_unapproved_bundle_cannot_be_downloaded(service: ExportService, appliance: Appliance) -> None:
    record = service.request(ALICE, "complaint 18", recording_ids=recording_ids(appliance)[:2])
    with pytest.raises(ExportRefused, match="not approved and built yet"):
        service.download(record.id, ALICE)
    service.reject(record.id, BOB, "no case number given")
    with pytest.raises(ExportRefused, match="rejected: there is no bundle"):
        service.download(record.id, ALICE)
    with pytest.raises(ExportRefused, match="not awaiting a decision"):
        service.approve(record.id, CAROL)
    assert trail(appliance, record.id) == [
        ("alice", "export.request", "ok"), ("alice", "export.download", "refused"), ("bob", "export.reject", "ok"),
        ("alice", "export.download", "refused"), ("carol", "export.approve", "refused")]
    assert not list(service.settings.bundle_dir.iterdir())


def test_the_whole_flow_is_audited_and_the_bundle_verifies(service: ExportService, appliance: Appliance) -> None:
    ids = recording_ids(appliance)
    record = service.request(ALICE, "FCA request 2026/18", query="evidence")
    assert record.recording_ids == tuple(ids) and record.query == "evidence"
    service.approve(record.id, BOB, "case 2026/18 confirmed")   # builds at once (no background thread)
    ready = service.store.get(record.id)
    assert ready is not None and ready.state == ExportState.READY and ready.percent == 100
    with pytest.raises(ExportRefused, match="only the requester"):
        service.download(record.id, BOB)
    downloaded, path = service.download(record.id, ALICE)
    assert downloaded.state == ExportState.DOWNLOADED and downloaded.downloads == 1
    report = verify_bundle(path, appliance.keys.public_key_pem().encode())
    assert report.ok, report.problems
    assert report.info["Export-Requester"] == "alice (auditor)" and report.info["Export-Approver"] == "bob (admin)"
    assert report.info["Export-Reason"] == "FCA request 2026/18" and report.info["Appliance-Id"] == "test-box"
    steps = trail(appliance, record.id)
    assert steps[:4] == [("alice", "export.request", "ok"), ("bob", "export.approve", "ok"),
                         ("recorderd", "export.build", "started"), ("recorderd", "export.build", "ok")]
    assert steps[4:] == [("bob", "export.download", "denied"), ("alice", "export.download", "ok")]
    reads = [e for e in entries(appliance.catalog, action="export.read")
             if json.loads(e.detail)["export"] == record.object]
    assert sorted(e.object for e in reads) == sorted(ids) and {e.actor for e in reads} == {SYSTEM.username}
    # the bundle carries the request, the approval and the start of its own build
    with zipfile.ZipFile(path) as archive:
        inside = [json.loads(line) for line in archive.read("data/audit.jsonl").splitlines()]
    assert [(e["actor"], e["action"]) for e in inside if e["object"] == record.object] == [
        ("alice", "export.request"), ("bob", "export.approve"), ("recorderd", "export.build")]


def test_bundles_and_requests_expire(appliance: Appliance, tmp_path: Path) -> None:
    clock = Clock()
    service = service_for(appliance, tmp_path / "exports", clock)
    ids = recording_ids(appliance)
    built = service.request(ALICE, "complaint 19", recording_ids=ids[:1])
    service.approve(built.id, BOB)
    pending = service.request(ALICE, "complaint 20", recording_ids=ids[:1])
    bundle = service.bundle_path(built)
    assert bundle.is_file()
    mine = {built.id, pending.id}   # the catalog is shared with other tests: look at ours only
    clock.now += 23 * 3600
    assert not mine & {r.id for r in service.expire_due()} and bundle.is_file()
    clock.now += 3600
    assert mine & {r.id for r in service.expire_due()} == {built.id} and not bundle.exists()
    with pytest.raises(ExportRefused, match="expired: there is no bundle"):
        service.download(built.id, ALICE)
    clock.now += 24 * 3600
    assert mine & {r.id for r in service.expire_due()} == {pending.id}
    assert trail(appliance, built.id)[-2:] == [("recorderd", "export.expire", "ok"),
                                              ("alice", "export.download", "refused")]
    assert trail(appliance, pending.id)[-1] == ("recorderd", "export.expire", "ok")
    assert list(service.settings.bundle_dir.iterdir()) == []
    assert service.store.get(built.id).deleted_at == clock.now - 24 * 3600   # type: ignore[union-attr]


def test_requests_are_refused_with_the_reason(appliance: Appliance, tmp_path: Path) -> None:
    service = service_for(appliance, tmp_path / "exports", max_recordings=2)
    ids = recording_ids(appliance)
    for actor, kwargs, message in [
        (ALICE, {"recording_ids": ids[:1], "reason": "  "}, "a reason is required"),
        (QUINN, {"recording_ids": ids[:1], "reason": "curious"}, "role qa may not request"),
        (ALICE, {"query": "evidence", "reason": "all"}, "3 recordings, more than the 2"),
        (ALICE, {"recording_ids": ["20200101T000000Z-000000000000"], "reason": "x"}, "no such recording"),
        (ALICE, {"query": "nothing-matches-this", "reason": "x"}, "no recordings to export"),
    ]:
        reason = kwargs.pop("reason")
        with pytest.raises(ExportRefused, match=message):
            service.request(actor, reason, **kwargs)   # type: ignore[arg-type]
    refusals = {(e.actor, e.outcome, e.reason.split(":")[0]) for e in entries(
        appliance.catalog, object="export", action="export.request")}
    assert ("quinn", "denied", "role qa may not request exports (only admin, auditor)") in refusals   # a rule of who
    assert ("alice", "refused", "a reason is required") in refusals                                 # the input
    assert ("alice", "refused", "cannot export") in refusals


def test_background_build_reports_progress(appliance: Appliance, tmp_path: Path) -> None:
    service = service_for(appliance, tmp_path / "exports", background=True)
    try:
        record = service.request(ALICE, "complaint 21", recording_ids=recording_ids(appliance))
        service.approve(record.id, BOB)
        service.wait(timeout=30)
        done = service.store.get(record.id)
        assert done is not None and done.state == ExportState.READY
        assert done.progress_total > 0 and done.progress_done == done.progress_total and done.recordings_done == 3
        assert done.size == service.bundle_path(done).stat().st_size
    finally:
        service.close()


@pytest.fixture
def private_box(export_box: Path, tmp_path: Path) -> Iterator[Appliance]:
    """A copy of the appliance this test may damage."""
    box = tmp_path / "box"
    shutil.copytree(export_box.parent, box)
    app = open_appliance(load(box / "recorderd.toml"), recover=False, warnings=None)
    try:
        yield app
    finally:
        app.close()


def test_a_failed_build_names_the_recording(private_box: Appliance, tmp_path: Path) -> None:
    service = service_for(private_box, tmp_path / "exports")
    ids = recording_ids(private_box)
    record = service.request(ALICE, "complaint 22", recording_ids=ids)
    victim = private_box.catalog.get(ids[1])
    assert victim is not None and victim.recording.vault_path
    (private_box.vault_dir / victim.recording.vault_path).write_bytes(b"not a vault file")
    service.approve(record.id, BOB)
    failed = service.store.get(record.id)
    assert failed is not None and failed.state == ExportState.FAILED and ids[1] in (failed.error or "")
    assert trail(private_box, record.id)[-1] == ("recorderd", "export.build", "failed")
    assert list(service.settings.bundle_dir.iterdir()) == []


def test_a_rewritten_audit_log_stops_the_export(private_box: Appliance, tmp_path: Path) -> None:
    """The bundle certifies the audit trail: a chain that no longer matches its signed
    checkpoints is refused rather than exported."""
    service = service_for(private_box, tmp_path / "exports")
    ids = recording_ids(private_box)
    first = entries(private_box.catalog, object=ids[0])[0]
    conn = apsw.Connection(private_box.catalog.path)
    conn.execute("DROP TRIGGER audit_no_update")
    fields = {name: getattr(first, name) for name in HASHED_FIELDS} | {"outcome": "forged"}
    conn.execute("UPDATE audit SET outcome = ?, hash = ? WHERE seq = ?", ("forged", entry_hash(fields), first.seq))
    conn.close()
    record = service.request(ALICE, "complaint 23", recording_ids=ids[:1])
    service.approve(record.id, BOB)
    failed = service.store.get(record.id)
    assert failed is not None and failed.state == ExportState.FAILED
    assert "audit log does not verify" in (failed.error or "")


def test_a_build_interrupted_by_a_stop_fails_at_start(appliance: Appliance, tmp_path: Path) -> None:
    service = service_for(appliance, tmp_path / "exports")
    record = service.request(ALICE, "complaint 24", recording_ids=recording_ids(appliance)[:1])
    service.store.decide(record.id, BOB, True)
    service.store.start_build(record.id)
    part = service.settings.bundle_dir / f".{record.bundle_id}.zip.part"
    part.write_bytes(b"half a bundle")
    service.start()
    after = service.store.get(record.id)
    assert after is not None and after.state == ExportState.FAILED and "interrupted" in (after.error or "")
    assert not part.exists()


def test_the_command_line_lists_and_expires(export_box: Path, appliance: Appliance, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    service = service_for(appliance, tmp_path / "unused")
    record = service.request(ALICE, "complaint 25", recording_ids=recording_ids(appliance)[:1])
    capsys.readouterr()
    assert main(["--config", str(export_box), "exports", "list", "--json"]) == 0
    listed = {item["id"]: item for item in json.loads(capsys.readouterr().out)}
    assert listed[record.id]["state"] == "requested" and listed[record.id]["requester"] == "alice"
    assert "path" not in listed[record.id]
    assert main(["--config", str(export_box), "exports", "expire"]) == 0   # nothing of ours is due yet
    assert service.store.get(record.id).state == ExportState.REQUESTED   # type: ignore[union-attr]
    assert entries(appliance.catalog, action="export.list")[-1].outcome == "ok"
