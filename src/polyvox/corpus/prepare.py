"""The ``prepare`` stage: any corpus (or the demo corpus) into ``data/raw``.

``data/raw`` holds ``manifest.parquet`` and copies of the audio, reference audio and images, so
that every later stage (and DVC) works on one self-contained, versionable folder. Source files
are only ever read. Copies are atomic; a rerun reuses copies whose content hash is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import soundfile as sf

from polyvox.config import Params
from polyvox.corpus.readers import read_corpus
from polyvox.corpus.schema import CorpusRow, safe_name, write_manifest
from polyvox.fileio import CHUNK, atomic_path, atomic_write_text, sha256_file
from polyvox.progress import track
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

AUDIO_DIR, REFERENCE_DIR, IMAGE_DIR = "audio", "reference", "images"


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


def _hash_and_copy(source: Path, target: Path, known_hash: str | None) -> tuple[str, bool]:
    """Hash ``source``; copy it to ``target`` unless ``target`` already holds that content.

    Returns (sha256, copied). The copy is made in the same pass as the hash, so each source byte
    is read once.
    """
    if known_hash is not None and target.is_file() and target.stat().st_size == source.stat().st_size:
        digest = sha256_file(source)
        if digest == known_hash:
            return digest, False
    hasher = hashlib.sha256()
    with atomic_path(target) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
            dst.write(chunk)
    return hasher.hexdigest(), True


def _probe(path: Path) -> tuple[float | None, int | None, int | None, str | None]:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return None, None, None, f"cannot read audio header: {exc}"
    if info.samplerate <= 0:
        return None, None, None, f"audio header gives sample rate {info.samplerate}"
    return info.frames / info.samplerate, info.samplerate, info.channels, None


def _previous_hashes(manifest: Path) -> dict[str, str]:
    """raw-relative path -> sha256 from the last manifest, to skip unchanged copies on rerun."""
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
        name = f"{stem}{row.audio.suffix.lower()}"
        if name in taken:  # duplicate ids, or ids that only differ in unsafe characters
            name = f"{stem}.{index}{row.audio.suffix.lower()}"
        taken.add(name)
        targets.append(name)
    return targets


def _copy_shared(paths: set[Path], folder: str, raw: Path, pool: ThreadPoolExecutor) -> dict[Path, str]:
    """Copy reference audio / images, content-addressed (many rows share one speaker image)."""

    def one(path: Path) -> tuple[Path, str]:
        digest = sha256_file(path)
        relative = f"{folder}/{digest[:20]}{path.suffix.lower()}"
        target = raw / relative
        if not target.is_file():
            with atomic_path(target) as tmp:
                tmp.write_bytes(path.read_bytes())
        return path, relative

    return dict(pool.map(one, sorted(paths)))


def _remove_stale(raw: Path, keep: set[str]) -> int:
    removed = 0
    for folder in (AUDIO_DIR, REFERENCE_DIR, IMAGE_DIR):
        for path in sorted((raw / folder).rglob("*")):
            if path.is_file() and path.relative_to(raw).as_posix() not in keep:
                path.unlink()
                removed += 1
    return removed


def ingest(rows: list[CorpusRow], corpus_root: Path, raw: Path, workers: int) -> tuple[list[dict[str, Any]], int, int]:
    """Copy the rows' files into ``raw`` and build manifest records. Returns (records, copied, reused)."""
    raw.mkdir(parents=True, exist_ok=True)
    manifest = raw / "manifest.parquet"
    previous = _previous_hashes(manifest)
    targets = _audio_targets(rows)

    def relative_source(path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return path.relative_to(corpus_root).as_posix()
        except ValueError:
            return path.as_posix()

    def one(index: int) -> dict[str, Any]:
        row, target = rows[index], targets[index]
        record: dict[str, Any] = {
            "id": row.id,
            "speaker": row.speaker,
            "text": row.text,
            "normalized_text": row.normalized_text,
            "audio": target,
            "source_audio": relative_source(row.audio),
            "source_file": row.source_file,
            "source_line": row.source_line,
            "parse_error": row.parse_error,
            "copied": False,
        }
        if row.audio is not None and target is not None:
            try:
                digest, copied = _hash_and_copy(row.audio, raw / target, previous.get(target))
            except OSError as exc:
                record["audio"] = None
                record["parse_error"] = "; ".join(filter(None, [row.parse_error, f"cannot read {record['source_audio']}: {exc}"]))
                return record
            duration, rate, channels, problem = _probe(raw / target)
            record.update(source_hash=digest, duration=duration, sample_rate=rate, channels=channels, probe_error=problem, copied=copied)
        return record

    with ThreadPoolExecutor(max_workers=workers) as pool:
        shared: dict[str, dict[Path, str]] = {}
        for column, folder in (("reference_audio", REFERENCE_DIR), ("image", IMAGE_DIR)):
            paths = {getattr(row, column) for row in rows if getattr(row, column) is not None}
            shared[column] = _copy_shared(paths, folder, raw, pool)
        records = list(track(pool.map(one, range(len(rows))), len(rows), "prepare: copy + hash", log))
    for record, row in zip(records, rows):
        for column in ("reference_audio", "image"):
            path = getattr(row, column)
            record[column] = shared[column][path] if path is not None else None
    copied = sum(record.pop("copied") for record in records)
    reused = sum(1 for record in records if record["audio"] is not None) - copied
    keep = {record[c] for record in records for c in ("audio", "reference_audio", "image") if record[c]}
    removed = _remove_stale(raw, keep)
    if removed:
        log.info("removed %d stale files from %s", removed, raw)
    write_manifest(records, manifest)
    return records, copied, reused


def prepare(params: Params, workspace: Workspace, build_demo: Callable[..., Path] | None = None) -> PrepareResult:
    """Read the configured corpus (or build the demo corpus) and write ``data/raw``."""
    cfg = params.prepare
    if cfg.corpus is None:
        if build_demo is None:
            from polyvox.corpus.demo.build import build_demo_corpus as build_demo
        corpus = build_demo(params.demo, params.seed, workspace.demo_corpus, cfg.workers)
        corpus_format = "manifest"
    else:
        corpus, corpus_format = workspace.resolve(cfg.corpus), cfg.format
    fmt, root, rows = read_corpus(corpus, corpus_format, speaker=cfg.speaker, vctk_mic=cfg.vctk_mic)
    log.info("read %d rows from %s (%s format)", len(rows), corpus, fmt)
    records, copied, reused = ingest(rows, root, workspace.raw, cfg.workers)
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
    atomic_write_text(workspace.raw / "prepare.json", json.dumps(result.to_dict(), indent=2) + "\n")
    log.info(
        "prepare: %d rows, %d speakers, %.2f h, %d parse errors, %d copied, %d reused -> %s",
        result.rows, result.speakers, result.hours, result.parse_errors, copied, reused, result.manifest,
    )
    return result
