"""The pure parts of backups: the incremental diff, pacing, sampling, names, manifests, targets."""

from __future__ import annotations

import random

import pytest

from retention.backup.plan import (
    CHANGED,
    PRESENT,
    UPLOAD,
    LocalFile,
    Manifest,
    PlanError,
    PlanTotals,
    Throttle,
    check_vault_path,
    choose_sample,
    diff_sorted,
    newest_manifest,
    parse_manifest,
    plan_prune,
    run_stamp,
)
from retention.backup.targets import (
    SecretRef,
    TargetError,
    host_key_fingerprint,
    parse_host_key_line,
    settings_from,
)


def local(name: str, size: int = 100) -> LocalFile:
    return LocalFile(name, f"2026/01/02/{name}.rdv", size, "0" * 64)


def test_diff_copies_what_is_missing_or_differs_and_skips_the_rest() -> None:
    files = [local("a"), local("b", 200), local("c"), local("d")]
    remote = [("vault/2026/01/02/a.rdv", 100), ("vault/2026/01/02/b.rdv", 150), ("vault/2026/01/02/c.rdv", 100),
              ("vault/2026/01/02/old.rdv", 5), ("vault/2026/01/03/x.rdv", 1)]
    decided = {f.recording_id: d for f, d in diff_sorted(files, remote, force={"vault/2026/01/02/c.rdv"})}
    assert decided == {"a": PRESENT, "b": CHANGED, "c": CHANGED, "d": UPLOAD}
    totals = PlanTotals()
    for item, decision in diff_sorted(files, remote):
        totals.add(item, decision)
    assert (totals.files, totals.bytes, totals.present, totals.changed) == (2, 300, 2, 1)


def test_diff_refuses_unsorted_listings() -> None:
    with pytest.raises(PlanError, match="ascending"):
        list(diff_sorted([local("a")], [("vault/b", 1), ("vault/a", 1)]))
    with pytest.raises(PlanError, match="local inventory"):
        list(diff_sorted([local("b"), local("a")], []))


def test_diff_of_empty_target_uploads_everything() -> None:
    assert [d for _, d in diff_sorted([local("a"), local("b")], [])] == [UPLOAD, UPLOAD]


def test_throttle_keeps_the_average_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    throttle = Throttle(1000, lambda: now[0], sleep)
    for _ in range(10):
        throttle.consume(500)
    assert now[0] == pytest.approx(5.0)          # 5000 bytes at 1000 B/s
    unlimited = Throttle(0, lambda: now[0], sleep)
    assert unlimited.consume(10**9) == 0.0
    with pytest.raises(ValueError):
        Throttle(-1, lambda: 0.0, sleep)


def test_sample_is_uniform_and_complete_when_asked() -> None:
    items = list(range(50))
    assert choose_sample(iter(items), 0, random.Random(1)) == items
    assert choose_sample(iter(items), 80, random.Random(1)) == items
    counts = [0] * 50
    rng = random.Random(7)
    for _ in range(2000):
        picked = choose_sample(iter(items), 5, rng)
        assert len(set(picked)) == 5
        for p in picked:
            counts[p] += 1
    assert min(counts) > 120 and max(counts) < 290    # each expected 200 times


@pytest.mark.parametrize("bad", ["../etc/passwd", "2026/01/02/../../x.rdv", "/2026/01/02/a.rdv",
                                 "2026/01/02/a.wav", "2026/1/02/a.rdv", "2026/01/02/.a.rdv", "undated/../a.rdv"])
def test_vault_paths_cannot_leave_the_vault(bad: str) -> None:
    with pytest.raises(PlanError):
        check_vault_path(bad)


def test_vault_paths_the_vault_writes_are_accepted() -> None:
    for good in ("2026/01/02/20260102T101010Z-0123456789ab.rdv", "2026/01/02/20260102T101010Z-0123456789ab.g1.rdv",
                 "undated/odd-id.rdv"):
        assert check_vault_path(good) == good


def test_manifest_round_trip_and_errors() -> None:
    stamp = run_stamp(1_790_000_000.0, 12)
    assert stamp == "20260921T141320Z-000012"
    manifest = Manifest(12, "2026-09-21T14:13:20.000Z", "vm", f"catalog/{stamp}.db", 4096, "ab" * 32, 7, 3, 300,
                        ["k1"], [])
    assert parse_manifest(manifest.to_json(), "m") == manifest
    with pytest.raises(PlanError, match="not JSON"):
        parse_manifest(b"{", "m")
    with pytest.raises(PlanError, match="not a snapshot name"):
        parse_manifest(manifest.to_json().replace(b"catalog/2026", b"catalog/../2026"), "m")
    keys = [f"manifests/{run_stamp(1_790_000_000.0 + i, i)}.json" for i in range(5)] + ["manifests/junk.json"]
    assert newest_manifest(keys) == keys[4]
    assert [m for m, _ in plan_prune(keys, 2)] == keys[:3]
    assert plan_prune(keys, 0) == []


def test_secret_references_never_hold_the_secret() -> None:
    assert SecretRef.parse("file:/etc/recorderd/s3", "secret") == SecretRef("file", "/etc/recorderd/s3")
    assert str(SecretRef.parse("credential:s3-secret", "secret")) == "credential:s3-secret"
    for bad, named in [("hunter2", "not a secret reference"), ("file:relative", "absolute"),
                       ("env:1BAD", "environment variable"), ("vault:x", "unknown secret scheme")]:
        with pytest.raises(TargetError, match=named):
            SecretRef.parse(bad, "secret")
    with pytest.raises(TargetError, match="both --access-key-id and --secret"):
        settings_from("s3", {"bucket": "bucket-1", "access_key_id": "AKIA"})


def test_host_key_lines_give_openssh_fingerprints() -> None:
    blob = bytes(range(51))
    import base64
    line = "ssh-ed25519 " + base64.b64encode(blob).decode() + " root@pbx"
    assert parse_host_key_line(line) == ("ssh-ed25519", host_key_fingerprint(blob))
    assert parse_host_key_line("[10.0.0.5]:2222 " + line) == ("ssh-ed25519", host_key_fingerprint(blob))
    assert parse_host_key_line("ssh-rsa " + base64.b64encode(blob).decode())[0] == "rsa-sha2-512"
    with pytest.raises(TargetError, match="not an OpenSSH public key"):
        parse_host_key_line("hello")
    with pytest.raises(TargetError, match="host_key_sha256"):
        settings_from("sftp", {"host": "h", "user": "u", "directory": "/b", "key": "file:/k",
                               "host_key_type": "ssh-ed25519", "host_key_sha256": "MD5:aa"})
