"""One state for every entry point: what ``polyvox run`` (and the Prefect deployment) did is written
into ``dvc.lock`` the way ``dvc repro`` writes it, so ``dvc status`` is clean and ``dvc repro`` a
no-op after it, and ``dvc push`` stores that run's data and models.

The other direction needs nothing here: ``dvc repro`` runs the same ``polyvox <stage>`` commands,
which write the stages' own fingerprints, so a ``polyvox run`` after it finds every stage done.

Mechanism: after the flow's stages, ``dvc commit --force`` of each stage that finished (DVC hashes
its deps, params and outs, records them in ``dvc.lock`` and caches the outs; hashes it already knows
are not recomputed). The champion is registry state that promote and rollback move, not a stage's
output (a first candidate the gate refuses leaves no champion, and DVC fails a stage whose output is
missing), so the flow tracks it with ``dvc add`` (``models/champion.dvc``): ``dvc pull`` in a fresh
clone brings it back. A promote run by ``dvc repro`` cannot do that (DVC holds its own lock while a
stage runs): ``dvc status`` then shows ``models/champion.dvc`` changed until the next ``polyvox
run`` (or ``dvc add models/champion``).

Only a run of the project's own ``params.yaml`` without ``-S`` overrides is recorded: DVC would
otherwise describe outputs by settings that did not make them. Nothing is recorded when the
workspace is not a DVC project, or from inside ``dvc repro`` (which records its stages itself and
holds DVC's lock).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

def is_project(root: Path) -> bool:
    return (root / "dvc.yaml").is_file() and (root / ".dvc").is_dir()


def inside_dvc() -> bool:
    """True in a command that ``dvc repro`` / ``dvc exp run`` runs (DVC sets ``DVC_STAGE`` for it)."""
    return "DVC_STAGE" in os.environ


def executable() -> str | None:
    """The ``dvc`` beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.is_file() else shutil.which("dvc")


def why_not(root: Path, params_file: Path, overrides: list[str] | tuple[str, ...]) -> str | None:
    """Why a run with these params is not recorded in ``dvc.lock`` (None: it is)."""
    if not is_project(root):
        return f"{root} is not a DVC project (no dvc.yaml and .dvc/)"
    if inside_dvc():
        return "running inside dvc repro, which records its stages itself"
    if overrides:
        return f"the run used -S overrides ({', '.join(overrides)}); dvc.yaml reads params.yaml as it is"
    if params_file.resolve() != (root / "params.yaml").resolve():
        return f"the run read {params_file}; dvc.yaml reads {root / 'params.yaml'}"
    if executable() is None:
        return "dvc is not installed (pip install dvc)"
    return None


def record(root: Path, stages: list[str], champion: Path | None) -> float:
    """``dvc commit`` ``stages`` (dvc.yaml names: ``train@voice``) and ``dvc add`` the champion folder
    when there is one; returns the seconds it took. A failure is a warning with DVC's message: the
    run's outputs are whole either way, only ``dvc status`` shows those stages as changed."""
    started = time.perf_counter()
    dvc = executable()
    steps = []
    if stages:
        steps.append(("dvc.lock", ", ".join(stages), [dvc, "commit", "--force", "--quiet", *stages]))
    if champion is not None and champion.is_dir():
        relative = str(champion.resolve().relative_to(root.resolve()))
        steps.append((f"{relative}.dvc", relative, [dvc, "add", "--quiet", relative]))
    recorded = []
    for file, what, command in steps:
        done = subprocess.run(command, cwd=root, env={**os.environ, "DO_NOT_TRACK": "1"}, capture_output=True, text=True)
        if done.returncode == 0:
            recorded.append(f"{file} ({what})")
            continue
        message = (done.stderr or done.stdout).strip().splitlines()
        log.warning("%s not updated for %s (`dvc %s` exited %d: %s); `dvc status` shows them as changed until the "
                    "next polyvox run or dvc repro", file, what, command[1], done.returncode,
                    message[-1] if message else "no message")
    seconds = time.perf_counter() - started
    if recorded:
        log.info("recorded in %s (%.1f s)", "; ".join(recorded), seconds)
    return seconds
