"""Corpus readers: LJSpeech-style, VCTK-style and CSV/Parquet manifests.

Every reader returns a list of :class:`CorpusRow` in a deterministic order and never raises on a
bad row: a broken line, undecodable bytes, a missing or out-of-corpus file become a row with
``errors`` set. Only a corpus that cannot be read at all (no metadata file, a manifest without
its required columns) raises :class:`CorpusError`.
"""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.corpus.schema import FORMATS, CorpusError, CorpusRow, is_safe_id

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MANIFEST_REQUIRED = ("id", "speaker", "text", "audio")
MANIFEST_OPTIONAL = ("reference_audio", "image")
MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")


def _decode(raw: bytes, where: str, errors: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errors.append(f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
        return raw.decode("utf-8", errors="replace")


def _inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it stays inside ``root`` (checked lexically, so symlinked data works)."""
    if not relative or os.path.isabs(relative) or "\x00" in relative:
        return None
    joined = os.path.normpath(os.path.join(root, relative))
    root_str = os.path.normpath(root)
    if joined != root_str and joined.startswith(root_str + os.sep):
        return Path(joined)
    return None


def _resolve_file(root: Path, relative: str, column: str, errors: list[str]) -> Path | None:
    path = _inside(root, relative)
    if path is None:
        errors.append(f"{column} path {relative!r} is absolute or escapes the corpus root")
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        errors.append(f"{column} file not found: {relative}")
        return None
    except OSError as exc:  # a name too long for the filesystem, a loop of links, ...
        errors.append(f"{column} path {relative[:80]!r}…: {exc.strerror or exc}")
        return None
    return path  # whether it is a regular file inside the corpus is checked for every reader at once


def contained(root: Path, path: Path) -> str | None:
    """Why ``path`` must not be read as a corpus file, or None: it must resolve (links followed)
    inside the corpus root — a link within the corpus is fine, one to ~/secret or / is not — and
    be a regular file (a FIFO would block the reader forever, a device or folder is no audio)."""
    try:
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            return f"{path.relative_to(root) if path.is_relative_to(root) else path} resolves outside the corpus"
        mode = os.stat(real).st_mode
    except OSError as exc:
        return f"{path.name[:80]}: {exc.strerror or exc}"
    if not stat.S_ISREG(mode):
        return f"{path.relative_to(root) if path.is_relative_to(root) else path} is not a regular file"
    return None


def _only_contained_files(root: Path, rows: list[CorpusRow]) -> list[CorpusRow]:
    for row in rows:
        for column in ("audio", "reference_audio", "image"):
            path = getattr(row, column)
            if path is None or (column == "audio" and row.audio_bytes is not None):
                continue
            problem = contained(root, path)
            if problem is not None:
                setattr(row, column, None)
                row.errors.append(f"{column}: {problem}; it is not read")
    return rows


# --- LJSpeech: metadata.csv (id|text or id|text|normalized_text) + wavs/ -----------------------


def read_ljspeech(root: Path, speaker: str | None = None) -> list[CorpusRow]:
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise CorpusError(f"{root}: no metadata.csv (LJSpeech layout is metadata.csv + wavs/)")
    speaker = speaker or root.resolve().name
    wavs = root / "wavs"
    # One listing instead of a stat per candidate name: the corpus may hold 100k files.
    present = set(os.listdir(wavs)) if wavs.is_dir() else set()
    rows: list[CorpusRow] = []
    for number, raw_line in enumerate(metadata.read_bytes().splitlines(), start=1):
        if not raw_line.strip():
            continue
        errors: list[str] = []
        line = _decode(raw_line, f"metadata.csv line {number}", errors)
        fields = line.split("|")
        utt_id = fields[0].strip() or f"metadata.csv:{number}"
        row = CorpusRow(id=utt_id, speaker=speaker, text=None, source_file="metadata.csv", source_line=number, errors=errors)
        if len(fields) not in (2, 3):
            errors.append(f"metadata.csv line {number}: expected 2 or 3 '|'-separated fields, found {len(fields)}")
        if len(fields) >= 2:
            row.text = fields[1].strip()
        if len(fields) == 3:
            row.normalized_text = fields[2].strip()
        if not is_safe_id(utt_id) or utt_id in (".", ".."):
            errors.append(f"id {utt_id!r} is not a safe file name, so no audio is looked up for it")
        else:
            name = next((f"{utt_id}{ext}" for ext in AUDIO_EXTENSIONS if f"{utt_id}{ext}" in present), None)
            row.audio = wavs / name if name else None
            if row.audio is None:
                errors.append(f"audio file not found: wavs/{utt_id}.wav|.flac|.ogg")
        rows.append(row)
    return rows


# --- VCTK: txt/<speaker>/<id>.txt + wav*/<speaker>/<id>[_micN].(wav|flac) --------------------


def _vctk_utterance_id(stem: str, mic: str | None) -> str | None:
    """Map an audio file stem to its utterance id, or None when it is another microphone's take."""
    head, sep, tail = stem.rpartition("_")
    if sep and tail.startswith("mic") and tail[3:].isdigit():
        return head if mic is None or tail == mic else None
    return stem


def read_vctk(root: Path, mic: str | None = "mic1") -> list[CorpusRow]:
    txt_root = root / "txt"
    audio_roots = sorted(path for path in root.glob("wav*") if path.is_dir())
    if not txt_root.is_dir() or not audio_roots:
        raise CorpusError(f"{root}: VCTK layout needs txt/<speaker>/ and a wav*/<speaker>/ folder")

    # Audio per (speaker, utterance id); the first audio root in sorted order wins.
    audio: dict[tuple[str, str], Path] = {}
    for audio_root in audio_roots:
        for path in sorted(audio_root.glob("*/*")):
            if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
                continue
            utt_id = _vctk_utterance_id(path.stem, mic)
            if utt_id is not None:
                audio.setdefault((path.parent.name, utt_id), path)

    rows: list[CorpusRow] = []
    seen: set[tuple[str, str]] = set()
    for txt in sorted(txt_root.glob("*/*.txt")):
        speaker, utt_id = txt.parent.name, txt.stem
        seen.add((speaker, utt_id))
        errors: list[str] = []
        relative = txt.relative_to(root).as_posix()
        try:
            text = _decode(txt.read_bytes(), relative, errors).strip()
        except OSError as exc:  # a folder named like a transcript, a file gone, no permission
            text = None
            errors.append(f"{relative}: cannot read the transcript ({exc.strerror or exc})")
        row = CorpusRow(id=utt_id, speaker=speaker, text=text, source_file=relative, errors=errors)
        row.audio = audio.get((speaker, utt_id))
        if row.audio is None:
            errors.append(f"audio file not found for {relative} under {', '.join(p.name for p in audio_roots)}/{speaker}/")
        rows.append(row)
    # Audio with no transcript is carried too, so validation can report it.
    for (speaker, utt_id), path in sorted(audio.items()):
        if (speaker, utt_id) in seen:
            continue
        relative = path.relative_to(root).as_posix()
        rows.append(
            CorpusRow(
                id=utt_id,
                speaker=speaker,
                text=None,
                source_file=relative,
                audio=path,
                errors=[f"no transcript txt/{speaker}/{utt_id}.txt for {relative}"],
            )
        )
    return rows


# --- Manifest: CSV or Parquet with id, speaker, text, audio[, reference_audio, image] -----------


def _manifest_records_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str], list[str]]], dict]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CorpusError(f"{path}: empty manifest") from None
    except csv.Error as exc:
        raise CorpusError(f"{path}: unreadable header: {exc}") from None
    records: list[tuple[int, list[str], list[str]]] = []  # the CSV layout embeds no audio
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            records.append((reader.line_num, [], [f"{path.name} line {reader.line_num}: broken CSV ({exc})"]))
            continue
        if not any(field.strip() for field in fields):
            continue
        errors: list[str] = []
        cleaned = []
        for value in fields:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                errors.append(f"{path.name} line {reader.line_num}: not valid UTF-8")
                value = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
            cleaned.append(value)
        if len(cleaned) != len(header):
            errors.append(f"{path.name} line {reader.line_num}: expected {len(header)} fields, found {len(cleaned)}")
        records.append((reader.line_num, cleaned, list(dict.fromkeys(errors))))
    return header, records, {}


