"""ExpectationTable.lookup_keys (vectorised, with a sorted view rebuilt only now and then)
against the one-packet lookup from the dicts, over random sequences of claims, pair claims,
releases and lookups: calls starting and ending between every two lookups, ports reused,
media servers sharing one port."""

from __future__ import annotations

import numpy as np
import pytest

from capture import expectations
from capture.expectations import ExpectationTable, endpoint_key

IPS = [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(60)]
PORTS = [4000, 4002, 4004, 20000]


def random_packets(rng: np.random.Generator, table: ExpectationTable, n: int) -> tuple[np.ndarray, np.ndarray]:
    src = [endpoint_key(table.addresses.key(IPS[a]), PORTS[p]) for a, p in
           zip(rng.integers(0, len(IPS), n), rng.integers(0, len(PORTS), n), strict=True)]
    dst = [endpoint_key(table.addresses.key(IPS[a]), PORTS[p]) for a, p in
           zip(rng.integers(0, len(IPS), n), rng.integers(0, len(PORTS), n), strict=True)]
    return np.array(src, np.int64), np.array(dst, np.int64)


def one_by_one(table: ExpectationTable, src: np.ndarray, dst: np.ndarray) -> list[int | None]:
    answers = []
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        claim = table._lookup_key(s, d)
        answers.append(None if claim is None else claim.ident)
    return answers


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("small_thresholds", [False, True])
def test_vectorised_lookup_equals_the_dict_lookup_through_churn(seed: int, small_thresholds: bool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if small_thresholds:   # rebuilds happen often: both paths and the switch between them run
        monkeypatch.setattr(expectations, "REBUILD_CHANGED_KEYS", 6)
        monkeypatch.setattr(expectations, "REBUILD_DIRTY_PACKETS", 20)
        monkeypatch.setattr(expectations, "REBUILD_AFTER_LOOKUPS", 3)
    rng = np.random.default_rng(seed)
    table = ExpectationTable()
    live: list[str] = []
    checked = 0
    for step in range(400):
        action = rng.random()
        if action < 0.35 or not live:
            call = f"call-{step}"
            live.append(call)
            for _ in range(int(rng.integers(1, 3))):
                table.claim(IPS[rng.integers(0, len(IPS))], PORTS[rng.integers(0, len(PORTS))], call_key=call,
                            author_channel=int(rng.integers(0, 2)), kind="audio", codecs={}, secure=False)
            if rng.random() < 0.5:
                a, b = rng.integers(0, len(IPS), 2)
                table.claim_pair((IPS[a], PORTS[0]), (IPS[b], PORTS[3]), call_key=call, channel=0, kind="audio",
                                 codecs={}, secure=False)
        elif action < 0.55:
            table.release_call(live.pop(int(rng.integers(0, len(live)))))
        else:
            src, dst = random_packets(rng, table, int(rng.integers(1, 60)))
            local, claims, idents = table.lookup_keys(src, dst)
            got = [None if j < 0 else int(idents[j]) for j in local.tolist()]
            assert [None if j < 0 else claims[j].ident for j in local.tolist()] == got
            assert got == one_by_one(table, src, dst), f"seed {seed}, step {step}"
            checked += len(src)
    assert checked > 1000


def test_changes_left_after_a_burst_are_folded_into_the_view_within_a_bounded_number_of_lookups() -> None:
    table = ExpectationTable()
    src, dst = np.array([endpoint_key(table.addresses.key(IPS[0]), 4000)]), np.array([1], np.int64)
    table.lookup_keys(src, dst)                       # the view exists
    table.claim(IPS[1], 4000, call_key="late", author_channel=0, kind="audio", codecs={}, secure=False)
    assert table._changed_dst
    for _ in range(expectations.REBUILD_AFTER_LOOKUPS + 1):
        table.lookup_keys(src, dst)
    assert not table._changed_dst and not table._changed_src
