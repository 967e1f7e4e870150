"""The acoustic model in onnxruntime vs PyTorch, side by side in one process, on CPU.

    .venv/bin/python benchmarks/onnx_speed.py [--voice DIR] [--threads 1] [--rounds 5]

Times text → log-mel (phonemes, encoder, durations, decoder; no vocoder) for the test sentences of
the kathleen-a workspace, alternating PyTorch and ONNX in each round, and reports the median time
per sentence of each and their ratio, plus the largest absolute log-mel difference (parity).
Writes ``benchmarks/results/onnx_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "benchmarks" / "work" / "quality_kathleen"


def main() -> None:
    from polyvox.runtime.voice import Voice
    from polyvox.runtime.onnx import OnnxAcoustic, export_voice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voice", type=Path, default=WORKSPACE / "models" / "candidate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    voice = Voice.load(args.voice)
    index = pd.read_parquet(WORKSPACE / "data/features/index.parquet")
    texts = index[index["split"] == "test"].sort_values("id")["clean_text"].head(args.sentences).tolist()
    speaker = voice.speakers[0]
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        export_voice(voice, Path(scratch))
        export_seconds = time.perf_counter() - started
        onnx = OnnxAcoustic(voice, Path(scratch), threads=args.threads)
        parity = max(float(np.abs(onnx.mel(t, speaker) - voice.mel(t, speaker=speaker).numpy()).max()) for t in texts)
        timings = {"torch": [], "onnx": []}
        for _ in range(args.rounds):
            for name, run in (("torch", lambda t: voice.mel(t, speaker=speaker)), ("onnx", lambda t: onnx.mel(t, speaker))):
                began = time.perf_counter()
                for text in texts:
                    run(text)
                timings[name].append((time.perf_counter() - began) / len(texts))
    torch_s, onnx_s = statistics.median(timings["torch"]), statistics.median(timings["onnx"])
    report = {"voice": str(args.voice), "members": [m.name for m in voice.members], "sentences": len(texts),
              "threads": args.threads, "rounds": args.rounds, "torch_s_per_sentence": torch_s,
              "onnx_s_per_sentence": onnx_s, "speedup": torch_s / onnx_s, "max_abs_log_mel_difference": parity,
              "export_seconds": export_seconds, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d")}
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "onnx_speed.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
