"""``polyvox evaluate``: candidate vs champion vs the real recordings, on the test split, in one run.

1. Synthesise every test sentence (up to ``evaluate.max_utterances``) with the candidate
   (``models/candidate/``) and, when one exists, the champion (``models/champion/``), each
   conditioned on the sentence's speaker by name; WAVs go to ``reports/evaluate/audio/<system>/``.
2. Real-time factor on CPU, one thread and all threads, over ``evaluate.rtf_sentences`` sentences;
   parameter count and size on disk.
3. Score synthesis and the real takes in worker processes (``parallel``): WER/CER by the judge
   (:mod:`polyvox.judges`, ``evaluate.asr``: Whisper, with pocketsphinx's WER/CER beside it as a
   second opinion; one normalisation for reference and hypothesis), resemblyzer
   similarity to the speaker's centroid (its real *training* takes), DNSMOS, and for synthesis
   MCD (c1–c24, DTW) and log-F0 RMSE (voiced in both, same path) against the real take.
4. Paired bootstrap of candidate − champion for every metric (same utterances, same resamples).
5. ``reports/evaluate/``: ``metrics.json`` (DVC metrics), ``per_utterance.csv`` (DVC plots),
   ``plots/*.png``, ``report.html`` (self-contained: audio and images inlined, no network).
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from polyvox.fingerprint import VOICE_FILE
from polyvox.config import ConfigError, ParallelSection, Params
from polyvox.runtime.voice import Voice
from polyvox.evaluate.scoring import ScoreItem, paired_bootstrap, score
from polyvox.judges.speaker import SpeakerEncoder
from polyvox.fileio import atomic_path, atomic_write_text
from polyvox.fingerprint import current_stamp, fingerprint, read_stamp, voice_digest
from polyvox.stages import STAGES
from polyvox.judges import Judge
from polyvox.parallel import map_items
from polyvox.progress import track
from polyvox.tracking import stage_run
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

# metric → (per-utterance numerator column, denominator column or None for a mean, lower is better)
# (wer/cer: the judge's; *_pocketsphinx: the second opinion's, scored only beside a Whisper judge)
METRICS = {
    "wer": ("word_errors", "words", True),
    "cer": ("character_errors", "characters", True),
    "wer_pocketsphinx": ("ps_word_errors", "ps_words", True),
    "cer_pocketsphinx": ("ps_character_errors", "ps_characters", True),
    "mcd_db": ("mcd_db", None, True),
    "log_f0_rmse_cents": ("log_f0_rmse_cents", None, True),
    "speaker_similarity": ("speaker_similarity", None, False),
    "mos_ovrl": ("mos_ovrl", None, False),
}


@dataclass
class EvaluateResult:
    metrics: dict
    report: Path
    seconds: float

    def summary(self) -> str:
        c, real = self.metrics["systems"]["candidate"], self.metrics["systems"]["real"]
        text = (f"candidate WER ({self.metrics.get('asr', 'pocketsphinx')}) {c['wer']:.3f} (real {real['wer']:.3f}), "
                f"CER {c['cer']:.3f}")
        if "wer_pocketsphinx" in c:
            text += f"; WER (pocketsphinx) {c['wer_pocketsphinx']:.3f} (real {real['wer_pocketsphinx']:.3f})"
        text += (f"; MCD {c['mcd_db']:.2f} dB, similarity {c['speaker_similarity']:.3f}, MOS {c['mos_ovrl']:.2f}, "
                 f"RTF {c['rtf_one_thread']:.3f} (1 thread)")
        if "champion" in self.metrics["systems"]:
            d = self.metrics["difference"]["wer"]
            text += f"; WER vs champion {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        return f"{text} on {self.metrics['utterances']} test utterances in {self.seconds:.0f} s → {self.report}"


def test_rows(params: Params, workspace: Workspace) -> pd.DataFrame:
    index = pd.read_parquet(workspace.features_index)
    index = index.merge(pd.read_parquet(workspace.clean_manifest)[["id", "audio"]], on="id", how="left")
    rows = index[index["split"] == "test"].sort_values("id")
    if rows.empty:
        raise ConfigError(f"{workspace.features_index}: the test split is empty (features.splits.test)")
    limit = params.evaluate.max_utterances
    if limit is not None and len(rows) > limit:
        rows = rows.sample(n=limit, random_state=params.seed).sort_values("id")
    return rows


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def real_time_factor(voice: Voice, rows: pd.DataFrame, threads: int) -> float:
    """Synthesis seconds per second of audio (acoustic model + vocoder) with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        first = rows.iloc[0]
        voice.synthesize(first.clean_text, speaker=first.speaker)  # warm-up: lazy init, allocator
        spent = produced = 0.0
        for row in rows.itertuples():
            started = time.perf_counter()
            wave, rate = voice.synthesize(row.clean_text, speaker=row.speaker)
            spent += time.perf_counter() - started
            produced += len(wave) / rate
        return spent / max(produced, 1e-9)
    finally:
        torch.set_num_threads(before)


