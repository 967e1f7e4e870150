"""Run per-file work on the local cores or on a dask.distributed cluster, with progress.

Stage functions call :func:`map_items` with a module-level function and picklable items; the
same call runs inline (one worker), in a local process pool, or on dask (``parallel.backend``).
Results come back in the order of the items.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from polyvox.config import ParallelConfig
from polyvox.progress import track

T = TypeVar("T")
R = TypeVar("R")

# Modules the local pool's fork server imports once, so each worker starts with torch & co loaded.
PRELOAD = ["polyvox.validate.probes", "polyvox.clean.audio", "polyvox.features.extract", "polyvox.evaluate.scoring"]
_context: multiprocessing.context.BaseContext | None = None


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver, not fork: the caller may hold threads (Prefect's client, torch's pools), and
    # forking a threaded process can deadlock; the server itself forks from a clean process.
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _init_worker() -> None:
    # One process per core: keep each one single-threaded so workers do not oversubscribe.
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def map_items(
    func: Callable[[T], R], items: Sequence[T], cfg: ParallelConfig, description: str, logger: logging.Logger
) -> list[R]:
    if not items:
        return []
    if cfg.backend == "dask":
        return _map_dask(func, items, cfg, description, logger)
    if cfg.workers == 1 or len(items) == 1:
        return list(track(map(func, items), len(items), description, logger))
    chunksize = max(1, min(16, len(items) // (cfg.workers * 8)))
    pool = _local_pool(cfg.workers)
    try:
        return list(track(pool.map(func, items, chunksize=chunksize), len(items), description, logger))
    except BrokenProcessPool:
        _POOLS.pop(cfg.workers, None)  # a worker died (killed, out of memory): the next call starts afresh
        raise


# Pools outlive one call: the stages of a flow run share warm workers (torch, librosa and numba
# loaded once), and they are shut down when the process exits.
_POOLS: dict[int, ProcessPoolExecutor] = {}


def _local_pool(workers: int) -> ProcessPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_init_worker)
    return _POOLS[workers]


@atexit.register
def shutdown_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].shutdown(cancel_futures=True)


def _map_dask(func: Callable[[T], R], items: Sequence[T], cfg: ParallelConfig, description: str, logger: logging.Logger) -> list[R]:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if cfg.dask_address:
        client = Client(cfg.dask_address)
    else:
        cluster = LocalCluster(
            n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.WARNING
        )
        client = Client(cluster)
    try:
        futures = client.map(func, list(items), pure=False)
        position = {future.key: index for index, future in enumerate(futures)}
        results: list[Any] = [None] * len(items)
        for future in track(as_completed(futures), len(items), description, logger):
            results[position[future.key]] = future.result()
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
