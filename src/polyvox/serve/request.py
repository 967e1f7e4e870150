"""A synthesis request, parsed and checked with no web framework in sight: the form fields and the
bytes of the uploads in, a :class:`SynthesisRequest` or a :class:`RequestError` (an HTTP status and
a message naming the field) out. The service (:mod:`polyvox.serve.app`) only reads the body and
renders; everything a client can get wrong is decided here, so it is testable without a server."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from polyvox.config import ServeSection
from polyvox.runtime.voice import check_length_scale
from polyvox.text.scripts import UnreadableText

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
# What the uploads may be. The rates span telephone to studio audio (a 1 Hz WAV would be resampled
# 22050×); the image formats are the ones a person sends as a photo (not TIFF, DDS, ICO, PSD, ...).
AUDIO_RATES = (8000, 192000)
MAX_CHANNELS = 8
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# What a decoder raises on bytes crafted to break it, beyond its own error types: none of them is the
# service's fault, so each is the client's 415.
DECODE_ERRORS = (OSError, ValueError, TypeError, SyntaxError, NotImplementedError, EOFError, MemoryError,
                 RuntimeError, struct.error, IndexError, KeyError, ZeroDivisionError)


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
    # Uploads checked by their headers but not decoded yet (parse(..., decode=False)): decode() them
    # once a synthesis slot is held, so that in-flight decoding is bounded by serve.max_concurrent.
    reference_bytes: bytes | None = None
    image_bytes: bytes | None = None
    image_size: int = 0
    length_scale: float = 1.0  # every duration stretched by it (larger is slower)

    @property
    def by_name_only(self) -> bool:
        """Conditioned on a speaker name alone: what the ONNX runtime can render."""
        return self.speaker is not None and self.reference is None and self.picture is None \
            and self.reference_bytes is None and self.image_bytes is None

    def decode(self, settings: ServeSection) -> "SynthesisRequest":
        """This request with its uploads decoded (what parse(..., decode=True) returns)."""
        return dataclasses.replace(
            self, reference_bytes=None, image_bytes=None,
            reference=decode_audio(self.reference_bytes, settings) if self.reference_bytes is not None else self.reference,
            picture=decode_image(self.image_bytes, self.image_size, settings) if self.image_bytes is not None
            else self.picture)


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


def audio_header(data: bytes, settings: ServeSection):
    """The upload's soundfile header, checked (format, rate, channels, decoded length) before any
    sample is decoded."""
    try:
        info = sf.info(io.BytesIO(data))
    except DECODE_ERRORS as exc:
        raise RequestError(415, f"reference_audio is not audio soundfile can read (WAV, FLAC, OGG): {_cut(exc)}") \
            from None
    if not AUDIO_RATES[0] <= info.samplerate <= AUDIO_RATES[1] or not 1 <= info.channels <= MAX_CHANNELS:
        raise RequestError(422, f"reference_audio: {info.samplerate} Hz, {info.channels} channel(s); expected "
                                f"{AUDIO_RATES[0]}-{AUDIO_RATES[1]} Hz and 1-{MAX_CHANNELS} channels")
    if info.frames > settings.max_reference_seconds * info.samplerate:
        raise RequestError(413, f"reference_audio decodes to {info.frames / info.samplerate:.1f} s; the limit is "
                                f"{settings.max_reference_seconds} s (serve.max_reference_seconds)")
    return info


# Samples decoded at a time: the channels are averaged block by block, so an 8-channel upload never
# holds more than one block of all its channels (8 channels × 192 kHz × 30 s would be 184 MB at once).
DECODE_BLOCK = 1 << 16


def decode_audio(data: bytes, settings: ServeSection) -> tuple[np.ndarray, int]:
    """The upload's mono signal and rate; its header is checked before a sample is decoded."""
    info = audio_header(data, settings)
    mono, filled = np.empty(info.frames, dtype=np.float32), 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio:
            for block in audio.blocks(blocksize=DECODE_BLOCK, dtype="float32", always_2d=True, frames=info.frames):
                mono[filled:filled + len(block)] = block.mean(axis=1)
                filled += len(block)
    except DECODE_ERRORS as exc:
        raise RequestError(415, f"reference_audio does not decode: {_cut(exc)}") from None
    signal, rate = mono[:filled], info.samplerate
    if signal.shape[0] < rate // 10 or not np.isfinite(signal).all():
        raise RequestError(422, "reference_audio must hold at least 0.1 s of finite samples")
    return signal, rate


