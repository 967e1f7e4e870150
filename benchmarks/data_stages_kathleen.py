"""The data half (validate + clean + features) on kathleen-a, each figure measured side by side.

1. features stage (1 worker) against a bare sequential loop that decodes the same clean audio
   and computes the same features with the same libraries (target ratio <= 1.2);
2. validate + clean + features with 2 workers against 1 worker (target speed-up >= 1.7);
3. an incremental rerun after adding 1 % new recordings, against the full run (target <= 10 %);
4. seconds of the whole data half per hour of audio.

    .venv/bin/python benchmarks/data_stages_kathleen.py [--corpus PATH] [--limit N]

``--limit`` takes the first N takes, for a quick look; the figures in benchmarks/README.md use all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import soundfile as sf

from polyvox.clean.stage import clean
from polyvox.config import load_params
from polyvox.corpus.prepare import prepare
from polyvox.features.extract import compute_features
from polyvox.features.stage import features
from polyvox.validate.stage import validate
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def corpus_subset(source: Path, target: Path, ids: list[str]) -> Path:
    """An LJSpeech corpus of ``ids`` from ``source``, hard-linked (no copies)."""
    (target / "wavs").mkdir(parents=True)
    wanted = set(ids)
    lines = [line for line in (source / "metadata.csv").read_text(encoding="utf-8").splitlines() if line.split("|")[0] in wanted]
    for utt in ids:
        os.link(source / "wavs" / f"{utt}.flac", target / "wavs" / f"{utt}.flac")
    (target / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def timed(func, *args):
    start = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - start, result


def data_half(params, ws: Workspace) -> dict[str, float]:
    return {name: timed(stage, params, ws)[0] for name, stage in (("validate", validate), ("clean", clean), ("features", features))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/kathleen-a")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    ids = [line.split("|")[0] for line in (args.corpus / "metadata.csv").read_text().splitlines() if line][: args.limit]
    scratch = Path(tempfile.mkdtemp(prefix="polyvox-bench-"))
    try:
        corpus = corpus_subset(args.corpus, scratch / "corpus", ids)

        def params_with(*overrides: str):
            return load_params(REPO / "params.yaml", [f"prepare.corpus={corpus}", *overrides])

        # 2. one worker against two, each from an empty workspace
        runs = {}
        for workers in (1, 2):
            ws = Workspace(scratch / f"ws{workers}")
            params = params_with(f"parallel.workers={workers}")
            prepare(params, ws)
            runs[workers] = data_half(params, ws)
        hours = sum(sf.info(str(p)).duration for p in (scratch / "ws1/data/clean/audio").rglob("*.wav")) / 3600

        # 1. features stage against the bare loop, over the same clean audio
        ws = Workspace(scratch / "ws1")
        clean_files = sorted((ws.clean / "audio").rglob("*.wav"))
        cfg = params_with().audio
        shutil.rmtree(ws.features)
        stage_seconds, _ = timed(features, params_with("parallel.workers=1"), ws)
        bare_seconds, _ = timed(lambda: [compute_features(sf.read(str(p), dtype="float32")[0], cfg) for p in clean_files])

        # 3. incremental: 99 % first, then the last 1 % added
        split = max(1, round(len(ids) * 0.01))
        grown = scratch / "grown"
        corpus_subset(args.corpus, grown, ids[:-split])
        ws = Workspace(scratch / "incremental")
        params = load_params(REPO / "params.yaml", [f"prepare.corpus={grown}", "parallel.workers=2"])
        full_seconds = timed(prepare, params, ws)[0] + sum(data_half(params, ws).values())
        for utt in ids[-split:]:
            os.link(args.corpus / "wavs" / f"{utt}.flac", grown / "wavs" / f"{utt}.flac")
        (grown / "metadata.csv").write_text((corpus / "metadata.csv").read_text(encoding="utf-8"), encoding="utf-8")
        incremental_seconds = timed(prepare, params, ws)[0] + sum(data_half(params, ws).values())

        one, two = sum(runs[1].values()), sum(runs[2].values())
        result = {
            "corpus": str(args.corpus), "takes": len(ids), "hours_of_audio": round(hours, 4),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "features_stage_vs_bare_loop": {"stage_s": round(stage_seconds, 2), "bare_s": round(bare_seconds, 2),
                                            "ratio": round(stage_seconds / bare_seconds, 3)},
            "two_workers_vs_one": {"one_worker_s": {k: round(v, 2) for k, v in runs[1].items()},
                                   "two_workers_s": {k: round(v, 2) for k, v in runs[2].items()},
                                   "speedup": round(one / two, 3)},
            "incremental_1_percent": {"added": split, "full_s": round(full_seconds, 2),
                                      "incremental_s": round(incremental_seconds, 2),
                                      "share_of_full": round(incremental_seconds / full_seconds, 4)},
            "seconds_per_hour_of_audio": {"one_worker": round(one / hours, 1), "two_workers": round(two / hours, 1)},
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks/results/data_stages_kathleen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
