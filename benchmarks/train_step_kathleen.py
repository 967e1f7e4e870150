"""Training step time on kathleen-a: polyvox's trainer settings against the plain recipe, side by side.

    .venv/bin/python benchmarks/train_step_kathleen.py [--steps 10] [--rounds 3]

Baseline: random batches (a shuffled slice per step) and dropout 0.1 on the attention weights, as
FastSpeech recipes have it. polyvox: length-bucketed batches (:meth:`Corpus.batch_indices`) and
no attention-weight dropout (PyTorch's fused attention). Same model config (params.yaml), batch
size, optimiser and seed; the two run interleaved in rounds in one process, and the figure is the
ratio of median step times. Needs the workspace of ``quality_kathleen.py --phase data``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from polyvox.config import load_params
from polyvox.models.acoustic import AcousticModel
from polyvox.train.data import Corpus, batch_to, mel_statistics, vocabulary_and_speakers
from polyvox.train.trainer import model_config
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def random_batch(corpus: Corpus, step: int, batch_size: int, seed: int) -> list[int]:
    order = np.random.default_rng([seed, step]).permutation(len(corpus))
    return [int(i) for i in order[:batch_size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks/work/quality_kathleen")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    ws = Workspace(args.workspace)
    vocab, speakers = vocabulary_and_speakers(ws)
    corpus = Corpus(ws, "train", vocab, speakers)
    batch_size, seed = params.train.batch_size, params.seed

    setups = {}
    for name in ("baseline", "polyvox"):
        torch.manual_seed(seed)
        model = AcousticModel(model_config(params, len(vocab)), *mel_statistics(ws))
        if name == "baseline":
            for module in model.modules():
                if isinstance(module, torch.nn.MultiheadAttention):
                    module.dropout = params.model.dropout
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    times: dict[str, list[float]] = {name: [] for name in setups}
    frames: dict[str, list[int]] = {name: [] for name in setups}
    for round_ in range(args.rounds):
        for name, (model, optimiser) in setups.items():
            for i in range(args.steps):
                step = round_ * args.steps + i
                indices = (random_batch(corpus, step, batch_size, seed) if name == "baseline"
                           else corpus.batch_indices(step, batch_size, seed))
                batch = batch_to(corpus.collate(indices, seed, step), torch.device("cpu"))
                started = time.perf_counter()
                losses = model(batch)
                optimiser.zero_grad(set_to_none=True)
                losses["total"].backward()
                optimiser.step()
                times[name].append(time.perf_counter() - started)
                frames[name].append(int(batch.mel.shape[2]) * len(indices))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "steps_each": len(times["polyvox"]), "batch_size": batch_size,
        "median_seconds_per_step": median, "padded_frames_per_batch": {n: statistics.mean(f) for n, f in frames.items()},
        "speedup": median["baseline"] / median["polyvox"],
    }
    out = REPO / "benchmarks/results/train_step_kathleen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
