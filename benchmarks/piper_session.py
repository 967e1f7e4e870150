"""The Piper teacher's cost per render, before and after optimising its graph once per machine, side by
side in one process: opening a seeded session from the raw graph (onnxruntime optimises it each time)
against opening the cached, already-optimised graph with optimisation off (``polyvox.engines.piper_graph``).

    python benchmarks/piper_session.py [--sentences 20] [--rounds 3]

Prints the median seconds per render of each (session opening and synthesis separately) and their
ratio; the renders are interleaved so that a busy neighbour slows both alike. Results:
``benchmarks/results/piper_session.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort

    from heldout import load_sentences
    from polyvox.engines import _piper_options, _piper_phonemes, piper_graph, piper_ids, piper_model
    from polyvox.text.normalize import normalize_text

    model = piper_model("en_US-joe-medium")
    graph = piper_graph("en_US-joe-medium")
    texts = [normalize_text(text) for _, text in load_sentences()[: args.sentences]]
    timings: dict[str, dict[str, list[float]]] = {"raw": {"open": [], "run": []}, "cached": {"open": [], "run": []}}
    for _ in range(args.rounds):
        for text in texts:
            ids = piper_ids(_piper_phonemes(text, model.language), model.phoneme_ids)
            feeds = {"input": np.asarray([ids], dtype=np.int64), "input_lengths": np.asarray([len(ids)], dtype=np.int64),
                     "scales": np.asarray(model.scales, dtype=np.float32)}
            for name in ("raw", "cached"):
                options = _piper_options()
                if name == "cached":
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                clock = time.perf_counter()
                ort.set_seed(zlib.crc32(text.encode("utf-8")))
                session = ort.InferenceSession(model.onnx if name == "raw" else str(graph), options,
                                               providers=["CPUExecutionProvider"])
                opened = time.perf_counter()
                session.run(None, feeds)
                timings[name]["open"].append(opened - clock)
                timings[name]["run"].append(time.perf_counter() - opened)
    summary = {name: {part: statistics.median(values) for part, values in parts.items()} for name, parts in timings.items()}
    for name, parts in summary.items():
        parts["whole"] = parts["open"] + parts["run"]
        print(f"{name:>7}: open {parts['open']:.3f} s  synthesis {parts['run']:.3f} s  whole {parts['whole']:.3f} s")
    ratio = summary["raw"]["whole"] / summary["cached"]["whole"]
    print(f"raw / cached per render: {ratio:.2f}× ({len(texts)} sentences × {args.rounds} rounds, medians)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "piper_session.json").write_text(json.dumps({"summary": summary, "ratio": ratio}, indent=1) + "\n")


if __name__ == "__main__":
    main()
