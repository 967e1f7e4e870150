"""Where a training step's time goes: the default model on kathleen-a batches, by part.

    .venv/bin/python benchmarks/step_profile.py --workspace WORKSPACE_WITH_FEATURES [--steps 12] [--threads 2]

Parts are timed by wall clock around each (forward hooks on the model's modules, backward hooks on
the same modules, the alignment search wrapped), synchronous on CPU, after two warm-up steps. A
module whose inputs need no gradient (the encoders of tokens and of reference mels) reports no
backward of its own: it is in "backward: rest". Parts:
data (collate), the alignment search (monotonic_alignment: the numba dynamic programme, its
float64 copy and the path back), each encoder, the variance adaptor, the decoder's frame-level
self-attention, its convolutional feed-forward, the post-net, the rest of the forward (losses,
cdist, expansion), the backward of each, the optimiser. Writes ``benchmarks/results/step_profile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import polyvox  # noqa: F401  before torch (GOMP_SPINCOUNT)
    import torch

    from polyvox.config import load_params
    from polyvox.models import acoustic
    from polyvox.models.acoustic import AcousticModel
    from polyvox.train.data import Corpus, batch_to, mel_statistics, vocabulary_and_speakers
    from polyvox.train.trainer import model_config
    from polyvox.workspace import Workspace

    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    ws = Workspace(args.workspace)
    vocab, speakers = vocabulary_and_speakers(ws)
    corpus = Corpus(ws, "train", vocab, speakers)
    torch.manual_seed(params.seed)
    model = AcousticModel(model_config(params, len(vocab)), *mel_statistics(ws))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)

    parts: dict[str, float] = defaultdict(float)  # seconds of the current step
    starts: dict[str, float] = {}
    decoder_blocks = list(model.decoder.stack.blocks)
    scoped = {"text encoder": model.text, "reference encoder": model.reference, "image encoder": model.image,
              "fusion": model.fusion, "variance adaptor": list(model.variance.children()),
              "post-net": model.decoder.postnet,
              "decoder self-attention": [b.attention for b in decoder_blocks],
              "decoder conv feed-forward": [b.conv for b in decoder_blocks]}

    def hooks(name: str, module: torch.nn.Module) -> None:
        def pre(*_):
            starts[name] = time.perf_counter()

        def post(*_):
            parts[name] += time.perf_counter() - starts.pop(name)

        def back_pre(*_):
            starts["bw " + name] = time.perf_counter()

        def back_post(*_):
            if "bw " + name in starts:
                parts["backward: " + name] += time.perf_counter() - starts.pop("bw " + name)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
        module.register_full_backward_pre_hook(back_pre)
        module.register_full_backward_hook(back_post)

    for name, modules in scoped.items():
        for module in modules if isinstance(modules, list) else [modules]:
            hooks(name, module)

    search = acoustic.monotonic_alignment

    def timed_search(*a, **k):
        started = time.perf_counter()
        try:
            return search(*a, **k)
        finally:
            parts["alignment search"] += time.perf_counter() - started

    acoustic.monotonic_alignment = timed_search
    model.train()
    steps = []
    for step in range(args.steps + 2):
        parts.clear()
        began = time.perf_counter()
        batch = batch_to(corpus.collate(corpus.batch_indices(step, params.train.batch_size, params.seed), params.seed,
                                        step), torch.device("cpu"))
        parts["data (collate)"] = time.perf_counter() - began
        started = time.perf_counter()
        losses = model(batch)
        forward = time.perf_counter() - started
        started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        backward = time.perf_counter() - started
        started = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.train.grad_clip)
        optimiser.step()
        parts["optimiser (clip + AdamW)"] = time.perf_counter() - started
        forward_named = sum(v for k, v in parts.items() if k in scoped or k == "alignment search")
        parts["forward: rest (cdist, losses, expansion, masks)"] = forward - forward_named
        parts["backward: rest"] = backward - sum(v for k, v in parts.items() if k.startswith("backward: ")
                                                 and k != "backward: rest")
        parts["total"] = time.perf_counter() - began
        if step >= 2:
            steps.append(dict(parts))
    names = sorted({k for s in steps for k in s}, key=lambda k: -statistics.median(s.get(k, 0.0) for s in steps))
    total = statistics.median(s["total"] for s in steps)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads",
              "steps": len(steps), "batch_size": params.train.batch_size,
              "median_seconds": {k: statistics.median(s.get(k, 0.0) for s in steps) for k in names}}
    for name in names:
        seconds = result["median_seconds"][name]
        print(f"{name:50s} {seconds * 1000:8.1f} ms  {100 * seconds / total:5.1f} %")
    out = REPO / "benchmarks/results/step_profile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
