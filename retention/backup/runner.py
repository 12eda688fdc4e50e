"""One backup run to one target: snapshot, diff, copy, manifest (the I/O around plan.py).

1. Take the target's run lock (one run per target at a time); runs still marked ``running``
   are dead ones and become ``interrupted``.
2. Snapshot the catalog (snapshot.py) into the staging directory beside the catalog (it holds
   metadata in the clear, so it stays on the catalog's encrypted volume).
3. Diff the snapshot's inventory against the target's listing (plan.diff_sorted), once to
   count (progress has a total), once to copy. Only what is missing or damaged is sent, so a
   killed run's successor continues where it stopped: every object finished before the kill
   is skipped, the one in flight (never visible under its real key) is sent again.
4. Copy each file as it is (encrypted vault bytes), throttled. With the appliance's keys, each
   file is first authenticated end to end against the snapshot (integrity.py): a damaged local
   file is reported, never copied over a good offsite one. A file that fails is recorded and
   the run goes on.
5. Upload the snapshot, then the manifest (last: it makes the run visible to restore and
   verify), then prune runs beyond ``keep_snapshots``.

Progress goes to the catalog's ``backup_runs`` row (at most once per ``progress_interval_s``)
and to an optional callback (the command line's terminal display).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from retention.backup import records
from retention.backup.integrity import VaultChecker
from retention.backup.plan import (
    MANIFEST_DIR,
    PRESENT,
    VAULT_DIR,
    LocalFile,
    Manifest,
    PlanError,
    PlanTotals,
    Throttle,
    diff_sorted,
    manifest_key,
    plan_prune,
    run_stamp,
    snapshot_key,
)
from retention.backup.remote import IntegrityError, ObjectMissing, Remote, RemoteError
from retention.backup.snapshot import SnapshotError, SnapshotInfo, inventory, snapshot_catalog
from retention.backup.targets import Target
from storage.catalog import Catalog, UnknownRecording, WrappedKey
from storage.keys import KeyStore
from storage.recordingsink import resolve_path

# this many object failures in a row that are not about the local file: the target is gone
MAX_CONSECUTIVE_REMOTE_ERRORS = 3
MAX_FAILURES_LISTED = 1000


class RunBusy(Exception):
    """Another run for the same target holds its lock."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    throttle_bytes_per_s: int = 0
    keep_snapshots: int = 0
    progress_interval_s: float = 1.0
    repair: bool = False                 # copy again what the last verify run found damaged


@dataclass(slots=True)
class Progress:
    run_id: int
    stage: str
    files_planned: int = 0
    bytes_planned: int = 0
    files_done: int = 0
    bytes_done: int = 0
    files_present: int = 0
    files_failed: int = 0


@dataclass(slots=True)
class RunResult:
    run_id: int
    state: str
    progress: Progress
    failures: list[str] = field(default_factory=list)
    snapshot: str | None = None
    manifest: str | None = None
    error: str | None = None
    interrupted_before: list[int] = field(default_factory=list)
    pruned: int = 0


@dataclass
class Edges:
    """The run's clock, sleep, identity and progress display (tests inject their own)."""

    clock: Callable[[], float]
    sleep: Callable[[float], None]
    actor: str
    host: str
    pid: int = field(default_factory=os.getpid)
    report: Callable[[Progress], None] | None = None
    pace_clock: Callable[[], float] = time.monotonic   # the throttle's (wall-clock jumps must not pace)


