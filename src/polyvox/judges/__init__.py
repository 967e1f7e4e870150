"""The judge of intelligibility: which ASR turns audio into the words that WER and CER count.

One :class:`Judge` (``evaluate.asr``, ``evaluate.whisper_model``, ``clean.language``) serves every
place intelligibility is measured: evaluate, the ensemble's rerank, validate's transcript check,
and so the gate. ``whisper`` (faster-whisper, :mod:`polyvox.judges.whisper`) is the judge;
``pocketsphinx`` (:mod:`polyvox.judges.pocketsphinx`) is the fallback, and with ``whisper`` a second
opinion that evaluate scores beside it. A judge is a small frozen value, so it travels to worker
processes with the work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from polyvox.config import ConfigError

if TYPE_CHECKING:
    from polyvox.config import Params

# espeak-ng language codes whose Whisper code is not their first part
_WHISPER_CODES = {"cmn": "zh", "nb": "no"}


def whisper_language(language: str) -> str:
    """Whisper's code for an espeak-ng language (``clean.language``): ``en-us`` → ``en``."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    code = language.lower().replace("_", "-")
    code = _WHISPER_CODES.get(code, code.split("-")[0])
    if code not in _LANGUAGE_CODES:
        raise ConfigError(f"clean.language {language!r}: Whisper knows no language {code!r}; "
                          "set evaluate.asr: pocketsphinx (English only) or another clean.language")
    return code


@dataclass(frozen=True)
class Judge:
    asr: Literal["whisper", "pocketsphinx"]
    whisper_model: str | None = None  # a faster-whisper model folder (absolute); None: the shipped base
    language: str = "en"  # Whisper's language code; pocketsphinx hears US English only

    @classmethod
    def from_params(cls, params: Params) -> "Judge":
        cfg = params.evaluate
        if cfg.asr == "pocketsphinx":
            return POCKETSPHINX
        return cls("whisper", judge_folder(cfg.whisper_model), whisper_language(params.clean.language))

    @property
    def name(self) -> str:
        """For labels: ``whisper-base``, ``whisper:<folder>`` or ``pocketsphinx``."""
        if self.asr == "pocketsphinx":
            return "pocketsphinx"
        if self.whisper_model is None:
            return "whisper-base"
        from polyvox.frontends.content import shipped_name

        return shipped_name(Path(self.whisper_model)) or f"whisper:{Path(self.whisper_model).name}"

    def second_opinion(self) -> "Judge | None":
        """pocketsphinx beside Whisper, so figures stay comparable with runs judged before Whisper."""
        return POCKETSPHINX if self.asr == "whisper" else None

    def model_folder(self) -> Path:
        from polyvox.judges.whisper import model_folder

        return model_folder(self.whisper_model)

    def model_sha256(self) -> str | None:
        """sha256 of the Whisper model.bin this judge hears with (None for pocketsphinx)."""
        if self.asr == "pocketsphinx":
            return None
        from polyvox.judges.whisper import model_sha256

        return model_sha256(self.whisper_model)

    def identity(self) -> dict:
        """Everything that shapes what this judge hears, for stage fingerprints and cache keys."""
        if self.asr == "pocketsphinx":
            return {"asr": "pocketsphinx", "version": version("pocketsphinx")}
        from polyvox.judges.whisper import DECODING, folder_identity

        return {"asr": "whisper", **folder_identity(self.whisper_model), "language": self.language,
                "decoding": DECODING, "faster_whisper": version("faster-whisper")}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Judge":
        """The inverse of :meth:`to_dict` (a rerank voice's ``voice.json``)."""
        if not isinstance(data, dict) or data.get("asr") not in ("whisper", "pocketsphinx") or set(data) - {
                "asr", "whisper_model", "language"}:
            raise ValueError(f"not a judge: {data!r} (expected asr whisper|pocketsphinx, whisper_model, language)")
        return cls(**data)


POCKETSPHINX = Judge("pocketsphinx", None, "en")


def judge_folder(configured: str | Path | None) -> str | None:
    """``evaluate.whisper_model`` as the judge's folder: None (the shipped base), the name of a Whisper
    model shipped in a package (``whisper-tiny.en``: :data:`polyvox.frontends.content.CONTENT_MODELS`),
    or a folder (absolute once resolved)."""
    if configured is None:
        return None
    from polyvox.frontends.content import CONTENT_MODELS

    if str(configured) in CONTENT_MODELS and str(configured) != "whisper-base":
        return str(CONTENT_MODELS[str(configured)].folder())
    return str(Path(configured).resolve())


def _threads() -> int:
    # torch's count: 1 in a worker of polyvox.parallel's pool, all cores in a main process
    import torch

    return torch.get_num_threads()


def recognize(signal: np.ndarray, rate: int, judge: Judge) -> str:
    """What ``judge`` hears in mono float audio in [-1, 1]."""
    if judge.asr == "pocketsphinx":
        from polyvox.judges.pocketsphinx import recognize as pocketsphinx

        return pocketsphinx(signal, rate)
    from polyvox.judges.whisper import transcribe

    return transcribe(signal, rate, judge.model_folder(), judge.language, _threads())
