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

from polyvox.config import ParallelSection
from polyvox.progress import track

T = TypeVar("T")
R = TypeVar("R")

# Modules the local pool's fork server imports once, so each worker starts with torch & co loaded
# and librosa's numba kernels compiled (polyvox.signal.jit, first).
PRELOAD = ["polyvox.signal.jit", "polyvox.validate.probes", "polyvox.clean.audio", "polyvox.features.extract",
           "polyvox.evaluate.scoring"]


class WorkerCrashed(RuntimeError):
    """A worker process died (a segfault, the out-of-memory killer) twice on the same work."""
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
    func: Callable[[T], R], items: Sequence[T], cfg: ParallelSection, description: str, logger: logging.Logger
) -> list[R]:
    if not items:
        return []
    if cfg.backend == "dask":
        return _map_dask(func, items, cfg, description, logger)
    if cfg.workers == 1 or len(items) == 1:
        return list(track(map(func, items), len(items), description, logger))
    chunksize = max(1, min(16, len(items) // (cfg.workers * 8)))
    results: list[R] = []
    for attempt in (1, 2):
        pool = _local_pool(cfg.workers)
        try:
            for result in track(pool.map(func, items[len(results):], chunksize=chunksize), len(items) - len(results),
                                description if attempt == 1 else f"{description} (retry)", logger):
                results.append(result)
            return results
        except BrokenProcessPool:
            _POOLS.pop(cfg.workers, None)  # the pool is unusable: the next one starts afresh
            if attempt == 1:
                logger.warning("%s: a worker process died after %d of %d items; retrying the rest in a fresh pool",
                               description, len(results), len(items))
    # Twice: it is the work, not a passing kill. The item that kills a worker is among those in flight.
    window = items[len(results):len(results) + cfg.workers * chunksize]
    culprit = next((item for item in window if _kills_a_worker(func, item)), None)
    raise WorkerCrashed(f"{description}: a worker process died twice (a crash in native code, or the out-of-memory "
                        f"killer) after {len(results)} of {len(items)} items"
                        + (f"; it dies on {_describe(culprit)}" if culprit is not None else
                           f"; the items in flight were {', '.join(_describe(i) for i in window[:4])}")
                        + ". If the crash is in numba (librosa), delete polyvox's numba cache "
                        f"({os.environ.get('NUMBA_CACHE_DIR')}) and rerun.")


def _kills_a_worker(func: Callable[[T], R], item: T) -> bool:
    """Run ``item`` alone in a fresh one-worker pool: does its process die?"""
    with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context(), initializer=_init_worker) as alone:
        try:
            alone.submit(func, item).result()
        except BrokenProcessPool:
            return True
        except Exception:  # noqa: BLE001 - an ordinary error is not a dead worker; the stage reports it itself
            return False
    return False


def _describe(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 300 else text[:300] + "…"


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


def _map_dask(func: Callable[[T], R], items: Sequence[T], cfg: ParallelSection, description: str, logger: logging.Logger) -> list[R]:
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
