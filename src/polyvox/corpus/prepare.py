"""The ``prepare`` stage: any corpus (or the demo corpus) into ``data/raw``.

``data/raw`` holds ``manifest.parquet`` and the audio, reference audio and images, so that every
later stage (and DVC) works on one self-contained, versionable folder. Source files are only
ever read. Files arrive atomically (a hard link, or a copy renamed into place); a rerun reuses
what it finds there with the same content hash.

The per-file work is one read of each source (hash + header) and one link or copy: ``prepare``
on a corpus costs little more than hashing it (see ``benchmarks/prepare_kathleen.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from polyvox.config import Params
from polyvox.corpus.probe import parse_header, read_header
from polyvox.corpus.readers import read_corpus
from polyvox.corpus.schema import CorpusRow, safe_name, write_manifest
from polyvox.fileio import CHUNK, atomic_path, atomic_write_text, sha256_file
from polyvox.fingerprint import file_digest, read_stamp
from polyvox.progress import track
from polyvox.workspace import Workspace
from polyvox.tracking import tracked

log = logging.getLogger(__name__)

AUDIO_DIR, REFERENCE_DIR, IMAGE_DIR = "audio", "reference", "images"
# Files per unit of work handed to a worker: per-file task overhead would rival the work itself.
BATCH = 32


@dataclass(frozen=True)
class PrepareResult:
    manifest: Path
    corpus: Path
    format: str
    rows: int
    speakers: int
    parse_errors: int
    hours: float
    copied: int
    reused: int

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def summary(self) -> str:
        return (
            f"{self.rows} rows, {self.speakers} speakers, {self.hours:.2f} h of audio, "
            f"{self.parse_errors} rows with parse errors -> {self.manifest}"
        )


def _materialise(source: str, target: str, link: bool) -> None:
    """Put ``source``'s bytes at ``target`` atomically: a hard link when allowed, else a copy.

    A hard link costs no space and no time, and is safe because polyvox never writes a file in
    place (every write is a new file renamed over the old one), so the source is never touched.
    """
    if link:
        try:
            os.link(source, target)  # atomic: the name appears complete or not at all
            return
        except FileExistsError:
            tmp = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                os.link(source, tmp)
                os.replace(tmp, target)
                return
            except OSError:
                Path(tmp).unlink(missing_ok=True)
        except OSError:  # another filesystem, or not permitted (fs.protected_hardlinks)
            pass
    with atomic_path(Path(target)) as tmp_path:
        shutil.copyfile(source, tmp_path)


def _describe(record: dict[str, Any], head: bytes, size: int, target: str, digest: str) -> None:
    """The audio's hash and header (parsed from its first bytes, else read from ``target``) into ``record``."""
    header = parse_header(head, size)
    if header is None:
        try:
            header = read_header(Path(target))
        except ValueError as exc:
            record["probe_error"] = str(exc)
    record["source_hash"] = digest
    if header is not None:
        record.update(duration=header.duration, sample_rate=header.sample_rate, channels=header.channels)


def _ingest_audio(record: dict[str, Any], source: str, target: str, known_hash: str | None, link: bool) -> bool:
    """Hash ``source`` (header parsed from the same read), link or copy it to ``target``, fill
    ``record``. Returns whether the file was (re)materialised rather than reused."""
    with open(source, "rb") as handle:
        head = handle.read(CHUNK)
        hasher = hashlib.sha256(head)
        size = len(head)
        while len(head) == CHUNK and (chunk := handle.read(CHUNK)):
            hasher.update(chunk)
            size += len(chunk)
    digest = hasher.hexdigest()
    reuse = False
    if known_hash == digest:
        try:
            reuse = os.stat(target).st_size == size
        except FileNotFoundError:
            pass
    if not reuse:
        _materialise(source, target, link)
    _describe(record, head, size, target, digest)
    return not reuse


