"""Intelligibility on sentences no corpus holds: the held-out set, read by each system, heard by the judge.

    .venv/bin/python benchmarks/heldout.py --tag demo-bases --speakers flite_slt,flite_rms \\
        --system base14=/path/to/a/models/voice --system shipped=/path/to/b/models/voice[:VOCODER] \\
        [--teachers] [--limit N] [--threads 1]

``benchmarks/heldout_sentences.txt`` holds 252 everyday sentences (numbers, names, questions, short and
long) that neither the demo prompts nor kathleen-a's ARCTIC prompts contain
(``tests/test_benchmark_set.py``). Sentence *i* is read by speaker *i mod n* of ``--speakers`` (so
each speaker reads a fixed, disjoint share); each ``--system`` is a trained member folder (Griffin-Lim,
or the neural vocoder after ``:``); ``--teachers`` adds the teacher engines reading the same
sentences as the same speakers (the ceiling, when the speakers are catalogue voices). Whisper (the
project's judge, ``evaluate.asr``) transcribes every clip; WER/CER are scored against the text.

Every pair of systems is compared on the same sentences with a paired bootstrap (sentences resampled,
2000 draws, 95 %): the difference of corpus WER and its interval. Writes
``benchmarks/results/heldout_<tag>.json`` (summary) and ``heldout_<tag>.csv`` (every clip's scores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SENTENCES = REPO / "benchmarks" / "heldout_sentences.txt"


def load_sentences(path: Path = SENTENCES) -> list[tuple[str, str]]:
    """(id, text) pairs: ids h001, h002, ... by position among the non-comment lines."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if line and not line.startswith("#")]
    return [(f"h{number:03d}", text) for number, text in enumerate(texts, start=1)]


def render_member(folder: Path, vocoder: Path | None):
    from polyvox.runtime.synthesizer import Synthesizer

    synthesizer = Synthesizer(folder, vocoder=vocoder)

    def render(text: str, speaker: str) -> tuple[np.ndarray, int]:
        return synthesizer.synthesize(text, speaker=speaker)

    return render


def render_teacher(text: str, speaker: str) -> tuple[np.ndarray, int]:
    from polyvox.engines import resolve_voices, synthesize

    with tempfile.TemporaryDirectory(prefix="polyvox-heldout-") as scratch:
        wav = Path(scratch) / "t.wav"
        synthesize(resolve_voices([speaker])[0], text, wav, repr(text[:40]))
        signal, rate = sf.read(wav, dtype="float32", always_2d=True)
    return signal.mean(axis=1), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--system", action="append", default=[], help="NAME=MEMBER_FOLDER[:VOCODER_FOLDER]")
    parser.add_argument("--teachers", action="store_true", help="also score the teacher engines (the ceiling)")
    parser.add_argument("--speakers", required=True, help="comma-separated speakers, assigned round-robin")
    parser.add_argument("--limit", type=int, default=None, help="the first N sentences only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true",
                        help="take a system's clips from an earlier run of this tag (heldout_<tag>_<system>.csv)")
    args = parser.parse_args()

    from polyvox.evaluate.scoring import paired_bootstrap
    from polyvox.judges import Judge
    from polyvox.judges.scores import asr_scores

    torch.set_num_threads(args.threads)
    speakers = args.speakers.split(",")
    sentences = load_sentences()[: args.limit]
    systems = {}
    for spec in args.system:
        name, _, paths = spec.partition("=")
        member, _, vocoder = paths.partition(":")
        systems[name] = render_member(Path(member), Path(vocoder) if vocoder else None)
    if args.teachers:
        systems["teachers"] = render_teacher
    judge = Judge("whisper")
    rows = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, render in systems.items():
        cached = RESULTS / f"heldout_{args.tag}_{name}.csv"
        if args.reuse and cached.is_file():
            earlier = pd.read_csv(cached, keep_default_na=False)
            if list(earlier["id"]) == [sid for sid, _ in sentences] and list(earlier["speaker"]) == \
                    [speakers[i % len(speakers)] for i in range(len(sentences))]:
                rows += earlier.to_dict("records")
                print(f"{name}: reused {cached}", flush=True)
                continue
        started, audio_seconds, first = time.perf_counter(), 0.0, len(rows)
        for index, (sid, text) in enumerate(sentences):
            speaker = speakers[index % len(speakers)]
            signal, rate = render(text, speaker)
            audio_seconds += len(signal) / rate
            score = asr_scores(signal, rate, text, judge)
            rows.append({"system": name, "id": sid, "speaker": speaker, "text": text, "hypothesis": score.hypothesis,
                         "word_errors": score.word_errors, "words": score.words,
                         "character_errors": score.character_errors, "characters": score.characters})
        pd.DataFrame(rows[first:]).to_csv(cached, index=False)
        print(f"{name}: {len(sentences)} sentences, {audio_seconds:.0f} s of audio, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = {"tag": args.tag, "sentences": len(sentences), "speakers": speakers, "judge": judge.name,
               "machine": f"{platform.machine()} {platform.processor()}".strip(), "systems": {}, "differences": {}}
    for name, part in table.groupby("system", sort=False):
        summary["systems"][name] = {
            "wer": part["word_errors"].sum() / part["words"].sum(),
            "cer": part["character_errors"].sum() / part["characters"].sum(),
            "per_speaker_wer": {s: g["word_errors"].sum() / g["words"].sum() for s, g in part.groupby("speaker")}}
    for a, b in itertools.combinations(systems, 2):
        x = table[table["system"] == a].set_index("id").loc[[s for s, _ in sentences]]
        y = table[table["system"] == b].set_index("id").loc[[s for s, _ in sentences]]
        summary["differences"][f"{a} - {b}"] = {
            "wer": paired_bootstrap(x["word_errors"], x["words"], y["word_errors"], y["words"], args.resamples, 0.95, 0),
            "cer": paired_bootstrap(x["character_errors"], x["characters"], y["character_errors"], y["characters"],
                                    args.resamples, 0.95, 0)}
    table.to_csv(RESULTS / f"heldout_{args.tag}.csv", index=False)
    (RESULTS / f"heldout_{args.tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, figures in summary["systems"].items():
        print(f"{name:>12}: WER {figures['wer']:.3f}  CER {figures['cer']:.3f}  "
              + "  ".join(f"{s} {w:.3f}" for s, w in figures["per_speaker_wer"].items()))
    for pair, figures in summary["differences"].items():
        w = figures["wer"]
        print(f"{pair}: WER {w['difference']:+.3f} [{w['low']:+.3f}, {w['high']:+.3f}] over {w['pairs']} sentences")


if __name__ == "__main__":
    main()
