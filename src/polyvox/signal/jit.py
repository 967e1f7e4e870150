"""librosa's numba kernels, compiled once per process tree.

The local process pool's fork server imports this module before it forks any worker
(:data:`polyvox.parallel.PRELOAD`): the one process compiles pyin's kernels (or loads them from
polyvox's own numba cache, see :mod:`polyvox`), and every worker forked from it starts with them
compiled. So no two processes ever write the cache at once, and no worker compiles anything.
"""

from __future__ import annotations

import numpy as np


def warm() -> None:
    import librosa

    # numba compiles per argument type, not value: any rate and frame sizes compile the kernels every
    # later pyin call (whatever params.yaml's audio section says) runs, so these are not settings.
    rate = 22050
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(int(0.3 * rate)) / rate).astype(np.float32)
    librosa.pyin(tone, fmin=65, fmax=600, sr=rate, frame_length=1024, hop_length=256)


warm()
