"""recorderd: recorderd layer (see docs/architecture.md).

Importing it pins numpy's BLAS (OpenBLAS) to one thread unless the environment says otherwise.
The capture engine multiplies small matrices every batch (the RFC 3550 jitter filter in
capture.mediabatch); with its default of one thread per core, OpenBLAS wakes worker threads
that spin between calls, and at 2,000 live calls they took as much CPU as all the recording
work (bench/live.py) and competed with it for the daemon's core. The variable must be set
before numpy loads, which is why it is here and not in the daemon.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