def _cell(value, column: str, number: int, errors: list[str], embedded: dict) -> str:
    """A Parquet cell as text. An audio struct {bytes, path} (the Hugging Face layout) gives its
    path, and its bytes go to ``embedded`` when the file is inside the manifest."""
    if value is None:
        return ""
    if isinstance(value, dict):
        if column != "audio" or not ({"bytes", "path"} & set(value)):
            errors.append(f"row {number}: column {column} holds a struct ({sorted(value)}), not a path")
            return ""
        if isinstance(value.get("bytes"), (bytes, bytearray)) and value["bytes"]:
            embedded[number] = bytes(value["bytes"])
        return str(value.get("path") or "")
    return str(value)


def _manifest_records_parquet(path: Path) -> tuple[list[str], list[tuple[int, list[str], list[str]]], dict]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CorpusError(f"{path}: cannot read Parquet: {exc}") from None
    header = list(table.column_names)
    columns = [table.column(name).to_pylist() for name in header]
    records, embedded = [], {}
    for index in range(table.num_rows):
        errors: list[str] = []
        values = [_cell(column[index], name, index + 1, errors, embedded) for name, column in zip(header, columns)]
        records.append((index + 1, values, errors))
    return header, records, embedded


def read_manifest_corpus(path: Path) -> list[CorpusRow]:
    """Read a CSV/Parquet manifest; ``path`` is the file or a folder holding manifest.csv|.parquet."""
    if path.is_dir():
        found = [path / name for name in MANIFEST_NAMES if (path / name).is_file()]
        if not found:
            raise CorpusError(f"{path}: no {' or '.join(MANIFEST_NAMES)} in this folder")
        path = found[0]
    root = path.parent
    loader = _manifest_records_parquet if path.suffix.lower() == ".parquet" else _manifest_records_csv
    header, records, embedded = loader(path)
    missing = [name for name in MANIFEST_REQUIRED if name not in header]
    if missing:
        raise CorpusError(f"{path}: manifest lacks required column(s) {missing}; it has {header}")
    position = {name: header.index(name) for name in (*MANIFEST_REQUIRED, *MANIFEST_OPTIONAL) if name in header}

    rows: list[CorpusRow] = []
    for number, values, errors in records:

        def get(name: str) -> str:
            index = position.get(name)
            return values[index].strip() if index is not None and index < len(values) else ""

        utt_id = get("id") or f"{path.name}:{number}"
        if not get("id"):
            errors.append(f"{path.name} row {number}: empty id")
        row = CorpusRow(
            id=utt_id,
            speaker=get("speaker") or None,
            text=get("text"),
            source_file=path.name,
            source_line=number,
            errors=errors,
        )
        if number in embedded:  # the audio is in the manifest itself
            row.audio, row.audio_bytes = Path(get("audio") or f"{utt_id}.wav"), embedded[number]
        elif get("audio"):
            row.audio = _resolve_file(root, get("audio"), "audio", errors)
        else:
            errors.append(f"{path.name} row {number}: empty audio path")
        for column in MANIFEST_OPTIONAL:
            if get(column):
                setattr(row, column, _resolve_file(root, get(column), column, errors))
        rows.append(row)
    return rows


