"""The audio comparison the system tests rely on must itself be right: bounded by 1, high only
where the reference really is in the signal (a broken normaliser once passed everything)."""

from __future__ import annotations

import numpy as np

from tests.support.audio import peak_correlation


def test_peak_correlation_finds_the_reference_and_only_it() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(0, 1000, 4000)
    signal_ = rng.normal(0, 50, 20000)
    signal_[7000:11000] += reference
    assert 0.99 < peak_correlation(signal_, reference) <= 1.0 + 1e-9
    assert peak_correlation(rng.normal(0, 1000, 20000), reference) < 0.1
    assert peak_correlation(signal_ * 3.0, reference * 0.5) > 0.99      # scale does not matter
