"""Content-addressed outputs: a key from input content + the params that shape the output + a code
version, and a small Parquet index of what was computed under each key.

A stage looks each input's key up in its index: present (and its file on disk) means reuse;
absent means compute. Changing a knob changes the keys of exactly the outputs it affects.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.fileio import atomic_path


def content_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def sharded(folder: str, key: str, suffix: str) -> str:
    """``folder/ab/abcdef….suffix``: a relative path that keeps directories small."""
    return f"{folder}/{key[:2]}/{key}{suffix}"


def load_index(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    return {row.pop("key"): row for row in pq.read_table(path).to_pylist()}


def save_index(index: dict[str, dict[str, Any]], path: Path) -> None:
    """Write the index sorted by key, so unchanged content gives unchanged bytes."""
    rows = [{"key": key, **index[key]} for key in sorted(index)]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"key": pa.array([], pa.string())})
    with atomic_path(path, keep_unchanged=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")
