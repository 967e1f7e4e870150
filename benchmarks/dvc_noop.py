"""A no-op ``dvc repro``: how long DVC takes to find that every stage is up to date.

    .venv/bin/python benchmarks/dvc_noop.py [--project DIR] [--rounds 5]

1. A scratch project (``--project``, default ``benchmarks/work/dvc_noop``): this checkout's ``src/``,
   ``dvc.yaml`` and ``.dvc/config`` in a fresh git + DVC repository, with ``params.yaml`` shrunk to
   the tiny demo of ``tests/test_orchestration.py`` (2 utterances per demo speaker, 2 training
   steps); ``dvc repro`` runs every stage once. A project that already holds a ``dvc.lock`` from an
   earlier call is reused as it is, so only the first call pays for the pipeline.
2. ``--rounds`` times, alternating: ``dvc status`` (the baseline: DVC's own check of the same
   hashes, nothing run) and ``dvc repro`` (must print that every stage was skipped and change no
   file under the project).

Writes ``benchmarks/results/dvc_noop.json``: medians, the ratio no-op repro / status, and the
one-off full ``dvc repro`` time when this call ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DVC = Path(sys.executable).with_name("dvc")

sys.path.insert(0, str(REPO / "tests"))
from tiny_project import tiny_params  # noqa: E402  (the same tiny project as the DVC end-to-end test)


def environment(project: Path) -> dict[str, str]:
    return {"PATH": f"{DVC.parent}:/usr/bin:/bin", "DO_NOT_TRACK": "1", "HOME": str(project.parent),
            "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@localhost"}


def run(project: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=environment(project), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {project}:\n{done.stdout}{done.stderr}")
    return seconds, done.stdout + done.stderr


def build(project: Path) -> float:
    """A reproduced scratch project; returns the seconds of its full ``dvc repro``."""
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", project)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(REPO / "params.yaml"), sort_keys=False))
    (project / ".gitignore").write_text("__pycache__/\n*.egg-info/\n/mlflow.db\n/mlruns/\n")
    run(project, "git", "init", "-q")
    run(project, str(DVC), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # analytics off, the project's remote
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "project")
    seconds, _ = run(project, str(DVC), "repro")
    return seconds


def snapshot(project: Path) -> dict[str, int]:
    """mtime of every file outside DVC's and git's own folders (a no-op repro must touch none)."""
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in project.rglob("*")
            if p.is_file() and not p.relative_to(project).parts[0] in (".dvc", ".git")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=REPO / "benchmarks" / "work" / "dvc_noop")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    project = args.project.resolve()
    full = None if (project / "dvc.lock").is_file() else build(project)
    before = snapshot(project)
    status, repro = [], []
    for _ in range(args.rounds):
        seconds, output = run(project, str(DVC), "status")
        if "up to date" not in output:
            raise SystemExit(f"dvc status says the project is not up to date:\n{output}")
        status.append(seconds)
        seconds, output = run(project, str(DVC), "repro")
        stages = re.findall(r"Stage '([^']+)' didn't change, skipping", output)  # train@0, train@1, ... expanded
        if not stages or "Running stage" in output:
            raise SystemExit(f"dvc repro was not a no-op:\n{output}")
        repro.append(seconds)
    if snapshot(project) != before:
        raise SystemExit("a no-op dvc repro changed files in the project")
    result = {"stages": stages, "rounds": args.rounds, "dvc_status_s": statistics.median(status),
              "dvc_repro_noop_s": statistics.median(repro),
              "ratio": statistics.median(repro) / statistics.median(status), "status_all_s": status,
              "repro_all_s": repro, "full_repro_s": full, "files": len(before),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dvc_noop.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"no-op dvc repro {result['dvc_repro_noop_s']:.2f} s, dvc status {result['dvc_status_s']:.2f} s "
          f"(median of {args.rounds}): {result['ratio']:.2f}x, {len(stages)} stages skipped, {len(before)} files"
          + (f"; the full repro took {full:.0f} s" if full else ""))


if __name__ == "__main__":
    main()
