"""Kernel capture counters per minute, and the drops each second hands to the engine."""

from __future__ import annotations

from recorderd.capturestats import CaptureMinutes

T = 1_767_225_600.0      # a minute boundary


def test_minutes_rows_and_new_drops() -> None:
    minutes = CaptureMinutes()
    assert minutes.update(T + 1, {"eth1": (100, 0), "eth2": (10, 0)}) == (0, [])
    assert minutes.update(T + 2, {"eth1": (250, 3), "eth2": (20, 0)}) == (3, [])
    # the next minute: the one before is complete; what came since the last reading counts here
    new, ended = minutes.update(T + 61, {"eth1": (300, 5), "eth2": (20, 1)})
    assert new == 3
    assert ended == [(int(T), "eth1", 250, 3), (int(T), "eth2", 20, 0)]
    assert minutes.flush() == [(int(T) + 60, "eth1", 50, 2), (int(T) + 60, "eth2", 0, 1)]
    assert minutes.flush() == []          # nothing counted since


def test_a_counter_that_goes_back_counts_nothing_negative() -> None:
    minutes = CaptureMinutes()
    minutes.update(T, {"eth1": (100, 4)})
    assert minutes.update(T + 1, {"eth1": (50, 1)}) == (0, [])      # a re-opened socket starts again
    assert minutes.update(T + 2, {"eth1": (60, 2)})[0] == 1
    assert CaptureMinutes().flush() == []
