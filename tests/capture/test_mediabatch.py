"""The vectorised batch pass equals straightforward per-packet references."""

from __future__ import annotations

import numpy as np

from capture.mediabatch import _segment_starts, _unwrap, first_order_iir
from capture.rtp import unwrap


def test_first_order_iir_equals_the_recursion() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 63, 64, 65, 1000):
        x = rng.random(n)
        y, expected = 0.0, []
        for v in x:
            y = (15 / 16) * y + v / 16
            expected.append(y)
        assert np.allclose(first_order_iir(x, 1 / 16), expected, rtol=0, atol=1e-12)


def test_segmented_unwrap_equals_unwrapping_each_stream() -> None:
    """Three streams interleaved in one batch, wrapping at different places, one of them
    continuing from a previous batch."""
    rng = np.random.default_rng(5)
    series = []
    for start in (65500, 100, 32000):
        steps = rng.integers(-3, 5, 400)
        series.append((start + np.cumsum(steps)) % 65536)
    previous_ext = [None, int(series[1][0]) - 2 + 65536 * 3, None]
    stream = np.concatenate([np.full(len(s), k) for k, s in enumerate(series)])
    values = np.concatenate(series).astype(np.int64)
    starts, first = _segment_starts(stream, 3)
    known = np.array([p is not None for p in previous_ext])
    previous = np.array([p or 0 for p in previous_ext], np.int64)
    got = _unwrap(values, stream, first, starts, previous, known, 16)
    for k, s in enumerate(series):
        assert np.array_equal(got[stream == k], unwrap(s.astype(np.int64), previous_ext[k], 16))