def _ingest_bytes(record: dict[str, Any], data: bytes, target: str, known_hash: str | None) -> bool:
    """:func:`_ingest_audio` for audio the manifest embeds: written to ``target`` atomically."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        reuse = known_hash == digest and os.stat(target).st_size == len(data)
    except FileNotFoundError:
        reuse = False
    if not reuse:
        with atomic_path(Path(target)) as tmp:
            Path(tmp).write_bytes(data)
    _describe(record, data[:CHUNK], len(data), target, digest)
    return not reuse


def _previous_hashes(manifest: Path) -> dict[str, str]:
    """raw-relative path -> sha256 from the last manifest, to skip unchanged files on rerun."""
    if not manifest.is_file():
        return {}
    try:
        table = pq.read_table(manifest, columns=["audio", "source_hash"])
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable previous manifest %s: %s", manifest, exc)
        return {}
    return {a: h for a, h in zip(table.column("audio").to_pylist(), table.column("source_hash").to_pylist()) if a and h}


def _audio_targets(rows: list[CorpusRow]) -> list[str | None]:
    """Deterministic, safe and unique raw-relative names for each row's audio."""
    taken: set[str] = set()
    targets: list[str | None] = []
    for index, row in enumerate(rows):
        if row.audio is None:
            targets.append(None)
            continue
        stem = f"{AUDIO_DIR}/{safe_name(row.speaker or 'unknown')}/{safe_name(row.id)}"
        suffix = row.audio.suffix.lower()
        name, copy = f"{stem}{suffix}", 0
        # duplicate ids, or ids that only differ in unsafe characters, get the first free ".N" name
        # (an id may itself look like one: "a.2", "a", "a" must still give three files)
        while name.casefold() in taken:
            copy += 1
            name = f"{stem}.{copy}{suffix}"
        taken.add(name.casefold())
        targets.append(name)
    return targets


def _copy_shared(paths: set[Path], folder: str, raw: Path, pool: ThreadPoolExecutor) -> dict[Path, tuple[str, str]]:
    """Reference audio and images, content-addressed (many rows share one speaker image), hashed
    once each here so later stages read the hash from the manifest instead of hashing again.
    Returns source -> (raw-relative path, sha256)."""

    def one(path: Path) -> tuple[Path, tuple[str, str]]:
        digest = sha256_file(path)
        relative = f"{folder}/{digest[:20]}{path.suffix.lower()}"
        if not (raw / relative).is_file():
            with atomic_path(raw / relative) as tmp:
                shutil.copyfile(path, tmp)
        return path, (relative, digest)

    return dict(pool.map(one, sorted(paths)))


def _remove_stale(raw: Path, keep: set[str]) -> int:
    removed = 0
    for folder in (AUDIO_DIR, REFERENCE_DIR, IMAGE_DIR):
        for directory, _, names in os.walk(raw / folder):
            relative_dir = os.path.relpath(directory, raw).replace(os.sep, "/")
            for name in names:
                if f"{relative_dir}/{name}" not in keep:
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


