"""The weights that ship with polyvox: each asset is a folder here (``base/``: the acoustic base every
voice fine-tunes from, ``pretrain.source: shipped``), with a card.

``card.json`` is the asset's record, written by :func:`ship` when the asset is made: the command and
the params that rebuild it (``pretrain.source: null`` runs the same), the commit, the data, the steps
and the figures, and the size and sha256 of every file. ``CARD.md`` is the same, for reading.
:func:`shipped` checks every file against the card before anything loads it: a damaged or replaced
file is refused by name, never loaded.

This folder is the one exception to the 2 MiB rule for files in git (20 MiB in all): weights only
(fp16 where the outputs match fp32's, see the card), no optimiser state. Replace an asset only when
a new one measurably wins (``benchmarks/README.md``, "Decisions").
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from polyvox.config import ConfigError
from polyvox.fileio import atomic_write_text, replace_folder, sha256_file

HERE = Path(__file__).resolve().parent
CARD = "card.json"
CARD_MD = "CARD.md"
BUDGET_BYTES = 20 * 2**20  # everything in this folder, together


class ShippedAssetError(ConfigError):
    """A shipped asset is missing, or one of its files does not match its card."""


def card(name: str, root: Path | None = None) -> dict[str, Any]:
    path = (root or HERE) / name / CARD
    if not path.is_file():
        raise ShippedAssetError(f"{path}: no card; polyvox ships no {name!r} asset in this version "
                                f"(set pretrain.source: null to train one)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShippedAssetError(f"{path}: unreadable card ({exc})") from None


def shipped(name: str, root: Path | None = None) -> Path:
    """The folder of asset ``name`` after checking every file its card lists (size and sha256);
    a ShippedAssetError names the first file that is missing or differs."""
    record = card(name, root)
    base = (root or HERE) / name
    for file, facts in sorted(record["files"].items()):
        path = base / file
        if not path.is_file():
            raise ShippedAssetError(f"{path}: missing (listed in {base / CARD}); reinstall polyvox, or rebuild "
                                    f"it: {record['command']}")
        digest = sha256_file(path)
        if path.stat().st_size != facts["bytes"] or digest != facts["sha256"]:
            raise ShippedAssetError(f"{path}: sha256 {digest}, expected {facts['sha256']} ({base / CARD}): the "
                                    f"file is damaged or was replaced; reinstall polyvox, or rebuild it: "
                                    f"{record['command']}")
    return base


def ship(name: str, files: dict[str, Path], record: dict[str, Any], root: Path | None = None) -> Path:
    """Publish ``files`` (name in the asset → source path) as asset ``name`` with ``record`` (command,
    params, commit, data, steps, figures) as its card; the sizes and hashes are added here. One
    folder, replaced atomically; refused when the shipped folder would pass :data:`BUDGET_BYTES`."""
    root = root or HERE
    others = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                 and (root / name) not in p.parents)
    size = sum(p.stat().st_size for p in files.values())
    if others + size > BUDGET_BYTES:
        raise ShippedAssetError(f"{name}: {size / 2**20:.1f} MiB with {others / 2**20:.1f} MiB already shipped passes "
                                f"the {BUDGET_BYTES / 2**20:.0f} MiB budget of {root}")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for file, source in files.items():
            shutil.copyfile(source, staging / file)
        record = {**record, "files": {file: {"bytes": (staging / file).stat().st_size,
                                             "sha256": sha256_file(staging / file)} for file in sorted(files)}}
        atomic_write_text(staging / CARD, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
        atomic_write_text(staging / CARD_MD, card_markdown(name, record))
        staging.chmod(0o755)  # mkdtemp makes it private; it is part of the package
        replace_folder(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / name


def card_record(*, about: str, command: str, commit: str, params: dict[str, Any], index, audio, result,
                figures: dict[str, Any], data: dict[str, Any] | None = None,
                training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card fields every shipped model has (:func:`ship` adds its files): what it is, how to
    rebuild it, the commit and params, the corpus it learnt from (``index``: its features index,
    ``audio``: the audio section, for the hours), and its training run (``result``: a trainer's
    result, with steps, stopped_by, seconds, seconds_per_step, device); ``data`` and ``training``
    add an asset's own fields, ``figures`` what was measured."""
    import platform

    hours = float(index["frames"].sum()) * audio.hop_length / audio.sample_rate / 3600
    return {
        "about": about, "command": command, "commit": commit, "params": params,
        "data": {"utterances": len(index), "hours": round(hours, 2), **(data or {})},
        "training": {"steps": result.steps, "stopped_by": result.stopped_by, "seconds": round(result.seconds),
                     "seconds_per_step": round(result.seconds_per_step, 3), "device": result.device,
                     "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), **(training or {})},
        "figures": figures,
    }


def card_markdown(name: str, record: dict[str, Any]) -> str:
    """The card for reading: what the asset is, how to rebuild it, what it was trained on, its figures."""
    lines = [f"# polyvox shipped asset: {name}", "", record.get("about", ""), "",
             "## Rebuild", "", "```bash", record["command"], "```", "",
             f"At commit `{record.get('commit', '?')}`, with these params:", "",
             "```json", json.dumps(record.get("params", {}), indent=1, sort_keys=True), "```", "",
             "## Data", ""]
    lines += [f"- {key}: {value}" for key, value in sorted(record.get("data", {}).items())]
    lines += ["", "## Training", ""] + [f"- {key}: {value}" for key, value in sorted(record.get("training", {}).items())]
    lines += ["", "## Figures", ""] + [f"- {key}: {value}" for key, value in sorted(record.get("figures", {}).items())]
    lines += ["", "## Files (checked at load)", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {file} | {facts['bytes']} | `{facts['sha256']}` |" for file, facts in sorted(record["files"].items())]
    return "\n".join(lines) + "\n"
