"""Training step in fp32 against bf16 autocast on CPU, side by side on kathleen-a.

    .venv/bin/python benchmarks/train_precision.py [--steps 150] [--workspace ...]

Two copies of params.yaml's model start from the same weights and see the same batches (the
trainer's length-bucketed batches, its optimiser, warm-up and peak learning rate); their steps
alternate in one process, so machine noise falls on both. Reported: the median step time of each
and their ratio, the mean training loss over the last fifth of the steps, and the validation loss
at the end — "faster at equal loss" needs both. Needs the workspace of
``quality_kathleen.py --phase data``. Writes ``benchmarks/results/train_precision.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from polyvox.config import load_params
from polyvox.models.acoustic import AcousticModel
from polyvox.train.data import Corpus, batch_to, mel_statistics, vocabulary_and_speakers
from polyvox.train.loop import optimise
from polyvox.train.trainer import lr_factor, model_config, validation_loss
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks/work/quality_kathleen")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml", [f"train.max_steps={args.steps}"])
    cfg, seed = params.train, params.seed
    ws = Workspace(args.workspace)
    vocab, speakers = vocabulary_and_speakers(ws)
    train_corpus = Corpus(ws, "train", vocab, speakers)
    val_corpus = Corpus(ws, "val", vocab, speakers)
    torch.manual_seed(seed)
    first = AcousticModel(model_config(params, len(vocab)), *mel_statistics(ws))
    variants = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = copy.deepcopy(first)
        optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor(cfg))
        variants[name] = {"model": model, "optimiser": optimiser, "scheduler": scheduler, "dtype": dtype,
                          "times": [], "losses": []}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu = torch.device("cpu")
    for step in range(args.steps):
        batch = batch_to(train_corpus.collate(train_corpus.batch_indices(step, cfg.batch_size, seed), seed, step), cpu)
        order = list(variants.items()) if step % 2 == 0 else list(variants.items())[::-1]
        for name, v in order:
            torch.manual_seed(seed + step)  # the same modality dropout draws for both
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=v["dtype"] or torch.bfloat16, enabled=v["dtype"] is not None):
                losses = v["model"](batch)
            optimise(losses["total"], v["model"], v["optimiser"], v["scheduler"], scaler, cfg.grad_clip)
            v["times"].append(time.perf_counter() - started)
            v["losses"].append(float(losses["total"].detach()))
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}: " + ", ".join(f"{n} loss {v['losses'][-1]:.3f} {statistics.median(v['times'][-25:]):.3f} s"
                                                    for n, v in variants.items()), flush=True)
    tail = max(1, args.steps // 5)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
              "cpu_bf16": bool(torch.cpu._is_avx512_bf16_supported()), "amx": bool(torch.cpu._is_amx_tile_supported()),
              "steps": args.steps, "batch_size": cfg.batch_size, "model": params.model.model_dump()}
    for name, v in variants.items():
        report[name] = {"median_step_s": statistics.median(v["times"][5:]),
                        "train_loss_last_fifth": statistics.mean(v["losses"][-tail:]),
                        "val_loss": validation_loss(v["model"], val_corpus, cfg.batch_size, cpu, seed)}
    report["speedup_bf16"] = report["fp32"]["median_step_s"] / report["bf16"]["median_step_s"]
    out = REPO / "benchmarks/results/train_precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
