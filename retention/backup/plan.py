"""Pure planning for backups: the remote layout, what to copy, the manifest, pacing, samples.

Nothing here touches a file, a socket or the clock by itself: the inventory, the remote listing,
``now`` and the clock/sleep of the throttle come in as arguments.

Remote layout (under the target's prefix / directory)::

    vault/<YYYY>/<MM>/<DD>/<recording-id>.rdv   the encrypted vault files, byte for byte
    catalog/<stamp>.db                          a consistent catalog snapshot per run
    manifests/<stamp>.json                      written last: names the snapshot and its SHA-256

A run is complete once its manifest exists; restore and verify start from the newest manifest.
The snapshot is the manifest of the vault files: each recording row holds its file's path, size
and SHA-256, so no separate per-file list has to be kept (or kept consistent) on the target.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")

VAULT_DIR = "vault"
CATALOG_DIR = "catalog"
MANIFEST_DIR = "manifests"
MANIFEST_FORMAT = "recorderd-backup"
MANIFEST_VERSION = 1
# the vault's own layout: <YYYY>/<MM>/<DD>/<name>.rdv, or undated/<name>.rdv for a recording id
# that does not start with a date (storage/recordingsink.py: vault_path)
_VAULT_PATH = re.compile(r"^(?:[0-9]{4}/[0-9]{2}/[0-9]{2}|undated)/[A-Za-z0-9][A-Za-z0-9._-]*\.rdv$")
_STAMP = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9]{6,}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class PlanError(ValueError):
    """Input the plan cannot accept (a path that would leave the vault, a bad manifest)."""


def check_vault_path(path: str) -> str:
    """A vault-relative path as the vault writes it; anything else (``..``, absolute paths,
    other shapes) is refused, so a tampered snapshot cannot make restore write outside DIR."""
    if not _VAULT_PATH.fullmatch(path) or ".." in path:
        raise PlanError(f"{path!r} is not a vault path (<YYYY>/<MM>/<DD>/<name>.rdv or undated/<name>.rdv)")
    return path


def vault_key(path: str) -> str:
    """The remote key (relative to the prefix) of a vault-relative path."""
    return f"{VAULT_DIR}/{check_vault_path(path)}"


def vault_path_of(key: str) -> str | None:
    """The vault-relative path of a remote key, or None when the key is not a vault file."""
    head, _, rest = key.partition("/")
    if head != VAULT_DIR:
        return None
    try:
        return check_vault_path(rest)
    except PlanError:
        return None


def run_stamp(started_at: float, run_id: int) -> str:
    """``20261126T133020Z-000012``: sorts by time (then run id), never contains a path character."""
    when = datetime.fromtimestamp(started_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{when}-{run_id:06d}"


def snapshot_key(stamp: str) -> str:
    return f"{CATALOG_DIR}/{stamp}.db"


def manifest_key(stamp: str) -> str:
    return f"{MANIFEST_DIR}/{stamp}.json"


def stamp_of_manifest(key: str) -> str | None:
    head, _, name = key.partition("/")
    if head != MANIFEST_DIR or not name.endswith(".json"):
        return None
    stamp = name[:-len(".json")]
    return stamp if _STAMP.fullmatch(stamp) else None


def newest_manifest(keys: Iterable[str]) -> str | None:
    """The key of the newest complete run's manifest among a listing of ``manifests/``."""
    stamps = sorted(s for s in (stamp_of_manifest(k) for k in keys) if s)
    return manifest_key(stamps[-1]) if stamps else None


# -- what to copy ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A vault file the catalog snapshot refers to (``sha256`` None when the catalog has none)."""

    recording_id: str
    path: str
    size: int
    sha256: str | None

    @property
    def key(self) -> str:
        return vault_key(self.path)


UPLOAD, CHANGED, PRESENT = "upload", "changed", "present"


@dataclass(slots=True)
class PlanTotals:
    """What a diff decided, counted: ``upload`` includes ``changed``."""

    files: int = 0
    bytes: int = 0
    present: int = 0
    present_bytes: int = 0
    changed: int = 0

    def add(self, item: LocalFile, decision: str) -> None:
        if decision == PRESENT:
            self.present += 1
            self.present_bytes += item.size
            return
        self.files += 1
        self.bytes += item.size
        if decision == CHANGED:
            self.changed += 1


def _ascending(items: Iterable[T], key: Callable[[T], str], what: str) -> Iterator[T]:
    previous: str | None = None
    for item in items:
        current = key(item)
        if previous is not None and current <= previous:
            raise PlanError(f"{what} is not in ascending key order ({current!r} after {previous!r})")
        previous = current
        yield item


