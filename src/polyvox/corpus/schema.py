"""The one manifest schema every corpus format is normalised into.

Readers yield :class:`CorpusRow` (paths still pointing into the source corpus); ``prepare``
turns them into manifest records (paths relative to ``data/raw``) stored as Parquet with
:data:`MANIFEST_SCHEMA`. A row the reader could not parse is kept with ``parse_error`` set, so
that validation quarantines it with a reason instead of it silently disappearing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.fileio import atomic_path

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("speaker", pa.string()),
        pa.field("text", pa.string()),
        # A normalised transcript shipped by the corpus itself (LJSpeech's third column).
        pa.field("normalized_text", pa.string()),
        # Paths relative to data/raw.
        pa.field("audio", pa.string()),
        pa.field("reference_audio", pa.string()),
        pa.field("image", pa.string()),
        # Provenance: where the row came from, relative to the corpus root.
        pa.field("source_audio", pa.string()),
        pa.field("source_hash", pa.string()),  # sha256 of the source audio bytes
        pa.field("reference_hash", pa.string()),  # sha256 of the reference audio, when there is one
        pa.field("image_hash", pa.string()),  # sha256 of the image, when there is one
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("source_line", pa.int64()),
        # Read from the audio header when it can be read.
        pa.field("duration", pa.float64()),
        pa.field("sample_rate", pa.int64()),
        pa.field("channels", pa.int64()),
        pa.field("parse_error", pa.string()),
        pa.field("probe_error", pa.string()),
    ]
)
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
FORMATS = ("ljspeech", "vctk", "manifest")


class CorpusError(ValueError):
    """A corpus that cannot be read at all (not a bad row: bad rows are carried)."""


@dataclass
class CorpusRow:
    """One utterance as a reader found it; paths are absolute, inside the corpus root."""

    id: str
    speaker: str | None
    text: str | None
    source_file: str
    source_line: int | None = None
    normalized_text: str | None = None
    audio: Path | None = None
    reference_audio: Path | None = None
    image: Path | None = None
    errors: list[str] = field(default_factory=list)
    # The audio itself, when the corpus embeds it (a Parquet manifest in the Hugging Face layout:
    # audio as a struct {bytes, path}); ``audio`` is then only its name, for the suffix.
    audio_bytes: bytes | None = None

    @property
    def parse_error(self) -> str | None:
        return "; ".join(self.errors) if self.errors else None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, limit: int = 120) -> str:
    """A filesystem-safe rendering of an id or speaker name (never empty, never '.' or '..')."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned[:limit]


def is_safe_id(name: str) -> bool:
    return bool(name) and safe_name(name) == name


def write_manifest(records: list[dict[str, Any]], path: Path) -> None:
    """Write records as Parquet with the manifest schema, atomically and byte-deterministically."""
    columns = {name: [record.get(name) for record in records] for name in MANIFEST_COLUMNS}
    table = pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)
    with atomic_path(path, keep_unchanged=True) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def read_manifest(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CorpusError(f"{path}: cannot read manifest: {exc}") from None
    missing = [name for name in MANIFEST_COLUMNS if name not in table.column_names]
    if missing:
        raise CorpusError(f"{path}: not a polyvox manifest, missing columns {missing}")
    return table
