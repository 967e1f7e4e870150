"""Feature extraction with pyin's pitch bins of ``audio.f0_resolution`` (params.yaml: 0.2 semitones)
against librosa's default 0.1, side by side in one process, on real recordings.

    .venv/bin/python benchmarks/pitch_resolution.py [--files 12] [--rounds 3]

Each round runs ``compute_features`` over the same kathleen-a takes (resampled once, beforehand)
with 0.1 and then with the configured resolution, alternating; reports the median seconds per
second of audio of each, their ratio, and how far the pitch tracks are apart (share of frames with
the same voicing decision; median and 95th-percentile distance in cents on frames both call voiced).
Writes ``benchmarks/results/pitch_resolution.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KATHLEEN = REPO.parent / "shared" / "data" / "kathleen-a"


def main() -> None:
    import librosa
    import soundfile as sf

    from polyvox.config import load_params
    from polyvox.features.extract import compute_features

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = load_params(REPO / "params.yaml").audio
    baseline = cfg.model_copy(update={"f0_resolution": 0.1})
    paths = sorted((KATHLEEN / "wavs").glob("*.flac"))[: args.files]
    if not paths:
        raise SystemExit(f"no recordings under {KATHLEEN / 'wavs'}")
    signals = []
    for path in paths:
        signal, rate = sf.read(str(path), dtype="float32")
        signals.append(librosa.resample(signal, orig_sr=rate, target_sr=cfg.sample_rate))
    audio_seconds = sum(len(s) for s in signals) / cfg.sample_rate
    compute_features(signals[0][: cfg.sample_rate], cfg)  # warm-up: imports, numba compilation
    compute_features(signals[0][: cfg.sample_rate], baseline)
    timings: dict[str, list[float]] = {"baseline": [], "configured": []}
    tracks: dict[str, list[np.ndarray]] = {}
    for _ in range(args.rounds):
        for name, settings in (("baseline", baseline), ("configured", cfg)):
            began = time.perf_counter()
            tracks[name] = [compute_features(s, settings)["f0"] for s in signals]
            timings[name].append((time.perf_counter() - began) / audio_seconds)
    fine, coarse = np.concatenate(tracks["baseline"]), np.concatenate(tracks["configured"])
    both = (fine > 0) & (coarse > 0)
    cents = 1200 * np.abs(np.log2(coarse[both] / fine[both]))
    base_s, ours_s = statistics.median(timings["baseline"]), statistics.median(timings["configured"])
    report = {"files": len(paths), "audio_seconds": audio_seconds, "rounds": args.rounds,
              "resolution": cfg.f0_resolution, "baseline_resolution": 0.1,
              "baseline_s_per_audio_s": base_s, "configured_s_per_audio_s": ours_s, "speedup": base_s / ours_s,
              "voicing_agreement": float(((fine > 0) == (coarse > 0)).mean()),
              "median_cents": float(np.median(cents)), "p95_cents": float(np.percentile(cents, 95)),
              "machine": f"{platform.machine()}, {platform.python_version()}"}
    out = REPO / "benchmarks" / "results" / "pitch_resolution.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(f"features with f0_resolution {cfg.f0_resolution}: {ours_s:.3f} s per audio second vs {base_s:.3f} s at 0.1 "
          f"= {base_s / ours_s:.2f}x faster; voicing agrees on {report['voicing_agreement']:.1%} of frames, "
          f"pitch {report['median_cents']:.1f} cents apart (median), {report['p95_cents']:.1f} (95th percentile)")


if __name__ == "__main__":
    main()
