"""Intelligibility on sentences no corpus holds: the held-out set, read by each system, heard by the judge.

    .venv/bin/python benchmarks/heldout.py --tag demo-bases --speakers flite_slt,flite_rms \\
        --system base14=/path/to/a/models/voice --system shipped=/path/to/b/models/voice[:VOCODER] \\
        [--teachers] [--limit N] [--threads 1]
    .venv/bin/python benchmarks/heldout.py --tag kathleen-convert --speakers kathleen-a \\
        --system convert=benchmarks/work/kconv/models/convert --teacher-mel piper_joe \\
        --second-judge whisper-tiny.en --similarity-to ../shared/data/kathleen-a/wavs --dnsmos

``benchmarks/heldout_sentences.txt`` holds 252 everyday sentences (numbers, names, questions, short and
long) that neither the demo prompts nor kathleen-a's ARCTIC prompts contain
(``tests/test_benchmark_set.py``). Sentence *i* is read by speaker *i mod n* of ``--speakers`` (so
each speaker reads a fixed, disjoint share); each ``--system`` is a trained member folder (Griffin-Lim,
or the neural vocoder after ``:``); ``--teachers`` adds the teacher engines reading the same
sentences as the same speakers (the ceiling, when the speakers are catalogue voices). Whisper (the
project's judge, ``evaluate.asr``) transcribes every clip; WER/CER are scored against the text.
A member may be of either kind (a conversion member renders through its teacher).

``--teacher-mel VOICE`` adds the system a conversion member is measured against: the teacher voice's
rendering through polyvox's log-mel and the *same* vocoder (``--vocoder``, Griffin-Lim by default)
— what the converter would give if it reproduced the teacher's spectrum exactly. ``--second-judge``
hears every clip again with another ASR (``whisper-tiny.en``, or a faster-whisper folder), so no
variant is judged only by the ear its content features came from. ``--similarity-to`` (a folder of
the speaker's real takes; ``--centroid-takes`` of them) adds resemblyzer similarity, ``--dnsmos``
DNSMOS P.835 overall; a conversion member also records its per-component seconds (teacher, pitch,
content, decoder, vocoder) as real-time factors on ``--threads`` threads.

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


def render_member(folder: Path, vocoder: Path | None, timings: dict | None = None):
    """A member folder of either kind as a renderer; ``timings`` collects a converter's per-component seconds."""
    from polyvox.runtime.voice import Voice

    voice = Voice.from_members({folder.name: folder}, vocoder=vocoder)
    member = voice.members[0].synthesizer

    def render(text: str, speaker: str) -> tuple[np.ndarray, int]:
        clock = time.perf_counter()
        mel, f0 = voice.rendered(text, speaker=speaker)  # f0: a converter's contour, for a harmonic vocoder
        vocoding = time.perf_counter()
        wave = voice.vocode(mel, f0)
        if timings is not None and member.kind == "convert":
            for name, seconds in {**member.timings, "vocoder": time.perf_counter() - vocoding}.items():
                timings[name] = timings.get(name, 0.0) + seconds
        if timings is not None:
            timings["whole"] = timings.get("whole", 0.0) + time.perf_counter() - clock
        return wave, voice.sample_rate

    return render


def render_teacher_mel(voice_name: str, vocoder: Path | None, params):
    """The teacher's rendering → polyvox's log-mel (cleaned as a take is) → the vocoder."""
    from polyvox.frontends.teacher import TeacherSettings, teacher_mel
    from polyvox.signal.griffin_lim import griffin_lim

    settings = TeacherSettings(voice_name, params.audio, params.clean.trim_top_db, params.clean.loudness_lufs)
    model = None
    if vocoder is not None:
        from polyvox.models.meta import load_vocoder

        model = load_vocoder(vocoder, "cpu")

    def render(text: str, speaker: str) -> tuple[np.ndarray, int]:
        from polyvox.text.normalize import normalize_text

        mel = torch.from_numpy(teacher_mel(normalize_text(text), settings, repr(text[:40])))
        with torch.no_grad():
            wave = model.synthesize(mel) if model is not None else griffin_lim(mel, params.audio)
        return wave.reshape(-1).numpy().astype(np.float32), params.audio.sample_rate

    return render