def _systems(workspace: Workspace, speakers: list[str]) -> dict[str, tuple[Voice, Path]]:
    if not (workspace.candidate / VOICE_FILE).is_file():
        raise ConfigError(f"{workspace.candidate}: no candidate voice; run `polyvox ensemble` first")
    systems = {"candidate": (Voice.load(workspace.candidate), workspace.candidate)}
    if (workspace.champion / VOICE_FILE).is_file():
        champion = Voice.load(workspace.champion)
        missing = sorted(set(speakers) - set(champion.speakers))
        if missing:
            log.warning("champion %s does not know speaker(s) %s; it is not scored", workspace.champion, missing)
        else:
            systems["champion"] = (champion, workspace.champion)
    unknown = sorted(set(speakers) - set(systems["candidate"][0].speakers))
    if unknown:
        raise ConfigError(f"{workspace.candidate}: the candidate does not know test speaker(s) {unknown}")
    return systems


def score_systems(params: Params, workspace: Workspace, systems: dict[str, tuple[Voice, Path]], rows: pd.DataFrame,
                  audio: dict[str, Path]) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Synthesise ``rows`` with every system (WAVs into ``audio[name]``), time them, and score them and
    the real takes. Returns the per-utterance table (column ``system``: a system's name or ``real``)
    and each system's summary (corpus WER/CER, means of the rest, RTF, parameters, size)."""
    cfg = params.evaluate
    speakers = sorted(rows["speaker"].unique())
    # 1. synthesis (all threads; the stage's own timing, not the RTF figure)
    for name, (voice, _) in systems.items():
        audio[name].mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for row in track(list(rows.itertuples()), len(rows), f"evaluate: {name} synthesises", log):
                wave, rate = voice.synthesize(row.clean_text, speaker=row.speaker)
                with atomic_path(audio[name] / f"{row.id}.wav") as tmp:
                    sf.write(tmp, wave, rate, format="WAV", subtype="PCM_16")

    # 2. speed and size
    timing_rows = rows.head(cfg.rtf_sentences)
    facts = {}
    for name, (voice, folder) in systems.items():
        facts[name] = {"rtf_one_thread": real_time_factor(voice, timing_rows, 1),
                       "rtf_all_threads": real_time_factor(voice, timing_rows, torch.get_num_threads()),
                       "threads": torch.get_num_threads(), "parameters": voice.parameter_count(),
                       "size_mb": folder_bytes(folder) / 2**20, "kind": voice.describe()["kind"],
                       "mode": voice.mode, "members": [m.name for m in voice.members]}
        log.info("%s: RTF %.3f (1 thread), %.3f (%d threads), %.1f M parameters, %.1f MB", name,
                 facts[name]["rtf_one_thread"], facts[name]["rtf_all_threads"], facts[name]["threads"],
                 facts[name]["parameters"] / 1e6, facts[name]["size_mb"])

    # 3. scoring in parallel
    index = pd.read_parquet(workspace.features_index)
    index = index.merge(pd.read_parquet(workspace.clean_manifest)[["id", "audio"]], on="id", how="left")
    centroid_rows = pd.concat([index[(index["speaker"] == s) & (index["split"] == "train")].head(cfg.centroid_takes)
                               for s in speakers])
    settings = {"pitch": params.audio, "judge": Judge.from_params(params)}
    items = [ScoreItem("centroid", str(workspace.clean / a)) for a in centroid_rows["audio"]]
    keys = [("centroid", r.speaker, r.id) for r in centroid_rows.itertuples()]
    for row in rows.itertuples():
        real = str(workspace.clean / row.audio)
        items.append(ScoreItem("real", real, row.clean_text, **settings))
        keys.append(("real", row.speaker, row.id))
        for name in systems:
            items.append(ScoreItem("synthesis", str(audio[name] / f"{row.id}.wav"), row.clean_text, real, **settings))
            keys.append((name, row.speaker, row.id))
    workers = ParallelSection(backend=params.parallel.backend, workers=params.parallel.workers,
                             dask_address=params.parallel.dask_address)
    scored = map_items(score, items, workers, "evaluate: ASR, speaker embeddings, DNSMOS, MCD", log)

    centroids = {s: SpeakerEncoder.centroid([r["embedding"] for (k, spk, _), r in zip(keys, scored) if k == "centroid"
                                             and spk == s]) for s in speakers}
    text_of = dict(zip(rows["id"], rows["clean_text"]))
    records = []
    for (system, speaker, utterance), result in zip(keys, scored):
        if system == "centroid":
            continue
        embedding = result.pop("embedding")
        records.append({"system": system, "id": utterance, "speaker": speaker, "text": text_of[utterance], **result,
                        "speaker_similarity": SpeakerEncoder.similarity(embedding, centroids[speaker])})
    table = pd.DataFrame(records)
    for column in ("mcd_db", "log_f0_rmse_cents"):
        if column not in table:
            table[column] = np.nan
    table[["mcd_db", "log_f0_rmse_cents"]] = table[["mcd_db", "log_f0_rmse_cents"]].astype(float)

    summary = {}
    for system, part in table.groupby("system"):
        figures = {}
        for metric, (num, den, _) in METRICS.items():
            if num not in part:
                continue
            values = part[num].astype(float)
            if values.isna().all():
                continue
            figures[metric] = float(values.sum() / part[den].sum()) if den else float(values.mean())
        figures.update({k: float(part[k].mean()) for k in ("mos_sig", "mos_bak", "mos_p808")})
        summary[system] = {**figures, **facts.get(system, {})}
    return table, summary


def input_fingerprint(params: Params, workspace: Workspace, as_champion: bool = False) -> str:
    """What the evaluation reads; ``as_champion``: as it will be once the candidate is the champion."""
    # A champion that is the candidate itself (just promoted) adds nothing to compare: it does not
    # change the inputs, so the nightly run after a promotion is a no-op too.
    candidate_voice = voice_digest(workspace.candidate)
    champion_voice = "" if as_champion else voice_digest(workspace.champion)
    judge = Judge.from_params(params)
    second = judge.second_opinion()
    return fingerprint(workspace.data_version(), STAGES["evaluate"].identity(params), candidate_voice,
                       None if champion_voice in ("", candidate_voice) else champion_voice,
                       judge.identity(), second.identity() if second else None)


def completed(params: Params, workspace: Workspace, inputs: str | None = None) -> dict | None:
    """``metrics.json`` of an evaluation of exactly these inputs, with its report in place; None when
    :func:`evaluate` would score. An evaluation against an earlier champion stands once its candidate
    is the champion (promoted since, by this pipeline or another entry point: ``dvc repro`` evaluates
    before it promotes), as the comparison it made is all there is to know."""
    current = lambda: inputs or input_fingerprint(params, workspace)  # noqa: E731  (computed only for a stamp)
    stamp = current_stamp(workspace.evaluation / "metrics.json", [workspace.evaluation / "report.html"], current)
    if stamp is None:
        previous = read_stamp(workspace.evaluation / "metrics.json")
        if previous and previous.get("inputs_as_champion") and (workspace.evaluation / "report.html").is_file() \
                and previous["inputs_as_champion"] == current():
            stamp = previous
    return stamp


def evaluate(params: Params, workspace: Workspace) -> EvaluateResult:
    started = time.monotonic()
    cfg = params.evaluate
    out = workspace.evaluation
    rows = test_rows(params, workspace)
    speakers = sorted(rows["speaker"].unique())
    systems = _systems(workspace, speakers)
    inputs = input_fingerprint(params, workspace)
    previous = completed(params, workspace, inputs)
    if previous is not None:
        log.info("evaluate: candidate, champion, data and settings unchanged; %s stands", out)
        return EvaluateResult(metrics=previous, report=out / "report.html", seconds=previous["seconds"])
    # The stamp of an older evaluation goes first: a run killed halfway must not leave new audio and
    # report beside a stamp that a later run (say, after a rollback to that candidate) takes as done.
    (out / "metrics.json").unlink(missing_ok=True)
    table, summary = score_systems(params, workspace, systems, rows, {name: out / "audio" / name for name in systems})

    # paired bootstrap of candidate − champion
    difference = {}
    if "champion" in systems:
        a = table[table["system"] == "candidate"].set_index("id").loc[rows["id"]]
        b = table[table["system"] == "champion"].set_index("id").loc[rows["id"]]
        for metric, (num, den, lower_better) in METRICS.items():
            if num not in a:
                continue
            ones = np.ones(len(a))
            difference[metric] = {**paired_bootstrap(a[num].astype(float), a[den] if den else ones,
                                                     b[num].astype(float), b[den] if den else ones,
                                                     cfg.bootstrap_resamples, cfg.confidence, params.seed),
                                  "confidence": cfg.confidence, "lower_is_better": lower_better}
        for metric in ("rtf_one_thread", "size_mb"):
            difference[metric] = {"difference": summary["candidate"][metric] - summary["champion"][metric],
                                  "lower_is_better": True}
    seconds = time.monotonic() - started
    judge = Judge.from_params(params)
    second = judge.second_opinion()
    metrics = {"utterances": len(rows), "speakers": speakers, "asr": judge.name, "asr_sha256": judge.model_sha256(),
               "asr_second_opinion": second.name if second else None, "systems": summary, "difference": difference,
               "seconds": seconds, "data_version": workspace.data_version(),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
               "candidate_voice": systems["candidate"][0].describe(), "inputs": inputs,
               "inputs_as_champion": input_fingerprint(params, workspace, as_champion=True)}

    # 5. outputs
    from polyvox.evaluate.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "per_utterance.csv") as tmp:
        table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)
    report = write_report(metrics, table, rows, out, cfg.report_samples, workspace.clean, params.audio)
    metrics["seconds"] = time.monotonic() - started
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float) + "\n")

    tracker = stage_run("evaluate", params, workspace,
                        {"data_version": metrics["data_version"], "champion_scored": str("champion" in systems),
                         "speakers": ",".join(speakers)[:5000], "asr": judge.name,
                         "asr_second_opinion": second.name if second else "none"}, seconds=metrics["seconds"])
    tracker.metrics({f"{system}.{k}": v for system, figures in summary.items() for k, v in figures.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=0)
    tracker.artifacts([out / "metrics.json", out / "per_utterance.csv", report])
    samples = rows.drop_duplicates("clean_text").head(cfg.report_samples)["id"]
    tracker.artifacts([out / "audio" / "candidate" / f"{i}.wav" for i in samples], "samples")  # the dashboard plays them
    tracker.end()
    result = EvaluateResult(metrics=metrics, report=report, seconds=metrics["seconds"])
    log.info(result.summary())
    return result