def _cut(exc: Exception, limit: int = 200) -> str:
    """A decoder's message for the client: its text only, cut short (never an object's repr)."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-f]+>", "the upload", str(exc))
    return text[:limit] + ("…" if len(text) > limit else "")


def decode_image(data: bytes, size: int, settings: ServeSection, header_only: bool = False) -> np.ndarray | None:
    """The upload as the model's image tensor; its format and size are checked before it is decoded
    (``header_only``: only checked, None returned)."""
    from PIL import Image

    from polyvox.frontends.image import picture_tensor

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as picture:  # reads the header only
            width, height = picture.size
            if width * height > settings.max_image_pixels:
                raise RequestError(413, f"image is {width}×{height} pixels; the limit is {settings.max_image_pixels} "
                                        "(serve.max_image_pixels)")
            return None if header_only else picture_tensor(picture, size)  # the same front-end as training's images
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"image is too large to decode: {_cut(exc)}") from None
    except DECODE_ERRORS as exc:
        raise RequestError(415, f"image is not a picture in {', '.join(IMAGE_FORMATS)}: {_cut(exc)}") from None


def parse(voice, settings: ServeSection, text: str, speaker: str | None, stream: bool,
          reference_audio: bytes | None, image: bytes | None, decode: bool = True,
          length_scale: float = 1.0) -> SynthesisRequest:
    """Check a request against the voice it will be rendered by (its speakers, its text front-end,
    whether it takes images) and the service's limits; decode its uploads (``decode=False``: check
    their headers only, and leave the decoding to :meth:`SynthesisRequest.decode`)."""
    if len(text) > settings.max_text_chars:
        raise RequestError(413, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
    sentences = split_sentences(text)
    if not sentences:
        raise RequestError(422, "text is empty")
    try:
        check_length_scale(length_scale)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None
    if len(sentences) > settings.max_sentences:
        raise RequestError(413, f"text has {len(sentences)} sentences; the limit is {settings.max_sentences}")
    front_end = voice.members[0].synthesizer
    for sentence in sentences:  # refused before a stream starts, while a 4xx can still be sent
        try:
            tokens = front_end.tokens(sentence)
        except UnreadableText as exc:
            raise RequestError(422, str(exc)) from None
        except ValueError:
            raise RequestError(422, f"nothing pronounceable in the sentence {sentence[:80]!r}") from None
        count = tokens.shape[-1]  # (1, tokens)
        if count > settings.max_sentence_tokens:  # normalisation can multiply text ("1999" → four words)
            raise RequestError(413, f"the sentence {sentence[:40]!r}… is {count} phoneme tokens once normalised; the "
                                    f"limit is {settings.max_sentence_tokens} (split it)")
    speaker = speaker or None
    if speaker is not None and speaker not in voice.speakers:
        shown = speaker[:80] + ("…" if len(speaker) > 80 else "")
        raise RequestError(422, f"unknown speaker {shown!r}; known: {voice.speakers}")
    audio_bytes = check_upload(reference_audio, "reference_audio", settings)
    image_bytes = check_upload(image, "image", settings)
    if image_bytes is not None and not voice.takes_images:
        raise RequestError(422, "this voice takes no image conditioning")
    if audio_bytes is not None:
        audio_header(audio_bytes, settings)
    if image_bytes is not None:
        decode_image(image_bytes, front_end.image_size, settings, header_only=True)
    request = SynthesisRequest(sentences=sentences, speaker=speaker, stream=stream, reference=None, picture=None,
                               reference_bytes=audio_bytes, image_bytes=image_bytes, image_size=front_end.image_size,
                               length_scale=length_scale)
    return request.decode(settings) if decode else request
