"""The serving bundle: one self-contained folder that loads with no training code and no MLflow.

Layout — the candidate's voice folder (``voice.json``, ``members/``, ``vocoder/``; weights as
plain state dicts, loaded with ``torch.load(weights_only=True)``) plus:

    bundle.json     format, registered model and version, data version, git commit, created,
                    text front-end and audio settings, the evaluation's summary, the gate decision
    metrics.json    the full evaluation (``reports/evaluate/metrics.json``)
    MODEL_CARD.md   what it is, how it scored next to the real recordings, what it is not for
    onnx/           the acoustic model exported to ONNX (``polyvox.runtime.onnx``), when exported

:func:`load_bundle` needs only ``polyvox.runtime.voice`` and the model modules it imports.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

FORMAT = 1


def _asr(metrics: dict) -> str:
    return metrics.get("asr", "pocketsphinx")  # evaluations before judges existed were all pocketsphinx's


def _table(metrics: dict) -> str:
    systems = [s for s in ("candidate", "champion", "real") if s in metrics["systems"]]
    asr = _asr(metrics)
    rows = [(f"WER ({asr})", "wer"), (f"CER ({asr})", "cer")]
    if any("wer_pocketsphinx" in metrics["systems"][s] for s in systems):
        rows += [("WER (pocketsphinx, second opinion)", "wer_pocketsphinx"),
                 ("CER (pocketsphinx, second opinion)", "cer_pocketsphinx")]
    rows += [("MCD-DTW (dB)", "mcd_db"), ("log-F0 RMSE (cents)", "log_f0_rmse_cents"),
             ("speaker similarity", "speaker_similarity"), ("DNSMOS overall", "mos_ovrl"),
             ("RTF, 1 thread", "rtf_one_thread"), ("parameters (M)", "parameters"), ("size (MB)", "size_mb")]
    header = "| metric | " + " | ".join("this voice" if s == "candidate" else s for s in systems) + " |"
    lines = [header, "|---" * (len(systems) + 1) + "|"]
    for label, key in rows:
        values = []
        for system in systems:
            value = metrics["systems"][system].get(key)
            if value is None:
                values.append("—")
            elif key == "parameters":
                values.append(f"{value / 1e6:.2f}")
            else:
                values.append(f"{value:.3f}")
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def model_card(voice: dict, metrics: dict, decision: dict, data_version: str, git_commit: str) -> str:
    members = ", ".join(f"{m['name']} (weight {m['weight']:.2f}, {m['conditioning']})" for m in voice["members"])
    asr, second = _asr(metrics), metrics.get("asr_second_opinion")
    judged = {"pocketsphinx": "pocketsphinx (a fresh decoder per utterance)"}.get(
        asr, f"{asr} (faster-whisper, greedy decoding, language fixed)")
    if second:
        judged += f", with {second}'s figures beside it as a second opinion"
    rules = "\n".join(f"- {'✔' if r['passed'] else '✘'} {r['rule']}: {r['value']} {r['op']} {r['threshold']} — {r['detail']}"
                      for r in decision["rules"])
    return f"""# polyvox voice — model card

A text-to-speech voice trained by polyvox: phonemes (espeak-ng) → a non-autoregressive acoustic
model conditioned on a speaker's reference audio and/or image → log-mel → vocoder.

- **Kind**: {voice['kind']} ({voice['mode']}) of {members}
- **Vocoder**: {'neural (Vocos-style iSTFT)' if voice.get('vocoder') else 'Griffin-Lim'}
- **Speakers**: {', '.join(metrics.get('speakers', []))}
- **Data version**: `{data_version}` · **code**: `{git_commit}`

## Evaluation ({metrics['utterances']} held-out test sentences; never trained on)

{_table(metrics)}

WER/CER: {judged}, on the synthesis — the real recordings' column is the ASR's own
ceiling. Similarity: resemblyzer, to the centroid of the speaker's real takes.

## Gate decision: {'promoted' if decision['promoted'] else 'refused'}

{rules}

## Intended use and limits

For synthesising the voices it was trained on, in the language of its front-end
({voice.get('language', 'en-us')}). It imitates the training speakers: use it only with their
consent. Objective metrics above are proxies; listen before deploying.
"""


def build_bundle(candidate: Path, metrics: dict, decision: dict, data_version: str, git_commit: str,
                 model_name: str, target: Path, export_onnx: bool = False) -> Path:
    """Copy the candidate voice into ``target`` (a new folder) with bundle.json, metrics.json and
    MODEL_CARD.md, and with ``export_onnx`` its acoustic model in ONNX under ``onnx/``."""
    shutil.copytree(candidate, target)
    if export_onnx:
        from polyvox.runtime.voice import Voice
        from polyvox.runtime.onnx import export_voice

        export_voice(Voice.load(candidate), target / "onnx")
    voice = json.loads((candidate / "voice.json").read_text(encoding="utf-8"))
    first = next(iter(sorted((candidate / "members").iterdir())))
    member = json.loads((first / "model.json").read_text(encoding="utf-8"))
    meta = {"format": FORMAT, "registered_model": model_name, "version": None, "data_version": data_version,
            "git_commit": git_commit, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "text": member["text"], "audio": member["audio"], "speakers": metrics.get("speakers", []),
            "onnx": export_onnx, "summary": metrics["systems"]["candidate"], "decision": {"promoted": decision["promoted"],
                                                                     "rules": decision["rules"]}}
    (target / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    (target / "MODEL_CARD.md").write_text(model_card({**voice, "language": member["text"]["language"]}, metrics,
                                                     decision, data_version, git_commit), encoding="utf-8")
    return target


def load_bundle(folder: Path):
    """The bundle's voice and its ``bundle.json``; safe loaders only, no training code, no MLflow."""
    from polyvox.runtime.voice import Voice

    folder = Path(folder)
    meta_path = folder / "bundle.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: no bundle.json — not a serving bundle (promote a candidate first)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: bundle format {meta.get('format')!r}, this polyvox reads {FORMAT}")
    return Voice.load(folder), meta