def staging_dir(catalog_path: Path) -> Path:
    """Beside the catalog, on its (encrypted) volume: snapshots hold metadata in the clear."""
    path = Path(catalog_path).parent / ".backup-staging"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def run_lock(staging: Path, target: Target) -> Iterator[None]:
    fd = os.open(staging / f"target-{target.id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunBusy(f"target {target.name}: another run (pid {holder}) is in progress") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class BackupRun:
    """A run to ``target`` (reached through ``connect``) from the catalog at ``catalog_path``."""

    def __init__(self, catalog: Catalog, catalog_path: Path, vault_dir: Path, target: Target,
                 connect: Callable[[], Remote], options: RunOptions, edges: Edges, keys: KeyStore | None = None) -> None:
        self.catalog = catalog
        self.keys = keys
        self.catalog_path = Path(catalog_path)
        self.vault_dir = Path(vault_dir)
        self.target = target
        self.connect = connect
        self.remote: Remote | None = None
        self.options = options
        self.edges = edges
        self.throttle = Throttle(options.throttle_bytes_per_s, edges.pace_clock, edges.sleep)
        self._last_flush = 0.0

    def run(self) -> RunResult:
        staging = staging_dir(self.catalog_path)
        with run_lock(staging, self.target):
            now = self.edges.clock()
            dead = records.mark_interrupted(self.catalog, self.target, "backup", now)
            for run_id in dead:   # what a killed run left staged
                with contextlib.suppress(FileNotFoundError):
                    (staging / f"run-{run_id}.db").unlink()
            run_id = records.start_run(self.catalog, self.target, "backup", self.edges.actor, self.edges.host,
                                       self.edges.pid, now)
            result = RunResult(run_id, "running", Progress(run_id, "snapshot"), interrupted_before=dead)
            snapshot_file = staging / f"run-{run_id}.db"
            try:
                self.remote = self.connect()   # a target that cannot be reached is a failed run too
                try:
                    self._run(result, snapshot_file, now)
                finally:
                    self.remote.close()
            except BaseException as err:
                result.state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                result.error = _message(err)
                self._finish(result)
                if isinstance(err, RemoteError | SnapshotError | PlanError | OSError):
                    return result
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    snapshot_file.unlink()
            self._finish(result)
            return result

    def _run(self, result: RunResult, snapshot_file: Path, started_at: float) -> None:
        snapshot = snapshot_catalog(self.catalog_path, snapshot_file)
        force = records.bad_objects_of_last_verify(self.catalog, self.target) if self.options.repair else set()
        progress = result.progress
        progress.stage = "planning"
        self._report(progress, force_flush=True)
        totals = PlanTotals()
        for item, decision in self._diff(snapshot, force, []):
            totals.add(item, decision)
        progress.files_planned, progress.bytes_planned, progress.files_present = totals.files, totals.bytes, totals.present
        progress.stage = "copying"
        self._report(progress, force_flush=True)
        missing = self._copy(snapshot, force, result)
        progress.stage = "catalog"
        self._report(progress, force_flush=True)
        stamp = run_stamp(started_at, result.run_id)
        self._remote.put_file(snapshot_key(stamp), snapshot.path, snapshot.size, self.throttle)
        result.snapshot = snapshot_key(stamp)
        manifest = Manifest(run_id=result.run_id, created_at=_iso(self.edges.clock()), host=self.edges.host,
                            snapshot=snapshot_key(stamp), snapshot_size=snapshot.size,
                            snapshot_sha256=snapshot.sha256, schema_version=snapshot.schema_version,
                            vault_files=totals.files + totals.present - len(missing),
                            vault_bytes=totals.bytes + totals.present_bytes, kek_ids=snapshot.kek_ids, missing=missing)
        self._remote.put_bytes(manifest_key(stamp), manifest.to_json())
        result.manifest = manifest_key(stamp)
        result.pruned = self._prune()
        result.state = "failed" if result.failures else "ok"
        if result.failures:
            result.error = f"{len(result.failures)} file(s) not copied"

    @property
    def _remote(self) -> Remote:
        assert self.remote is not None, "connected in run()"
        return self.remote

    def _diff(self, snapshot: SnapshotInfo, force: set[str], problems: list[str]) -> Iterator[tuple[LocalFile, str]]:
        return diff_sorted(inventory(snapshot.path, problems), self._remote.list(VAULT_DIR), force)

    def _copy(self, snapshot: SnapshotInfo, force: set[str], result: RunResult) -> list[str]:
        checker = VaultChecker(self.keys, snapshot.path, live_key(self.catalog)) if self.keys else None
        try:
            return self._copy_checked(snapshot, force, result, checker)
        finally:
            if checker is not None:
                checker.close()

    def _copy_checked(self, snapshot: SnapshotInfo, force: set[str], result: RunResult,
                      checker: VaultChecker | None) -> list[str]:
        progress = result.progress
        problems: list[str] = []
        missing: list[str] = []
        consecutive = 0
        for item, decision in self._diff(snapshot, force, problems):
            if decision == PRESENT:
                continue
            path = resolve_path(self.vault_dir, item.path)
            try:
                if checker is not None:
                    checker.check(item, path)
                self._remote.put_file(item.key, path, item.size, self.throttle)
            except IntegrityError as err:     # about the local file: the target is fine
                consecutive = 0
                self._failed(result, item.key, str(err), missing)
                continue
            except RemoteError as err:
                consecutive += 1
                self._failed(result, item.key, str(err), missing)
                if consecutive >= MAX_CONSECUTIVE_REMOTE_ERRORS:
                    raise RemoteError(f"target {self.target.name}: {consecutive} uploads in a row failed, "
                                      f"giving up; last: {err}") from None
                continue
            consecutive = 0
            progress.files_done += 1
            progress.bytes_done += item.size
            self._report(progress)
        for problem in problems:
            self._failed(result, "catalog", problem, missing)
        return missing[:MAX_FAILURES_LISTED]

    def _failed(self, result: RunResult, obj: str, error: str, missing: list[str]) -> None:
        result.progress.files_failed += 1
        result.failures.append(f"{obj}: {error}")
        missing.append(obj)
        records.add_failure(self.catalog, result.run_id, obj, error, self.edges.clock())
        self._report(result.progress, force_flush=True)

    def _prune(self) -> int:
        """Delete runs (manifest first, then snapshot) beyond the newest ``keep_snapshots``;
        an object still under Object Lock retention refuses, and is tried again next time."""
        pruned = 0
        for manifest, snapshot in plan_prune((k for k, _ in self._remote.list(MANIFEST_DIR)),
                                             self.options.keep_snapshots):
            try:
                self._remote.delete(manifest)
                self._remote.delete(snapshot)
                pruned += 1
            except ObjectMissing:
                pruned += 1
            except RemoteError:
                continue
        return pruned

    def _report(self, progress: Progress, force_flush: bool = False) -> None:
        now = self.edges.clock()
        if force_flush or now - self._last_flush >= self.options.progress_interval_s:
            self._last_flush = now
            records.update_run(self.catalog, progress.run_id, now, files_planned=progress.files_planned,
                               bytes_planned=progress.bytes_planned, files_done=progress.files_done,
                               bytes_done=progress.bytes_done, files_present=progress.files_present,
                               files_failed=progress.files_failed)
        if self.edges.report is not None:
            self.edges.report(progress)

    def _finish(self, result: RunResult) -> None:
        p = result.progress
        records.finish_run(self.catalog, result.run_id, result.state, self.edges.clock(), result.error,
                           files_planned=p.files_planned, bytes_planned=p.bytes_planned, files_done=p.files_done,
                           bytes_done=p.bytes_done, files_present=p.files_present, files_failed=p.files_failed,
                           snapshot=result.snapshot, manifest=result.manifest)


def live_key(catalog: Catalog) -> Callable[[str], WrappedKey | None]:
    """The live catalog's wrapped key of a recording (None when unknown or purged)."""
    def lookup(recording_id: str) -> WrappedKey | None:
        try:
            return catalog.get_key(recording_id)
        except UnknownRecording:
            return None
    return lookup


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _message(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (SIGINT); the next run resumes"
    return str(err) or type(err).__name__
