"""``polyvox promote`` and ``polyvox rollback``.

promote: the candidate (``models/candidate``) and its evaluation (``reports/evaluate/metrics.json``)
→ a serving bundle registered as a new model version, tagged with its metrics and every gate rule
(value, threshold, pass/fail). Only when every rule passes does the alias ``champion`` move to it
and ``models/champion`` become that bundle. The decision is written to ``reports/promote.json``
and logged with the run either way.

rollback: the alias moves back — to ``--to VERSION``, or to the champion before the current one —
and ``models/champion`` is replaced by that version's bundle, recorded the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from polyvox.config import ConfigError, Params
from polyvox.runtime.voice import Voice
from polyvox.fileio import atomic_write_text, recover_folder, remove_staging
from polyvox.fingerprint import file_digest, fingerprint, read_stamp, voice_digest
from polyvox.runtime.bundle import BundleMeta, build_bundle
from polyvox.registry.gate import judge, passed
from polyvox.registry.store import Registry
from polyvox.stages import STAGES
from polyvox.tracking import tracking_errors, check_reachable, git_commit, tracking_uri
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class PromoteResult:
    version: str
    promoted: bool
    champion_before: str | None
    champion_after: str | None
    rules: list[dict]

    def summary(self) -> str:
        failed = [r["rule"] for r in self.rules if not r["passed"]]
        if self.promoted:
            return f"version {self.version} promoted to champion (was {self.champion_before or 'none'}); all {len(self.rules)} rules passed"
        return (f"version {self.version} registered, not promoted (champion stays {self.champion_before or 'none'}); "
                f"failed: {', '.join(failed)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RollbackResult:
    before: str | None
    after: str
    reason: str

    def summary(self) -> str:
        return f"champion {self.before} → {self.after} ({self.reason})"


def registry_for(params: Params, workspace: Workspace) -> Registry:
    uri = tracking_uri(workspace, params.registry.tracking_uri)
    if uri is None:
        raise ConfigError("promote and rollback need the MLflow registry, but MLFLOW_TRACKING_URI=off turns it off")
    check_reachable(uri)
    return Registry(uri, params.registry.model_name, workspace)


def sync_champion(registry: Registry, workspace: Workspace) -> bool:
    """Make models/champion the bundle of the version the alias names, when a promote or rollback
    killed between moving the alias and downloading the bundle left them apart (or a kill mid-swap
    left the old folder aside). True when it had to repair anything."""
    recovered = recover_folder(workspace.champion)
    for stale in remove_staging(workspace.champion):  # this stage holds the workspace: nobody else's
        log.info("removed %s, the staging folder of a killed download", stale)
    alias = registry.champion()
    if alias is None:
        return recovered
    try:
        on_disk = BundleMeta.read(workspace.champion).version
    except (OSError, ValueError):
        on_disk = None
    if on_disk == alias:
        return recovered
    log.warning("models/champion holds version %s but the registry's champion is %s: downloading %s",
                on_disk, alias, alias)
    registry.download(alias, workspace.champion)
    return True


def _end_run(registry: Registry, run_id: str, status: str) -> None:
    """Close the MLflow run. A tracking server gone at this point must neither mask the error that
    failed the stage nor fail a stage whose work (and registry writes) are done: it is logged."""
    try:
        registry.end_run(run_id, status)
    except tracking_errors() as exc:
        log.warning("MLflow did not record the end (%s) of run %s: %s: %s", status, run_id, type(exc).__name__,
                    str(exc)[:200])


def promote(params: Params, workspace: Workspace) -> PromoteResult:
    metrics_path = workspace.evaluation / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"{metrics_path}: no evaluation; run `polyvox evaluate` first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    candidate = Voice.load(workspace.candidate).describe()
    if metrics.get("candidate_voice") != candidate:
        raise ConfigError(f"{metrics_path} scored another candidate than {workspace.candidate}; run `polyvox evaluate` again")

    registry = registry_for(params, workspace)
    before = registry.champion()
    sync_champion(registry, workspace)  # a promote or rollback killed halfway left the alias and the disk apart
    if before is not None and voice_digest(workspace.champion) == voice_digest(workspace.candidate):
        previous = read_stamp(workspace.reports / "promote.json") or {}
        log.info("promote: the candidate is the champion (version %s) already; nothing to register", before)
        return PromoteResult(version=before, promoted=bool(previous.get("promoted", True)),
                             champion_before=previous.get("champion_before"), champion_after=before,
                             rules=previous.get("rules", []))
    stage = STAGES["promote"]
    inputs = fingerprint(file_digest(metrics_path), stage.identity(params), before, registry.uri)
    previous = read_stamp(workspace.reports / "promote.json")
    if previous and previous.get("inputs") == inputs:
        log.info("promote: this evaluation was already judged (version %s); nothing to register", previous["version"])
        return PromoteResult(version=previous["version"], promoted=previous["promoted"],
                             champion_before=previous["champion_before"], champion_after=before,
                             rules=previous["rules"])
    if before is not None and "champion" not in metrics["systems"]:
        log.warning("the registry's champion is version %s, but the evaluation scored no champion", before)
    rules = judge(metrics, params.promote, has_champion=before is not None)
    ok = passed(rules)
    decision = {"promoted": ok, "rules": [r.to_dict() for r in rules], "champion_before": before}
    commit = git_commit() or "unknown"
    run_id = registry.start_run("promote", stage.settings(params),
                                {"data_version": metrics["data_version"], "git_commit": commit,
                                 "code_version": stage.code_digest(),
                                 "decision": "promoted" if ok else "refused"})
    staging = Path(tempfile.mkdtemp(prefix="bundle-"))
    try:
        bundle = build_bundle(workspace.candidate, metrics, decision, metrics["data_version"], commit,
                              params.registry.model_name, staging / "bundle", export_onnx=params.promote.export_onnx)
        tags = {"decision": "promoted" if ok else "refused", "data_version": metrics["data_version"],
                "git_commit": commit, "kind": candidate["kind"], "members": ",".join(m["name"] for m in candidate["members"])}
        tags.update({f"metric.{k}": v for k, v in metrics["systems"]["candidate"].items() if isinstance(v, (int, float))})
        tags.update({f"gate.{r.rule}": f"{'pass' if r.passed else 'FAIL'}: {r.value} {r.op} {r.threshold}" for r in rules})
        version = registry.register(bundle, run_id, tags)
        decision["version"] = version
        # what was judged; a promote that moved the alias changes the champion, hence the next fingerprint
        decision["inputs"] = inputs if not ok else fingerprint(file_digest(metrics_path), stage.identity(params), version,
                                                                registry.uri)
        from mlflow.entities import Metric

        registry.client.log_batch(run_id, metrics=[Metric(f"candidate.{k}", float(v), 0, 0) for k, v in
                                                   metrics["systems"]["candidate"].items()
                                                   if isinstance(v, (int, float)) and not isinstance(v, bool)])
        if ok:
            registry.move_champion(version, "promote", "every gate rule passed", run_id)
            registry.download(version, workspace.champion)
        # The decision is written last: a kill before this line leaves no record that the evaluation
        # was judged, so the rerun judges it again (and sync_champion mends a half-made move).
        workspace.reports.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workspace.reports / "promote.json", json.dumps(decision, indent=1) + "\n")
        registry.client.log_artifact(run_id, str(workspace.reports / "promote.json"))
    except BaseException:
        _end_run(registry, run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _end_run(registry, run_id, "FINISHED")
    result = PromoteResult(version=version, promoted=ok, champion_before=before,
                           champion_after=version if ok else before, rules=decision["rules"])
    log.info(result.summary())
    return result


def rollback(params: Params, workspace: Workspace, to: str | None = None) -> RollbackResult:
    registry = registry_for(params, workspace)
    before = registry.champion()
    if to is None and sync_champion(registry, workspace):
        # the last move (a rollback, most likely) was killed after the alias moved: this run
        # finishes it instead of rolling back one step further
        result = RollbackResult(before=before, after=before, reason=f"completed the interrupted move to {before}")
        log.info(result.summary())
        return result
    if to is None:
        # the champion promoted before the current one (rollbacks do not count as promotions)
        promoted = [m["to"] for m in registry.history() if m["action"] == "promote"]
        position = max((i for i, v in enumerate(promoted) if v == before), default=None)
        previous = promoted[position - 1] if position else None
        if previous is None:
            raise ConfigError(f"registered model {params.registry.model_name!r}: no earlier champion to roll back to "
                              f"(current: {before or 'none'}); name one with --to VERSION")
        to = previous
    reason = f"rollback from {before} to {to}"
    run_id = registry.start_run("rollback", None, {"from": str(before), "to": str(to)})
    try:
        registry.move_champion(str(to), "rollback", reason, run_id)
        registry.download(str(to), workspace.champion)
    except BaseException:
        _end_run(registry, run_id, "FAILED")
        raise
    _end_run(registry, run_id, "FINISHED")
    result = RollbackResult(before=before, after=str(to), reason=reason)
    log.info(result.summary())
    return result
