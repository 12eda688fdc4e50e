"""Importing recorderd keeps numpy's BLAS on one thread (see recorderd/__init__.py): spinning
OpenBLAS workers cost the live daemon as much CPU as its recording work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The capture engine's jitter filter (a matrix product per block of packets), then the
# number of threads the process has.
PROBE = """
import recorderd
import numpy as np
from capture.mediabatch import first_order_iir
first_order_iir(np.random.default_rng(1).random(200_000), 1 / 16)
import os
print(len(os.listdir("/proc/self/task")))
"""


def threads_after_jitter_filter(extra_env: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_recorderd_runs_blas_on_one_thread() -> None:
    assert threads_after_jitter_filter({}) == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no worker threads on one CPU")
def test_an_explicit_setting_is_kept_and_the_probe_sees_blas_threads() -> None:
    # the probe would see OpenBLAS's workers: so the test above is not vacuous
    assert threads_after_jitter_filter({"OPENBLAS_NUM_THREADS": "2"}) == 2