# --- Format detection --------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    if path.is_file():
        if path.name == "metadata.csv":
            return "ljspeech"
        if path.suffix.lower() in (".csv", ".parquet"):
            return "manifest"
        raise CorpusError(f"{path}: a corpus file must be metadata.csv, a .csv or a .parquet manifest")
    if not path.is_dir():
        raise CorpusError(f"{path}: corpus not found")
    if (path / "metadata.csv").is_file():
        return "ljspeech"
    if (path / "txt").is_dir() and any(p.is_dir() for p in path.glob("wav*")):
        return "vctk"
    if any((path / name).is_file() for name in MANIFEST_NAMES):
        return "manifest"
    raise CorpusError(
        f"{path}: cannot tell the corpus format: expected metadata.csv (LJSpeech), "
        f"txt/ + wav*/ (VCTK) or {' / '.join(MANIFEST_NAMES)}; pass --format to force one"
    )


def read_corpus(
    path: Path, corpus_format: str = "auto", speaker: str | None = None, vctk_mic: str | None = "mic1"
) -> tuple[str, Path, list[CorpusRow]]:
    """Read any supported corpus. Returns (format, corpus root, rows)."""
    corpus_format = detect_format(path) if corpus_format == "auto" else corpus_format
    if corpus_format not in FORMATS:
        raise CorpusError(f"unknown corpus format {corpus_format!r}; expected one of {FORMATS}")
    readers: dict[str, Callable[[Path], list[CorpusRow]]] = {
        "ljspeech": lambda p: read_ljspeech(p.parent if p.is_file() else p, speaker),
        "vctk": lambda p: read_vctk(p, vctk_mic),
        "manifest": read_manifest_corpus,
    }
    if not path.exists():
        raise CorpusError(f"{path}: corpus not found")
    rows = readers[corpus_format](path)
    root = path.parent if path.is_file() else path
    return corpus_format, root, _only_contained_files(root, rows)
