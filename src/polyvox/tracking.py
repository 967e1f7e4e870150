"""MLflow tracking: every stage run is an MLflow run in experiment ``polyvox``.

Where it goes, first match wins:
1. ``MLFLOW_TRACKING_URI`` (a server ``http://…``, or any store); ``MLFLOW_TRACKING_URI=off``
   turns tracking off (nothing is sent; stages write only their own files);
2. ``registry.tracking_uri`` in params.yaml;
3. the embedded default: ``sqlite:///<workspace>/mlflow.db`` with artifacts in ``<workspace>/mlruns``.

A run carries the params flattened to dotted keys, the data version, the git commit, metrics
(logged in batches, so a SQLite store does not slow training steps) and the stage's files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
import subprocess
from urllib.parse import urlsplit, urlunsplit
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "polyvox"
OFF = ("off", "none", "false", "0")
PROBE_SECONDS = 5.0


def tracking_errors() -> tuple[type[Exception], ...]:
    """What a lost tracking server raises (imported late: MLflow is slow to import)."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    return MlflowException, RequestException, OSError


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached; nothing has run yet."""


def check_reachable(uri: str) -> None:
    """Fail fast, before a stage does any work, when an HTTP tracking server does not answer (MLflow's
    own client would retry for minutes and then raise deep inside the stage)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).raise_for_status()
    except requests.RequestException as exc:
        secret = urlsplit(uri).password
        detail = str(exc).replace(secret, "***") if secret else str(exc)
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(uri)} is unreachable ({type(exc).__name__}: {detail}); start it, point "
            f"MLFLOW_TRACKING_URI elsewhere, or set MLFLOW_TRACKING_URI=off to run without tracking") from None


def tracking_uri(workspace=None, configured: str | None = None) -> str | None:
    """The tracking URI to use, or None when tracking is off (see the module docstring)."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env is not None and from_env.strip():
        return None if from_env.strip().lower() in OFF else from_env.strip()
    if configured:
        return configured
    if workspace is None:
        return None
    return f"sqlite:///{(Path(workspace.root) / 'mlflow.db').resolve()}"


_PROCESS_RUN = uuid.uuid4().hex[:12]


def pipeline_run() -> tuple[str, str]:
    """(id, trigger) of the pipeline run this stage belongs to, so the dashboard can group stage runs:
    the Prefect flow run when inside one (trigger: its deployment or `flow`), else ``POLYVOX_RUN_ID``
    (e.g. ``POLYVOX_RUN_ID=$(date +%s) dvc repro``; trigger `dvc`/`cli`), else this process."""
    import sys

    if "prefect" in sys.modules:  # never import Prefect just to ask
        from prefect.runtime import deployment, flow_run

        if flow_run.id is not None:
            trigger = f"deployment {deployment.name}" if deployment.id else "polyvox run"
            return str(flow_run.id), trigger
    if os.environ.get("POLYVOX_RUN_ID"):
        return os.environ["POLYVOX_RUN_ID"], os.environ.get("POLYVOX_TRIGGER", "dvc")
    return _PROCESS_RUN, "cli"


PARENT_TAG = "polyvox.pipeline_parent"  # on the MLflow run that stands for a whole pipeline run


def nest(client, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the MLflow run standing for the pipeline run of ``tags`` (``pipeline_run``),
    created by its first stage, under which each stage run nests (MLflow's ``mlflow.parentRunId``):
    MLflow's UI then shows one row per pipeline run, its stages folded under it. None for a single
    command outside a pipeline (trigger ``cli``): it gets no parent."""
    group, trigger = tags.get("pipeline_run"), tags.get("trigger")
    if not group or trigger == "cli":
        return None
    quoted = group.replace("'", "")
    found = client.search_runs([experiment_id], f"tags.pipeline_run = '{quoted}' and tags.`{PARENT_TAG}` = 'true'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=f"pipeline {group}",
                             tags={"pipeline_run": group, "trigger": trigger, PARENT_TAG: "true"}).info.run_id


def end_parent(client, parent: str | None) -> None:
    """Move the pipeline run's end to now: it spans its stages, first to last."""
    if parent is not None:
        client.set_terminated(parent, "FINISHED")


