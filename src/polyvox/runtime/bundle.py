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
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from polyvox.fingerprint import VOICE_FILE
from polyvox.config import AudioSection
from polyvox.fileio import atomic_write_text
from polyvox.models.meta import TextFrontEnd, read_member

FORMAT = 1


class BundleMeta(BaseModel):
    """``bundle.json``: what a serving bundle is, as one typed value (piper's ``PiperConfig`` in spirit)."""

    model_config = ConfigDict(frozen=True, extra="allow")  # a newer polyvox may add keys; they are kept

    format: int
    registered_model: str
    version: str | None  # the registry's version; None until promote registers the bundle
    data_version: str
    git_commit: str
    created: str
    text: TextFrontEnd
    audio: AudioSection
    speakers: list[str]
    onnx: bool
    summary: dict[str, Any]  # the candidate's figures in the evaluation
    decision: dict[str, Any]  # the gate's: promoted, rules
    # Every other file of the bundle: relative path → {"bytes", "sha256"} (:func:`bundle_damage`);
    # empty in bundles built before it was recorded.
    files: dict[str, dict[str, Any]] = {}
    # What synthesis needs installed besides polyvox, per member that needs anything: its teacher voice
    # (and package), its content model (name, package, version, sha256).
    requires: list[dict[str, Any]] = []

    @classmethod
    def read(cls, folder: Path) -> "BundleMeta":
        path = Path(folder) / "bundle.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no bundle.json — not a serving bundle (promote a candidate first)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ValueError(f"{path}: bundle format {found!r}, this polyvox reads {FORMAT}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ValueError(f"{path}: not a bundle's metadata ({problems})") from None

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / "bundle.json", json.dumps(self.model_dump(mode="json"), indent=1) + "\n")


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
    voice = json.loads((candidate / VOICE_FILE).read_text(encoding="utf-8"))
    member = read_member(next(iter(sorted((candidate / "members").iterdir()))))
    # what serving needs installed besides polyvox: teacher voices and content models (package, version,
    # sha256); they are not copied into the bundle (hundreds of MB), the loader names what is missing
    requires = [{k: m[k] for k in ("name", "teacher", "teacher_package", "content_model") if k in m}
                for m in voice["members"] if m.get("teacher") or m.get("content_model")]
    BundleMeta(format=FORMAT, registered_model=model_name, version=None, data_version=data_version,
               git_commit=git_commit, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), text=member.text,
               audio=member.audio, speakers=metrics.get("speakers", []), onnx=export_onnx, requires=requires,
               summary=metrics["systems"]["candidate"],
               decision={"promoted": decision["promoted"], "rules": decision["rules"]}).write(target)
    (target / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    (target / "MODEL_CARD.md").write_text(model_card({**voice, "language": member.text.language}, metrics,
                                                     decision, data_version, git_commit), encoding="utf-8")
    meta = BundleMeta.read(target)
    meta.model_copy(update={"files": file_records(target)}).write(target)
    return target


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder`` but bundle.json, by relative path."""
    from polyvox.fileio import sha256_file

    return {path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            for path in sorted(Path(folder).rglob("*")) if path.is_file() and path.name != "bundle.json"}


class FileCheck:
    """Checks a bundle's files against ``bundle.json``'s records: sizes on every call, the sha256 of
    a file again only when its size or modification time changed since it last matched (a poll
    every few seconds re-reads nothing that did not change)."""

    def __init__(self):
        self._verified: dict[Path, tuple[int, int, str]] = {}  # path → (size, mtime_ns, sha256) that matched

    def damage(self, folder: Path, meta: "BundleMeta") -> list[str]:
        """What is wrong with the files ``meta`` lists (empty when they are whole)."""
        from polyvox.fileio import sha256_file

        problems = []
        for name, record in sorted(meta.files.items()):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                problems.append(f"{name}: missing")
                continue
            if stat.st_size != record["bytes"]:
                problems.append(f"{name}: {stat.st_size} bytes, bundle.json says {record['bytes']}")
                continue
            known = self._verified.get(path)
            if known == (stat.st_size, stat.st_mtime_ns, record["sha256"]):
                continue
            if sha256_file(path) != record["sha256"]:
                problems.append(f"{name}: its sha256 differs from bundle.json's")
                continue
            self._verified[path] = (stat.st_size, stat.st_mtime_ns, record["sha256"])
        return problems


def load_bundle(folder: Path):
    """The bundle's voice and its :class:`BundleMeta`; safe loaders only, no training code, no MLflow."""
    from polyvox.runtime.voice import Voice

    meta = BundleMeta.read(folder)
    return Voice.load(Path(folder)), meta
