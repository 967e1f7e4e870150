"""MLflow tracking, opt-in: active when ``MLFLOW_TRACKING_URI`` is set (a server, or ``sqlite:///…``).

Without it nothing is sent anywhere and training writes only its own files (metrics.csv, the
checkpoints); with it, each training run becomes an MLflow run in experiment ``polyvox`` with the
params flattened to dotted keys, the data version, the git commit, the loss curves (logged in
batches, so a SQLite store does not slow the steps) and the member's files as artifacts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "polyvox"


def tracking_uri() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params → ``{"train.lr": "0.001", ...}``; lists are written as their YAML-ish repr."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]  # MLflow's param value limit
    return flat


def git_commit(repo: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Run:
    """One MLflow run, or nothing when tracking is off. Metrics are buffered and flushed in batches."""

    def __init__(self, name: str, params: dict[str, Any], tags: dict[str, str]):
        self.uri = tracking_uri()
        self.client = None
        self.run_id: str | None = None
        self._pending: list = []
        if self.uri is None:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch param limit
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        log.info("tracking to MLflow at %s (run %s)", self.uri, self.run_id)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def flush(self) -> None:
        if not self.active or not self._pending:
            return
        for start in range(0, len(self._pending), 1000):  # MLflow's per-batch metric limit
            self.client.log_batch(self.run_id, metrics=self._pending[start:start + 1000])
        self._pending = []

    def artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        if not self.active:
            return
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status)
