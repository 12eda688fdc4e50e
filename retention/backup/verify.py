"""Check a target's newest complete run: the snapshot, every object's presence, a sample's hashes.

1. The manifest's snapshot is downloaded and must have the manifest's SHA-256 and pass
   SQLite's quick_check.
2. Every vault file the snapshot refers to must be listed on the target with its size (a
   listing, no download).
3. ``sample`` of them (all with 0), drawn at random, are downloaded and authenticated with
   the appliance's keys against the snapshot (integrity.py: every segment's GCM tag, the
   size and the catalogued digest of header and tags). A damaged object is named with what
   differs.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from retention.backup.integrity import VaultChecker
from retention.backup.plan import CHANGED, UPLOAD, VAULT_DIR, LocalFile, Throttle, choose_sample, diff_sorted
from retention.backup.remote import IntegrityError, ObjectMissing, Remote, RemoteError
from retention.backup.restore import RestoreError, download_checked, read_manifest
from retention.backup.snapshot import SnapshotError, inventory, quick_check
from storage.catalog import WrappedKey
from storage.keys import KeyStore


@dataclass(slots=True)
class VerifyReport:
    manifest_key: str | None = None
    listed: int = 0
    downloaded: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)   # (object, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_target(remote: Remote, staging: Path, sample: int, rng: random.Random, throttle: Throttle,
                  keys: KeyStore, fallback: Callable[[str], WrappedKey | None] | None = None) -> VerifyReport:
    report = VerifyReport()
    try:
        key, manifest = read_manifest(remote)
    except (RestoreError, RemoteError) as err:
        report.problems.append(("manifests/", str(err)))
        return report
    report.manifest_key = key
    snapshot = staging / f"verify-{manifest.run_id}.db"
    try:
        try:
            download_checked(remote, manifest.snapshot, snapshot, manifest.snapshot_size,
                             manifest.snapshot_sha256, throttle)
            check = quick_check(snapshot)
        except (IntegrityError, ObjectMissing, SnapshotError) as err:
            report.problems.append((manifest.snapshot, str(err)))
            return report
        if check != "ok":
            report.problems.append((manifest.snapshot, f"quick_check: {check}"))
            return report
        problems: list[str] = []
        chosen = choose_sample(_present(remote, snapshot, problems, report), sample, rng)
        report.problems.extend(("catalog", p) for p in problems)
        with VaultChecker(keys, snapshot, fallback) as checker:
            for item in chosen:
                _check_sample(remote, staging, item, checker, throttle, report)
    finally:
        with contextlib.suppress(FileNotFoundError):
            snapshot.unlink()
    return report


def _check_sample(remote: Remote, staging: Path, item: LocalFile, checker: VaultChecker, throttle: Throttle,
                  report: VerifyReport) -> None:
    copy = staging / f"verify-{item.recording_id}.rdv"
    try:
        download_checked(remote, item.key, copy, item.size, None, throttle, check=functools.partial(checker.check, item))
    except (IntegrityError, ObjectMissing) as err:
        report.problems.append((item.key, str(err)))
        return
    finally:
        with contextlib.suppress(FileNotFoundError):
            copy.unlink()
    report.downloaded += 1
    report.bytes += item.size


def _present(remote: Remote, snapshot: Path, problems: list[str], report: VerifyReport) -> Iterator[LocalFile]:
    """Checks every referenced file is listed with its size; yields those that are (to sample from)."""
    for item, decision in diff_sorted(inventory(snapshot, problems), remote.list(VAULT_DIR)):
        report.listed += 1
        if decision == UPLOAD:
            report.problems.append((item.key, "missing on the target"))
        elif decision == CHANGED:
            report.problems.append((item.key, "on the target with another size than the catalog's"))
        else:
            yield item
