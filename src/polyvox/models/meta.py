"""``model.json`` and ``vocoder.json``: what a trained member or vocoder folder says about itself, as
one typed value each (as piper's ``PiperConfig`` is for its ``.onnx.json``). The trainers write them;
the synthesiser, the bundle builder, the warm starts and pretrain's checks read them, all through
:class:`MemberMeta` and :class:`VocoderMeta`, which also name the files. A trained vocoder loads here
too (:func:`load_vocoder`), beside the file that says what it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from polyvox.config import AudioSection
from polyvox.fileio import atomic_write_text, chosen_checkpoint
from polyvox.models.acoustic import ModelConfig
from polyvox.models.converter import ConverterConfig
from polyvox.models.neural_vocoder import VocoderConfig, Vocos

FILE = "model.json"


class TextFrontEnd(BaseModel):
    model_config = ConfigDict(frozen=True)

    language: str
    phonemizer: str


def _read(cls, folder: Path, what: str):
    """``cls`` from ``folder/cls.FILE``; a ValueError naming the file and what is wrong with it."""
    path = Path(folder) / cls.FILE
    try:
        return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file — not a trained {what} folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"{path}: not a {what}'s metadata ({problems})") from None


class MemberMeta(BaseModel):
    # extra keys are kept: a newer polyvox may add some, and an older one still reads the rest
    model_config = ConfigDict(frozen=True, extra="allow")
    FILE: ClassVar[str] = FILE

    member: str
    seed: int
    conditioning: Literal["audio", "audio+image"] = "audio+image"
    model: ModelConfig
    init_from: str | None = None
    init_sha256: str | None = None  # which base, by content (a copy of the checkpoint has the same hash)
    symbols: list[str]
    speakers: list[str]
    audio: AudioSection
    image_size: int
    text: TextFrontEnd
    teacher: dict[str, Any] | None = None  # what synthesis must render the same way (features.teacher_voice)

    @classmethod
    def read(cls, folder: Path) -> "MemberMeta":
        """``folder/model.json``; a ValueError naming the file and what is wrong with it."""
        return _read(cls, folder, "member")

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / FILE, json.dumps(self.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")


class ConverterMeta(BaseModel):
    """``model.json`` of a conversion member (``kind: convert``): its decoder, the content features it
    reads (settings and the model that makes them, by package and sha256) and the teacher voice that
    says the words at synthesis."""

    model_config = ConfigDict(frozen=True, extra="allow")
    FILE: ClassVar[str] = FILE

    member: str
    seed: int
    kind: Literal["convert"] = "convert"
    conditioning: Literal["audio", "audio+image"] = "audio+image"
    model: ConverterConfig
    init_from: str | None = None
    speakers: list[str]
    audio: AudioSection
    image_size: int
    text: TextFrontEnd
    content: dict[str, Any]  # polyvox.frontends.content.ContentSettings
    content_model: dict[str, Any]  # name, package, version, sha256
    teacher: dict[str, Any]  # polyvox.frontends.teacher.TeacherSettings: the voice that says the words
    # speaker → (log-F0 mean, std) the pitch input was z-scored with (absent in converters trained before it)
    pitch: dict[str, list[float]] | None = None
    # speaker → the teacher's length_scale that matches that speaker's pace (their takes' seconds over
    # the teacher's on the same texts); absent: the teacher's own pace
    tempo: dict[str, float] | None = None
    # tracked: a harmonic vocoder reads the pitch in this member's mel; given: it is handed the contour
    # (absent in converters trained before it: tracked, the measured better)
    vocoder_pitch: Literal["tracked", "given"] = "tracked"

    @classmethod
    def read(cls, folder: Path) -> "ConverterMeta":
        return _read(cls, folder, "converter")

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / FILE, json.dumps(self.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")


def member_kind(folder: Path) -> str | None:
    """``convert`` or ``acoustic`` for a member folder (by its model.json), None without a readable one."""
    try:
        data = json.loads((Path(folder) / FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("kind", "acoustic") if isinstance(data, dict) else None


def read_member(folder: Path) -> "MemberMeta | ConverterMeta":
    """The model.json of a member folder of either kind."""
    return ConverterMeta.read(folder) if member_kind(folder) == "convert" else MemberMeta.read(folder)


class VocoderMeta(BaseModel):
    """``vocoder.json`` of a trained vocoder: its architecture, the audio it was trained on (the mel it
    expects: :func:`polyvox.signal.mel.mel_differences`) and the section it was trained with."""

    model_config = ConfigDict(frozen=True, extra="allow")
    FILE: ClassVar[str] = "vocoder.json"

    name: str
    seed: int | None = None
    model: VocoderConfig
    audio: AudioSection | None = None  # vocoders written before it was recorded: the model's settings only
    train: dict[str, Any] | None = None

    @classmethod
    def read(cls, folder: Path) -> "VocoderMeta":
        """``folder/vocoder.json``; a ValueError naming the file and what is wrong with it."""
        return _read(cls, folder, "vocoder")

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / self.FILE, json.dumps(self.model_dump(mode="json"), indent=1) + "\n")

    def mel(self) -> dict[str, Any]:
        """The audio settings the vocoder expects its mels in (without f_min/f_max when unrecorded)."""
        if self.audio is not None:
            return self.audio.model_dump()
        return {k: getattr(self.model, k) for k in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")}


def vocoder_checkpoint(folder: str | Path) -> tuple[VocoderConfig, Path]:
    """(config, checkpoint) of a trained vocoder's folder: ``vocoder.json`` and ``best.pt``, else ``last.pt``."""
    folder = Path(folder)
    checkpoint = chosen_checkpoint(folder)
    if not (folder / VocoderMeta.FILE).is_file() or checkpoint is None:
        raise FileNotFoundError(f"{folder}: a vocoder folder holds {VocoderMeta.FILE} and best.pt or last.pt")
    return VocoderMeta.read(folder).model, checkpoint


def load_vocoder(folder: str | Path, device: str | torch.device = "cpu") -> Vocos:
    """A trained vocoder from its folder (:func:`vocoder_checkpoint`), in eval mode."""
    cfg, checkpoint = vocoder_checkpoint(folder)
    model = Vocos(cfg)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.to(device).eval()
