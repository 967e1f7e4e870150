"""A synthesis request, parsed and checked with no web framework in sight: the form fields and the
bytes of the uploads in, a :class:`SynthesisRequest` or a :class:`RequestError` (an HTTP status and
a message naming the field) out. The service (:mod:`polyvox.serve.app`) only reads the body and
renders; everything a client can get wrong is decided here, so it is testable without a server."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from polyvox.config import ServeSection

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


class RequestError(ValueError):
    """What is wrong with a request, as the HTTP status and message the client gets."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class SynthesisRequest:
    sentences: list[str]  # spoken one after another, with serve.sentence_pause between them
    speaker: str | None
    reference: tuple[np.ndarray, int] | None  # (mono signal, rate) of reference_audio
    picture: np.ndarray | None  # (3, size, size) float32 in [0, 1]
    stream: bool

    @property
    def by_name_only(self) -> bool:
        """Conditioned on a speaker name alone: what the ONNX runtime can render."""
        return self.speaker is not None and self.reference is None and self.picture is None


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text.strip()) if s.strip()]


def check_upload(data: bytes | None, kind: str, settings: ServeSection) -> bytes | None:
    """``data`` read with one byte past the limit (so that an oversized upload shows)."""
    if data is None:
        return None
    if len(data) > settings.max_upload_mb * 2**20:
        raise RequestError(413, f"{kind} upload is larger than {settings.max_upload_mb} MB")
    if not data:
        raise RequestError(422, f"{kind} upload is empty")
    return data


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    try:
        signal, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise RequestError(415, f"reference_audio is not audio soundfile can read (WAV, FLAC, OGG): {exc}") from None
    if signal.shape[0] < rate // 10 or not np.isfinite(signal).all():
        raise RequestError(422, "reference_audio must hold at least 0.1 s of finite samples")
    return signal.mean(axis=1), rate


def decode_image(data: bytes, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from polyvox.frontends.image import image_tensor

    try:
        return image_tensor(io.BytesIO(data), size)  # the same front-end as training's images
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(415, f"image is not a picture Pillow can read (PNG, JPEG, WebP): {exc}") from None


def parse(voice, settings: ServeSection, text: str, speaker: str | None, stream: bool,
          reference_audio: bytes | None, image: bytes | None) -> SynthesisRequest:
    """Check a request against the voice it will be rendered by (its speakers, its text front-end,
    whether it takes images) and the service's limits; decode its uploads."""
    if len(text) > settings.max_text_chars:
        raise RequestError(413, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
    sentences = split_sentences(text)
    if not sentences:
        raise RequestError(422, "text holds nothing to say")
    front_end = voice.members[0].synthesizer
    for sentence in sentences:  # refused before a stream starts, while a 4xx can still be sent
        try:
            front_end.tokens(sentence)
        except ValueError:
            raise RequestError(422, f"nothing pronounceable in the sentence {sentence[:80]!r}") from None
    speaker = speaker or None
    if speaker is not None and speaker not in voice.speakers:
        raise RequestError(422, f"unknown speaker {speaker!r}; known: {voice.speakers}")
    audio_bytes = check_upload(reference_audio, "reference_audio", settings)
    image_bytes = check_upload(image, "image", settings)
    if image_bytes is not None and not voice.takes_images:
        raise RequestError(422, "this voice takes no image conditioning")
    return SynthesisRequest(
        sentences=sentences, speaker=speaker, stream=stream,
        reference=decode_audio(audio_bytes) if audio_bytes is not None else None,
        picture=decode_image(image_bytes, front_end.image_size) if image_bytes is not None else None)