def ingest(
    rows: list[CorpusRow], corpus_root: Path, raw: Path, workers: int, link: bool = False
) -> tuple[list[dict[str, Any]], int, int]:
    """Put the rows' files into ``raw`` and build manifest records. Returns (records, copied, reused)."""
    raw.mkdir(parents=True, exist_ok=True)
    manifest = raw / "manifest.parquet"
    previous = _previous_hashes(manifest)
    targets = _audio_targets(rows)
    for parent in sorted({target.rpartition("/")[0] for target in targets if target}):
        (raw / parent).mkdir(parents=True, exist_ok=True)
    root_prefix, raw_prefix = f"{corpus_root}{os.sep}", f"{raw}{os.sep}"

    def one(index: int) -> tuple[dict[str, Any], bool]:
        row, target = rows[index], targets[index]
        source = None if row.audio is None else str(row.audio)
        record: dict[str, Any] = {
            "id": row.id,
            "speaker": row.speaker,
            "text": row.text,
            "normalized_text": row.normalized_text,
            "audio": target,
            "source_audio": source[len(root_prefix):] if source and source.startswith(root_prefix) else source,
            "source_file": row.source_file,
            "source_line": row.source_line,
            "parse_error": row.parse_error,
        }
        if row.audio_bytes is not None and target is not None:
            record["source_audio"] = f"{row.source_file} row {row.source_line}: embedded {row.audio.name}"
            return record, _ingest_bytes(record, row.audio_bytes, raw_prefix + target, previous.get(target))
        if source is None or target is None:
            return record, False
        try:
            return record, _ingest_audio(record, source, raw_prefix + target, previous.get(target), link)
        except OSError as exc:
            record["audio"] = None
            record["parse_error"] = "; ".join(filter(None, [row.parse_error, f"cannot read {record['source_audio']}: {exc}"]))
            return record, False

    def batch(start: int) -> list[tuple[dict[str, Any], bool]]:
        return [one(index) for index in range(start, min(start + BATCH, len(rows)))]

    starts = range(0, len(rows), BATCH)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shared = {
            column: _copy_shared({getattr(r, column) for r in rows if getattr(r, column) is not None}, folder, raw, pool)
            for column, folder in (("reference_audio", REFERENCE_DIR), ("image", IMAGE_DIR))
        }
        batches = pool.map(batch, starts) if workers > 1 else map(batch, starts)
        done = [item for part in track(batches, len(rows), "prepare: files", log, size=len) for item in part]
    records = [record for record, _ in done]
    for record, row in zip(records, rows):
        for column, hash_column in (("reference_audio", "reference_hash"), ("image", "image_hash")):
            path = getattr(row, column)
            record[column], record[hash_column] = shared[column][path] if path is not None else (None, None)
    copied = sum(materialised for _, materialised in done)
    reused = sum(1 for record in records if record["audio"] is not None) - copied
    keep = {record[c] for record in records for c in ("audio", "reference_audio", "image") if record[c]}
    removed = _remove_stale(raw, keep)
    if removed:
        log.info("removed %d stale files from %s", removed, raw)
    write_manifest(records, manifest)
    return records, copied, reused


@tracked("prepare", lambda ws: ws.raw_manifest)
def prepare(params: Params, workspace: Workspace, build_demo: Callable[..., Path] | None = None) -> PrepareResult:
    """Read the configured corpus (or build the demo corpus) and write ``data/raw``."""
    cfg = params.prepare
    if cfg.corpus is None:
        if build_demo is None:
            from polyvox.corpus.demo.build import build_demo_corpus as build_demo
        corpus = build_demo(params.demo, params.seed, workspace.demo_corpus)
        corpus_format = "manifest"
    else:
        corpus, corpus_format = workspace.resolve(cfg.corpus), cfg.format
    fmt, root, rows = read_corpus(corpus, corpus_format, speaker=cfg.speaker, vctk_mic=cfg.vctk_mic)
    log.info("read %d rows from %s (%s format)", len(rows), corpus, fmt)
    records, copied, reused = ingest(rows, root, workspace.raw, cfg.workers, link=cfg.link == "auto")
    result = PrepareResult(
        manifest=workspace.raw_manifest,
        corpus=corpus,
        format=fmt,
        rows=len(records),
        speakers=len({r["speaker"] for r in records if r["speaker"]}),
        parse_errors=sum(1 for r in records if r["parse_error"]),
        hours=sum(r.get("duration") or 0.0 for r in records) / 3600,
        copied=copied,
        reused=reused,
    )
    # The record of the run that made data/raw: a rerun that changed nothing leaves it (and so data/raw,
    # which DVC hashes whole) as it was; the log line says what this run did.
    record, digest = workspace.raw / "prepare.json", file_digest(workspace.raw_manifest)
    if (read_stamp(record) or {}).get("manifest_digest") != digest:
        atomic_write_text(record, json.dumps({**result.to_dict(), "manifest_digest": digest}, indent=2) + "\n")
    log.info(
        "prepare: %d rows, %d speakers, %.2f h, %d parse errors, %d materialised, %d reused -> %s",
        result.rows, result.speakers, result.hours, result.parse_errors, copied, reused, result.manifest,
    )
    return result
