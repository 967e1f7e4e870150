"""Probe: does the teacher's timbre reach a conversion voice through its content features? Each
content frame of the teacher's rendering is replaced (or blended) by the mean of its k nearest
neighbours (cosine) among the speaker's own training content frames before the decoder reads it
(kNN-VC's matching, in content space), and the held-out benchmark scores the result.

    python benchmarks/knn_content_probe.py --workspace benchmarks/work/kconv --k 4 --weight 1.0 \\
        -- --tag knn4w10 --speakers kathleen-a --limit 80 --second-judge whisper-tiny.en \\
           --similarity-to ../shared/data/kathleen-a/wavs --dnsmos --system knn4w10=<member folder>

Everything after ``--`` is :mod:`heldout`'s command line. ``--weight`` 1.0 uses her frames only, 0.5
half hers, half the teacher's. Findings: benchmarks/README.md ("Where the similarity gap on kathleen-a
comes from").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def matching_set(workspace: Path) -> np.ndarray:
    """(frames, width) float32: every training take's content features at their own 50 Hz rate."""
    index = pd.read_parquet(workspace / "data/features/index.parquet")
    rows = index[index["split"] == "train"]
    return np.concatenate([np.load(workspace / "data/features" / relative, allow_pickle=False).astype(np.float32)
                           for relative in rows["content_features"]])


def patch(frames: np.ndarray, k: int, weight: float) -> None:
    """Make the converter's content encoder return the matched (blended) features."""
    import torch

    import polyvox.runtime.converter as converter

    matching = torch.from_numpy(frames)
    unit = torch.nn.functional.normalize(matching, dim=1)
    encode = converter.encode

    def matched(signal, rate, settings, threads=1):
        query = torch.from_numpy(encode(signal, rate, settings, threads))
        nearest = (torch.nn.functional.normalize(query, dim=1) @ unit.T).topk(k, dim=1).indices
        return (weight * matching[nearest].mean(dim=1) + (1 - weight) * query).numpy()

    converter.encode = matched


def main() -> None:
    ours, _, theirs = " ".join(sys.argv[1:]).partition(" -- ")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace whose features hold content")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--weight", type=float, default=1.0)
    args = parser.parse_args(ours.split())
    frames = matching_set(args.workspace)
    print(f"matching set {frames.shape} k={args.k} weight={args.weight}", flush=True)
    patch(frames, args.k, args.weight)
    import heldout

    sys.argv = [heldout.__file__, *theirs.split()]
    heldout.main()


if __name__ == "__main__":
    main()