def client_and_experiment(uri: str, workspace=None):
    """An MlflowClient for ``uri`` and the id of experiment ``polyvox`` (created on first use, with
    its artifacts in ``<workspace>/mlruns`` for a local store)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files; a bar per file is noise
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if workspace is not None and not uri.startswith(("http://", "https://", "databricks")):
        location = (Path(workspace.root) / "mlruns").resolve().as_uri()
    return client, client.create_experiment(EXPERIMENT, artifact_location=location)


def redact(uri: str) -> str:
    """``uri`` fit to show or log: a password in it (``postgresql://user:pass@host/db``) becomes ***."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<an unparsable URI>"
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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

    def __init__(self, name: str, params: dict[str, Any], tags: dict[str, str], workspace=None,
                 began: float | None = None):
        configured = (params.get("registry") or {}).get("tracking_uri") if isinstance(params, dict) else None
        self.uri = tracking_uri(workspace, configured)
        self.client = None
        self.run_id: str | None = None
        self.parent: str | None = None
        self._pending: list = []
        self.name = name
        self._warned = False
        if self.uri is None:
            return
        check_reachable(self.uri)
        self.client, experiment_id = client_and_experiment(self.uri, workspace)
        group, trigger = pipeline_run()
        tags = {"pipeline_run": group, "trigger": trigger, **tags}
        self.parent = nest(self.client, experiment_id, tags)
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent
        # began (epoch seconds): a stage that opens its run when its work is done still shows its wall time
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags,
                                             start_time=None if began is None else int(began * 1000)).info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch param limit
            self.client.log_batch(self.run_id, params=items[start:start + 100])
        log.info("tracking to MLflow at %s (run %s)", redact(self.uri), self.run_id)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def _lost_server(self, exc: Exception, what: str) -> None:
        """The server went away mid-run: the stage carries on (its own files hold every result), the
        unsent metrics stay buffered and go with the next flush that succeeds."""
        if not self._warned:
            log.warning("MLflow at %s failed while logging %s for run %s (%s: %s); the stage goes on, its "
                        "outputs are on disk, and tracking retries at the next flush", self.uri, what, self.name,
                        type(exc).__name__, str(exc)[:200])
            self._warned = True

    def flush(self) -> None:
        if not self.active or not self._pending:
            return
        try:
            while self._pending:
                self.client.log_batch(self.run_id, metrics=self._pending[:1000])  # MLflow's per-batch limit
                self._pending = self._pending[1000:]
        except tracking_errors() as exc:
            self._lost_server(exc, f"{len(self._pending)} metrics")

    def artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        if not self.active:
            return
        for path in paths:
            if path.is_file():
                try:
                    self.client.log_artifact(self.run_id, str(path), folder)
                except tracking_errors() as exc:
                    self._lost_server(exc, f"artifact {path}")

    def end(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        self.flush()
        try:
            self.client.set_terminated(self.run_id, status)
            end_parent(self.client, self.parent)
        except tracking_errors() as exc:
            self._lost_server(exc, f"the end of the run ({status})")


def stage_run(stage: str, params, workspace, tags: dict[str, str] | None = None, name: str | None = None,
              seconds: float | None = None) -> Run:
    """The MLflow run of one call of ``stage``: its declared settings (:data:`polyvox.stages.STAGES`)
    as params, and its name, code version and the git commit as tags. ``seconds``: the stage has
    worked that long already (the run starts that much earlier, so its duration is the stage's)."""
    from polyvox.stages import STAGES

    spec = STAGES[stage]
    configured = {"registry": params.model_dump(by_alias=True).get("registry")}  # where to track to
    return Run(name or stage, spec.settings(params) | configured,
               {"stage": stage, "code_version": spec.code_digest(), "git_commit": git_commit() or "unknown",
                **(tags or {})}, workspace, began=None if seconds is None else time.time() - seconds)


def tracked(stage: str, output: Callable[[Any], Path]):
    """Decorate a stage function ``f(params, workspace, ...)`` so that each call is an MLflow run
    (:func:`stage_run`) that also records the data version (hash of ``output(workspace)``, the file
    the stage writes last) and the numeric fields of its result as metrics. A failed call is
    recorded as a FAILED run and its exception propagates unchanged."""

    def decorate(function):
        @functools.wraps(function)
        def run(params, workspace, *args, **kwargs):
            tracker = stage_run(stage, params, workspace)
            try:
                result = function(params, workspace, *args, **kwargs)
            except BaseException:
                tracker.end("FAILED")
                raise
            if tracker.active:
                produced = output(workspace)
                if produced.is_file():
                    tracker.client.set_tag(tracker.run_id, "data_version", sha256_short(produced))
                figures = (result.to_dict() if hasattr(result, "to_dict")
                           else dataclasses.asdict(result) if dataclasses.is_dataclass(result) else {})
                tracker.metrics({k: float(v) for k, v in figures.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=0)
            tracker.end()
            return result

        return run

    return decorate


def sha256_short(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
