"""The MLflow model registry as polyvox uses it: one registered model, versions that carry their
evaluation and gate decision as tags, and the alias ``champion``.

Every alias move (promote, rollback) is recorded twice: as an MLflow run in experiment
``polyvox`` (stage ``promote`` or ``rollback``, tags from/to/reason), and in the registered
model's ``champion_history`` tag (JSON, the latest moves), which is what ``rollback`` reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from polyvox.fileio import replace_folder
from polyvox.runtime.bundle import BundleMeta
from polyvox.tracking import client_and_experiment, end_parent, flatten, nest, pipeline_run

log = logging.getLogger(__name__)

ALIAS = "champion"
HISTORY_TAG = "champion_history"
HISTORY_TABLE = "champion_history.json"  # the same moves as an MLflow table artifact of the run that made the last one
TAG_LIMIT = 5000  # MLflow's tag value limit (characters)


class RegistryError(RuntimeError):
    """The registry cannot be reached or does not hold what was asked for."""


class Registry:
    def __init__(self, uri: str, model_name: str, workspace=None):
        self.uri, self.name = uri, model_name
        try:
            self.client, self.experiment_id = client_and_experiment(uri, workspace)
            from mlflow.exceptions import MlflowException

            try:
                self.client.get_registered_model(model_name)
            except MlflowException:
                self.client.create_registered_model(model_name, description="polyvox voices; alias `champion` is served")
        except Exception as exc:  # noqa: BLE001 — any failure to reach the store is reported, with its cause
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(f"MLflow at {uri} is not usable: {type(exc).__name__}: {str(exc)[:300]}") from exc

    # ---- reading ----------------------------------------------------------------------------------

    def champion(self) -> str | None:
        """The version the alias points to, or None when there is no champion yet."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, ALIAS).version)
        except MlflowException:
            return None

    def version(self, version: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException:
            raise RegistryError(f"registered model {self.name!r} has no version {version}") from None

    def versions(self) -> list:
        return sorted(self.client.search_model_versions(f"name='{self.name}'"), key=lambda v: int(v.version))

    def history(self) -> list[dict]:
        tags = self.client.get_registered_model(self.name).tags
        return json.loads(tags.get(HISTORY_TAG, "[]"))

    def download(self, version: str, target: Path) -> Path:
        """The version's bundle, copied into ``target`` (replaced atomically)."""
        import mlflow.artifacts

        source = self.version(version).source
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging),
                                                               tracking_uri=self.uri))
            BundleMeta.read(fetched).model_copy(update={"version": str(version)}).write(fetched)
            fetched.chmod(0o755)
            replace_folder(fetched, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    # ---- writing ----------------------------------------------------------------------------------

    def start_run(self, stage: str, params: dict | None, tags: dict[str, str]) -> str:
        group, trigger = pipeline_run()
        tags = {"stage": stage, "pipeline_run": group, "trigger": trigger, **tags}
        parent = nest(self.client, self.experiment_id, tags)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=tags)
        if params:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flatten(params).items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(run.info.run_id, params=items[start:start + 100])
        return run.info.run_id

    def register(self, bundle: Path, run_id: str, tags: dict[str, str]) -> str:
        """Log ``bundle`` as the run's artifacts and register it as a new version carrying ``tags``."""
        self.client.log_artifacts(run_id, str(bundle), "bundle")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/bundle"
        version = self.client.create_model_version(self.name, source, run_id,
                                                   tags={k: str(v)[:TAG_LIMIT] for k, v in tags.items()})
        return str(version.version)

    def tag(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, str(value)[:TAG_LIMIT])

    def move_champion(self, version: str, action: str, reason: str, run_id: str | None = None) -> dict:
        """Point the alias at ``version`` and record the move."""
        before = self.champion()
        self.version(version)  # raises when it does not exist
        self.client.set_registered_model_alias(self.name, ALIAS, str(version))
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, "from": before,
                 "to": str(version), "reason": reason, "run_id": run_id}
        history = [*self.history(), entry]
        while len(json.dumps(history)) > TAG_LIMIT and len(history) > 1:
            history.pop(0)
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(history))
        if run_id is not None:  # readable in MLflow's UI: a table on the promote/rollback run, not JSON in a tag
            import pandas as pd

            self.client.log_table(run_id, pd.DataFrame(history, columns=list(entry)).astype(str),
                                  HISTORY_TABLE)
        log.info("%s: alias %s %s → %s (%s)", self.name, ALIAS, before, version, action)
        return entry

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)
        end_parent(self.client, self.client.get_run(run_id).data.tags.get("mlflow.parentRunId"))