def diff_sorted(local: Iterable[LocalFile], remote: Iterable[tuple[str, int]],
                force: Iterable[str] = ()) -> Iterator[tuple[LocalFile, str]]:
    """The incremental diff, as a merge of two listings sorted by key (byte order: SQLite's
    BINARY collation, S3's listing order), so memory stays flat whatever the vault's size.

    Each local file gets a decision: ``upload`` (not on the target), ``changed`` (on the
    target with another size, or in ``force``: objects a verify found bad) or ``present``
    (same key and size: skipped). Uploads are atomic on every target kind (an object appears
    whole or not at all), so presence with the right size means a complete copy, also after
    a killed run. Vault files never change once finished (a wideband re-encryption writes a
    new generation file under a new name), so a size difference means a damaged object.
    Remote objects without a local file (older recordings since purged) are left alone."""
    forced = set(force)
    theirs = iter(_ascending(remote, lambda r: r[0], "the target's listing"))
    current = next(theirs, None)
    for item in _ascending(local, lambda f: f.key, "the local inventory"):
        key = item.key
        while current is not None and current[0] < key:
            current = next(theirs, None)
        if current is None or current[0] != key:
            yield item, UPLOAD
        elif current[1] != item.size or key in forced:
            yield item, CHANGED
        else:
            yield item, PRESENT
    for _ in theirs:   # the rest is read too: a listing out of order is refused, never half-trusted
        pass


def plan_prune(manifest_keys: Iterable[str], keep: int) -> list[tuple[str, str]]:
    """(manifest key, snapshot key) of the runs older than the newest ``keep`` (0 keeps all).
    Vault files are never pruned here: older snapshots are what may still refer to them."""
    if keep <= 0:
        return []
    stamps = sorted(s for s in (stamp_of_manifest(k) for k in manifest_keys) if s)
    return [(manifest_key(s), snapshot_key(s)) for s in stamps[:-keep]]


def choose_sample(items: Iterable[T], n: int, rng: random.Random) -> list[T]:
    """``n`` items drawn uniformly without replacement from a stream of unknown length
    (reservoir sampling, Vitter's algorithm R); every item when ``n`` is 0."""
    if n <= 0:
        return list(items)
    reservoir: list[T] = []
    for seen, item in enumerate(items):
        if seen < n:
            reservoir.append(item)
        else:
            slot = rng.randrange(seen + 1)
            if slot < n:
                reservoir[slot] = item
    return reservoir


# -- the manifest ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one complete run left on the target."""

    run_id: int
    created_at: str
    host: str
    snapshot: str
    snapshot_size: int
    snapshot_sha256: str
    schema_version: int
    vault_files: int
    vault_bytes: int
    kek_ids: list[str]
    missing: list[str]

    def to_json(self) -> bytes:
        body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "run": self.run_id,
                "created_at": self.created_at, "host": self.host,
                "catalog": {"object": self.snapshot, "size": self.snapshot_size,
                            "sha256": self.snapshot_sha256, "schema_version": self.schema_version},
                "vault": {"files": self.vault_files, "bytes": self.vault_bytes, "missing": self.missing},
                "kek_ids": self.kek_ids}
        return json.dumps(body, indent=1).encode() + b"\n"


def _field(data: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PlanError(f"{where}: {name} is missing or not a {kind.__name__}")
    return value


def parse_manifest(blob: bytes, where: str) -> Manifest:
    """A manifest read back from a target; PlanError naming what is wrong with it."""
    try:
        data = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise PlanError(f"{where}: not JSON") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise PlanError(f"{where}: not a recorderd backup manifest")
    if data.get("version") != MANIFEST_VERSION:
        raise PlanError(f"{where}: unsupported manifest version {data.get('version')!r}")
    catalog = _field(data, "catalog", dict, where)
    vault = _field(data, "vault", dict, where)
    snapshot = _field(catalog, "object", str, where)
    sha256 = _field(catalog, "sha256", str, where)
    if not _SHA256_HEX.fullmatch(sha256):
        raise PlanError(f"{where}: catalog sha256 is not a SHA-256")
    stamp = snapshot.removeprefix(f"{CATALOG_DIR}/").removesuffix(".db")
    if snapshot != snapshot_key(stamp) or not _STAMP.fullmatch(stamp):
        raise PlanError(f"{where}: catalog object {snapshot!r} is not a snapshot name")
    kek_ids = _field(data, "kek_ids", list, where)
    missing = _field(vault, "missing", list, where)
    return Manifest(run_id=_field(data, "run", int, where), created_at=_field(data, "created_at", str, where),
                    host=_field(data, "host", str, where), snapshot=snapshot,
                    snapshot_size=_field(catalog, "size", int, where), snapshot_sha256=sha256,
                    schema_version=_field(catalog, "schema_version", int, where),
                    vault_files=_field(vault, "files", int, where), vault_bytes=_field(vault, "bytes", int, where),
                    kek_ids=[str(k) for k in kek_ids], missing=[str(m) for m in missing])


# -- pacing ---------------------------------------------------------------------------------------


class Throttle:
    """Keeps a transfer at or under ``rate`` bytes per second on average since it started
    (0 = unlimited): after each chunk it sleeps until the bytes so far are due. Callers
    report chunks of at most a few hundred KiB, so the pace is smooth at the link too."""

    def __init__(self, rate: int, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        if rate < 0:
            raise ValueError("throttle rate must be 0 (unlimited) or positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self.total = 0

    def consume(self, n: int) -> float:
        """Account ``n`` bytes just transferred; returns the seconds slept."""
        now = self._clock()
        if self._start is None:
            self._start = now
        self.total += n
        if not self.rate:
            return 0.0
        wait = self._start + self.total / self.rate - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0
