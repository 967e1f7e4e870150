"""``model.json``: what a trained member folder says about itself, as one typed value (as piper's
``PiperConfig`` is for its ``.onnx.json``). The trainer writes it; the synthesiser, the bundle
builder, the warm start and pretrain's checks read it, all through :class:`MemberMeta`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from polyvox.config import AudioConfig
from polyvox.fileio import atomic_write_text
from polyvox.models.acoustic import ModelConfig

FILE = "model.json"


class TextFrontEnd(BaseModel):
    model_config = ConfigDict(frozen=True)

    language: str
    phonemizer: str


class MemberMeta(BaseModel):
    # extra keys are kept: a newer polyvox may add some, and an older one still reads the rest
    model_config = ConfigDict(frozen=True, extra="allow")

    member: str
    seed: int
    conditioning: Literal["audio", "audio+image"] = "audio+image"
    model: ModelConfig
    init_from: str | None = None
    init_sha256: str | None = None  # which base, by content (a copy of the checkpoint has the same hash)
    symbols: list[str]
    speakers: list[str]
    audio: AudioConfig
    image_size: int
    text: TextFrontEnd
    teacher: dict[str, Any] | None = None  # what synthesis must render the same way (features.teacher_voice)

    @classmethod
    def read(cls, folder: Path) -> "MemberMeta":
        """``folder/model.json``; a ValueError naming the file and what is wrong with it."""
        path = Path(folder) / FILE
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file — not a trained member folder") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ValueError(f"{path}: not a member's metadata ({problems})") from None

    def write(self, folder: Path) -> None:
        atomic_write_text(Path(folder) / FILE, json.dumps(self.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")
