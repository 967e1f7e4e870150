"""Audio header facts (sample rate, channels, length) without decoding the audio.

``prepare`` reads every file once to hash it; the header is parsed from the first bytes of that
same read for WAV and FLAC (the formats corpora ship in), and ``soundfile`` is asked only for
anything else, or when a header looks odd. Decodability itself is checked later, by validate.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf


@dataclass(frozen=True)
class AudioHeader:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _flac(head: bytes) -> AudioHeader | None:
    # fLaC, then a metadata block header (1 byte type, 3 bytes length); STREAMINFO must come first.
    if len(head) < 42 or head[4] & 0x7F != 0:
        return None
    # STREAMINFO bytes 10..17: 20 bits sample rate, 3 bits channels-1, 5 bits bps-1, 36 bits samples.
    packed = int.from_bytes(head[18:26], "big")
    rate, channels, frames = packed >> 44, ((packed >> 41) & 0x7) + 1, packed & ((1 << 36) - 1)
    if rate == 0 or frames == 0:  # a streamed FLAC may leave the length unknown
        return None
    return AudioHeader(rate, channels, frames)


def _wav(head: bytes, file_size: int) -> AudioHeader | None:
    offset, fmt = 12, None
    while offset + 8 <= len(head):
        chunk_id, size = head[offset : offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(head):
            channels, rate, _, block_align = struct.unpack_from("<HIIH", head, body + 2)
            fmt = (rate, channels, block_align)
        elif chunk_id == b"data":
            if fmt is None or fmt[2] == 0 or fmt[0] == 0 or body + size > file_size:
                return None  # missing format, or a data size the file cannot hold: let libsndfile judge
            return AudioHeader(fmt[0], fmt[1], size // fmt[2])
        offset = body + size + (size & 1)
    return None


def parse_header(head: bytes, file_size: int) -> AudioHeader | None:
    """Header facts from a file's first bytes, or None when this fast path cannot tell."""
    if head[:4] == b"fLaC":
        return _flac(head)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav(head, file_size)
    return None


def read_header(path: Path) -> AudioHeader:
    """Header facts through libsndfile; raises ``ValueError`` naming the file when unreadable."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot read audio header: {exc}") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise ValueError(f"audio header gives sample rate {info.samplerate} and {info.channels} channels")
    return AudioHeader(info.samplerate, info.channels, info.frames)
