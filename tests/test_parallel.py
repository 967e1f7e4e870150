"""The local process pool when a worker dies (issue 20): retried once in a fresh pool, and named
(which item, which stage) when it dies again, never a bare BrokenProcessPool. And librosa's numba
kernels compile into polyvox's own cache, once, before any worker starts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from polyvox.config import ParallelSection
from polyvox.parallel import WorkerCrashed, map_items

from conftest import REPO
from crashers import square_or_die

LOCAL = ParallelSection(backend="local", workers=2, dask_address=None)
log = logging.getLogger("test")


def test_a_worker_killed_once_is_retried_in_a_fresh_pool(tmp_path):
    items = [(n, None) for n in range(40)]
    items[17] = (17, f"once:{tmp_path / 'killed'}")
    assert map_items(square_or_die, items, LOCAL, "features", log) == [n * n for n in range(40)]
    assert (tmp_path / "killed").exists()


def test_a_worker_that_dies_twice_names_the_item_and_the_stage():
    items = [(n, None) for n in range(40)]
    items[23] = (23, "die")
    with pytest.raises(WorkerCrashed) as crashed:
        map_items(square_or_die, items, LOCAL, "features: audio", log)
    message = str(crashed.value)
    assert message.startswith("features: audio: a worker process died twice") and "(23, 'die')" in message, message
    assert "NUMBA_CACHE_DIR" not in message and "numba cache" in message
    # and the pool works again afterwards
    assert map_items(square_or_die, [(2, None), (3, None)], LOCAL, "again", log) == [4, 9]


def test_librosa_compiles_into_polyvox_own_numba_cache(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    script = ("import polyvox, os; import polyvox.signal.jit; print(os.environ['NUMBA_CACHE_DIR'])")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / "cache" / "polyvox" / "numba"
    assert out.stdout.strip() == str(folder)
    cached = [p.name for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert any("pitch" in name for name in cached), cached  # pyin's kernels, in polyvox's folder
