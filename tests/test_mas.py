from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from polyvox.models.mas import monotonic_alignment


def brute_force(value: np.ndarray) -> tuple[float, np.ndarray]:
    """Best monotonic surjective path by enumerating every duration split."""
    tokens, frames = value.shape
    best, best_path = -np.inf, None
    for cuts in itertools.combinations(range(1, frames), tokens - 1):
        bounds = (0, *cuts, frames)
        path = np.zeros_like(value, dtype=np.int8)
        for i in range(tokens):
            path[i, bounds[i] : bounds[i + 1]] = 1
        score = float((value * path).sum())
        if score > best:
            best, best_path = score, path
    return best, best_path


@pytest.mark.parametrize("tokens, frames", [(1, 1), (1, 4), (2, 2), (3, 5), (4, 9), (5, 8), (6, 11)])
def test_mas_matches_brute_force(tokens, frames):
    rng = np.random.default_rng(tokens * 100 + frames)
    for _ in range(20):
        value = rng.normal(size=(tokens, frames))
        path = monotonic_alignment(torch.tensor(value)[None], torch.tensor([tokens]), torch.tensor([frames]))[0].numpy()
        best, _ = brute_force(value)
        assert (path * value).sum() == pytest.approx(best)
        assert (path.sum(axis=0) == 1).all() and (path.sum(axis=1) >= 1).all()  # each frame one token; no token skipped
        rows = path.argmax(axis=0)
        assert (np.diff(rows) >= 0).all() and (np.diff(rows) <= 1).all()  # monotonic, one step at a time


def test_mas_batches_with_padding():
    rng = np.random.default_rng(0)
    value = torch.tensor(rng.normal(size=(2, 4, 9)))
    lengths, frames = torch.tensor([4, 2]), torch.tensor([9, 5])
    batch = monotonic_alignment(value, lengths, frames)
    single = monotonic_alignment(value[1:, :2, :5], lengths[1:], frames[1:])
    assert torch.equal(batch[1, :2, :5], single[0]) and batch[1, 2:].sum() == 0 and batch[1, :, 5:].sum() == 0
    with pytest.raises(ValueError, match="frames >= tokens"):
        monotonic_alignment(value, torch.tensor([4, 6]), torch.tensor([9, 5]))


def test_the_search_starts_no_thread_pool_of_its_own():
    # numba's parallel loops bring a second OpenMP runtime whose spinning threads made two CPU ranks
    # under torchrun ~6x slower; the search must leave numba's threading layer unstarted.
    code = ("import torch, numba.np.ufunc.parallel as p\n"
            "from polyvox.models.mas import monotonic_alignment\n"
            "monotonic_alignment(torch.randn(2, 4, 9), torch.tensor([4, 3]), torch.tensor([9, 7]))\n"
            "print(p._is_initialized)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "False"