def render_teacher(text: str, speaker: str) -> tuple[np.ndarray, int]:
    from polyvox.engines import resolve_voices, synthesize

    with tempfile.TemporaryDirectory(prefix="polyvox-heldout-") as scratch:
        wav = Path(scratch) / "t.wav"
        synthesize(resolve_voices([speaker])[0], text, wav, repr(text[:40]))
        signal, rate = sf.read(wav, dtype="float32", always_2d=True)
    return signal.mean(axis=1), rate


def _mono(read: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    signal, rate = read
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
    parser.add_argument("--teacher-mel", default=None, help="a catalogue voice: its rendering through the vocoder")
    parser.add_argument("--vocoder", type=Path, default=None, help="the vocoder of --teacher-mel (default Griffin-Lim)")
    parser.add_argument("--second-judge", default=None, help="whisper-tiny.en, or a faster-whisper model folder")
    parser.add_argument("--similarity-to", type=Path, default=None, help="a folder of the speaker's real takes")
    parser.add_argument("--centroid-takes", type=int, default=40)
    parser.add_argument("--dnsmos", action="store_true", help="score DNSMOS P.835 overall of every clip")
    parser.add_argument("--reuse", action="store_true",
                        help="take a system's clips from an earlier run of this tag (heldout_<tag>_<system>.csv)")
    args = parser.parse_args()

    from polyvox.evaluate.scoring import paired_bootstrap
    from polyvox.judges import Judge
    from polyvox.judges.scores import asr_scores

    from polyvox.config import load_params

    torch.set_num_threads(args.threads)
    speakers = args.speakers.split(",")
    sentences = load_sentences()[: args.limit]
    systems, timings = {}, {}
    for spec in args.system:
        name, _, paths = spec.partition("=")
        member, _, vocoder = paths.partition(":")
        timings[name] = {}
        systems[name] = render_member(Path(member), Path(vocoder) if vocoder else None, timings[name])
    if args.teachers:
        systems["teachers"] = render_teacher
    if args.teacher_mel:
        systems[f"{args.teacher_mel}-mel"] = render_teacher_mel(args.teacher_mel, args.vocoder, load_params(REPO / "params.yaml"))
    judge = Judge("whisper")
    second = None
    if args.second_judge:
        from polyvox.frontends.content import CONTENT_MODELS

        folder = (CONTENT_MODELS[args.second_judge].folder() if args.second_judge in CONTENT_MODELS
                  else Path(args.second_judge).resolve())
        second = Judge("whisper", str(folder))
    centroid = encoder = real_similarity = None
    if args.similarity_to:
        from polyvox.judges.speaker import SpeakerEncoder

        encoder = SpeakerEncoder()
        takes = sorted(p for p in args.similarity_to.iterdir() if p.suffix in (".wav", ".flac"))
        centroid = encoder.centroid([encoder.embed(*_mono(sf.read(p, dtype="float32", always_2d=True)))
                                     for p in takes[-args.centroid_takes:]])
        # the ceiling: other real takes of the speaker (the first ones, disjoint from the centroid's) to it
        real_similarity = float(np.mean([encoder.similarity(encoder.embed(*_mono(sf.read(p, dtype="float32",
                                                                                         always_2d=True))), centroid)
                                         for p in takes[: min(args.centroid_takes, len(takes) - args.centroid_takes)]]))
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
            row = {"system": name, "id": sid, "speaker": speaker, "text": text, "hypothesis": score.hypothesis,
                   "word_errors": score.word_errors, "words": score.words,
                   "character_errors": score.character_errors, "characters": score.characters,
                   "seconds": len(signal) / rate}
            if second is not None:
                heard = asr_scores(signal, rate, text, second)
                row.update(hypothesis_2=heard.hypothesis, word_errors_2=heard.word_errors)
            if encoder is not None:
                row["similarity"] = encoder.similarity(encoder.embed(signal, rate), centroid)
            if args.dnsmos:
                from polyvox.judges.dnsmos import dnsmos

                row["mos_ovrl"] = dnsmos(signal, rate)["mos_ovrl"]
            rows.append(row)
        pd.DataFrame(rows[first:]).to_csv(cached, index=False)
        print(f"{name}: {len(sentences)} sentences, {audio_seconds:.0f} s of audio, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = {"tag": args.tag, "sentences": len(sentences), "speakers": speakers, "judge": judge.name,
               "second_judge": second.name if second else None, "threads": args.threads,
               "real_takes_similarity": real_similarity if encoder is not None else None,
               "machine": f"{platform.machine()} {platform.processor()}".strip(), "systems": {}, "differences": {}}
    for name, part in table.groupby("system", sort=False):
        figures = summary["systems"][name] = {
            "wer": part["word_errors"].sum() / part["words"].sum(),
            "cer": part["character_errors"].sum() / part["characters"].sum(),
            "per_speaker_wer": {s: g["word_errors"].sum() / g["words"].sum() for s, g in part.groupby("speaker")}}
        if "word_errors_2" in part and part["word_errors_2"].notna().all():
            figures["wer_second_judge"] = part["word_errors_2"].sum() / part["words"].sum()
        for column in ("similarity", "mos_ovrl"):
            if column in part and part[column].notna().all():
                figures[column] = float(part[column].mean())
        if timings.get(name):
            audio = float(part["seconds"].sum())
            figures["rtf"] = {component: seconds / audio for component, seconds in timings[name].items()}
    for a, b in itertools.combinations(systems, 2):
        x = table[table["system"] == a].set_index("id").loc[[s for s, _ in sentences]]
        y = table[table["system"] == b].set_index("id").loc[[s for s, _ in sentences]]
        summary["differences"][f"{a} - {b}"] = {
            "wer": paired_bootstrap(x["word_errors"], x["words"], y["word_errors"], y["words"], args.resamples, 0.95, 0),
            "cer": paired_bootstrap(x["character_errors"], x["characters"], y["character_errors"], y["characters"],
                                    args.resamples, 0.95, 0)}
        if second is not None:
            summary["differences"][f"{a} - {b}"]["wer_second_judge"] = paired_bootstrap(
                x["word_errors_2"], x["words"], y["word_errors_2"], y["words"], args.resamples, 0.95, 0)
    table.to_csv(RESULTS / f"heldout_{args.tag}.csv", index=False)
    (RESULTS / f"heldout_{args.tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    if summary["real_takes_similarity"] is not None:
        print(f"real takes' similarity to the centroid: {summary['real_takes_similarity']:.3f}")
    for name, figures in summary["systems"].items():
        extra = "  ".join(f"{key} {figures[key]:.3f}" for key in ("wer_second_judge", "similarity", "mos_ovrl")
                          if key in figures)
        print(f"{name:>12}: WER {figures['wer']:.3f}  CER {figures['cer']:.3f}  {extra}  "
              + "  ".join(f"{s} {w:.3f}" for s, w in figures["per_speaker_wer"].items()))
        if "rtf" in figures:
            print(" " * 14 + "RTF " + "  ".join(f"{k} {v:.3f}" for k, v in figures["rtf"].items()))
    for pair, figures in summary["differences"].items():
        w = figures["wer"]
        print(f"{pair}: WER {w['difference']:+.3f} [{w['low']:+.3f}, {w['high']:+.3f}] over {w['pairs']} sentences")


if __name__ == "__main__":
    main()
