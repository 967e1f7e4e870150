"""Small corpora built from real Kathleen takes, in each supported layout, with bad rows mixed in."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def ljspeech(root: Path, files: list[Path], bad_rows: bool = True) -> Path:
    """metadata.csv (3 columns) + wavs/. With ``bad_rows``, lines 4-9 are each broken in one way."""
    (root / "wavs").mkdir(parents=True)
    lines: list[bytes] = []
    for index, source in enumerate(files[:3]):
        shutil.copy(source, root / "wavs" / source.name)
        lines.append(f"{source.stem}|Take number {index}.|Take number {index}.".encode())
    if bad_rows:
        shutil.copy(files[3], root / "wavs" / files[3].name)
        lines += [
            b"a_line_without_any_separator",
            f"{files[3].stem}|too|many|fields".encode(),
            f"{files[3].stem}|caf\xe9 in latin-1|cafe".encode("latin-1"),
            b"missing_audio_id|Where is my audio?",
            b"../../etc/passwd|An id that tries to escape.",
            b"   ",  # blank lines are not rows
        ]
    (root / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    return root


def vctk(root: Path, files: list[Path]) -> Path:
    """txt/<spk>/ + wav48/<spk>/<id>_mic1|_mic2.flac; one transcript lacks audio, one audio lacks text."""
    for speaker, chunk in (("p001", files[:3]), ("p002", files[3:6])):
        (root / "txt" / speaker).mkdir(parents=True)
        (root / "wav48" / speaker).mkdir(parents=True)
        for number, source in enumerate(chunk, start=1):
            utt = f"{speaker}_{number:03d}"
            if number < 3:
                (root / "txt" / speaker / f"{utt}.txt").write_text(f"Sentence {number} of {speaker}.\n")
            shutil.copy(source, root / "wav48" / speaker / f"{utt}_mic1.flac")
            shutil.copy(files[7], root / "wav48" / speaker / f"{utt}_mic2.flac")
    (root / "txt" / "p002" / "p002_009.txt").write_text("A transcript with no audio.\n")
    return root


MANIFEST_FIELDS = ["id", "speaker", "text", "audio", "reference_audio", "image"]


def manifest_rows(root: Path, files: list[Path], image: Path) -> list[list[str]]:
    (root / "clips").mkdir(parents=True)
    shutil.copy(image, root / "face.png")
    rows = []
    for index, source in enumerate(files[:4]):
        shutil.copy(source, root / "clips" / source.name)
        reference = f"clips/{files[(index + 1) % 4].name}"
        rows.append([f"utt{index}", "kathleen" if index % 2 else "kat2", f"Row {index}.", f"clips/{source.name}",
                     reference, "face.png"])
    return rows


def manifest_csv(root: Path, files: list[Path], image: Path, bad_rows: bool = True) -> Path:
    rows = manifest_rows(root, files, image)
    path = root / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_FIELDS)
        writer.writerows(rows)
        if bad_rows:
            writer.writerow(["gone", "kat2", "Missing file.", "clips/nope.flac", "", ""])
            writer.writerow(["escape", "kat2", "Escaping path.", "../outside.flac", "", ""])
            writer.writerow(["absolute", "kat2", "Absolute path.", "/etc/hostname", "", ""])
            writer.writerow(["short", "kat2"])
            writer.writerow(["", "kat2", "No id.", rows[0][3], "", ""])
            writer.writerow(["badimage", "kat2", "Image missing.", rows[0][3], "", "nobody.png"])
    if bad_rows:
        with open(path, "ab") as handle:
            handle.write(b"latin,kat2,na\xefve text,clips/" + files[0].name.encode() + b",,\n")
    return path


def manifest_parquet(root: Path, files: list[Path], image: Path) -> Path:
    rows = manifest_rows(root, files, image)
    rows.append(["gone", "kat2", "Missing file.", "clips/nope.flac", None, None])
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(MANIFEST_FIELDS)})
    path = root / "corpus.parquet"
    pq.write_table(table, path)
    return path


def kathleen_manifest(root: Path, files: list[Path], texts: list[str] | None = None) -> Path:
    """A clean manifest corpus of real Kathleen takes (one speaker, one row per file)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, source in enumerate(files):
        shutil.copy(source, root / "clips" / source.name)
        text = texts[index] if texts else f"Take {index}."
        rows.append([source.stem, "kathleen", text, f"clips/{source.name}"])
    path = root / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "speaker", "text", "audio"])
        writer.writerows(rows)
    return path


def kathleen_texts(kathleen: Path) -> dict[str, str]:
    lines = (kathleen / "metadata.csv").read_text(encoding="utf-8").splitlines()
    return {line.split("|")[0]: line.split("|")[1] for line in lines if line}
