"""The Prefect flow: the pipeline's stages as tasks, each calling the same stage function as the CLI.

``polyvox run`` runs it with Prefect's embedded server; ``flows/pipeline.py`` exposes it to
deployments. The flow body only wires tasks; stage logic lives in the stage functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Route the library's own log records into Prefect's run logs (must be set before Prefect loads).
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "polyvox")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE, CachePolicy  # noqa: E402

from polyvox.clean.stage import CleanResult, clean  # noqa: E402
from polyvox import dvcstate  # noqa: E402
from polyvox.config import Params, load_params  # noqa: E402
from polyvox.corpus.prepare import PrepareResult, prepare  # noqa: E402
from polyvox.ensemble.stage import EnsembleResult, ensemble  # noqa: E402
from polyvox.evaluate.stage import EvaluateResult, evaluate  # noqa: E402
from polyvox.fingerprint import fingerprint  # noqa: E402
from polyvox.features.stage import FeaturesResult, features  # noqa: E402
from polyvox.lock import workspace_lock  # noqa: E402
from polyvox.registry.stage import PromoteResult, promote  # noqa: E402
from polyvox.stages import STAGES  # noqa: E402
from polyvox.pretrain import stage as pretrain_stage  # noqa: E402
from polyvox.pretrain.stage import PretrainResult  # noqa: E402
from polyvox.train.trainer import TrainResult, train  # noqa: E402
from polyvox.train.vocoder import VocoderResult, train_vocoder  # noqa: E402
from polyvox.validate.stage import ValidateResult, validate  # noqa: E402
from polyvox.workspace import Workspace  # noqa: E402


def _markdown_table(title: str, figures: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in figures.items())
    return f"# {title}\n\n| | |\n|---|---|\n{rows}\n"


@dataclass
class StageInputs(CachePolicy):
    """Prefect's cache by inputs, keyed on the stage's own fingerprint of what it reads (data
    version, settings, upstream models, code) — the same fingerprint that makes the stage a no-op
    from the CLI and DVC — in this workspace. The flow computes it once per task (:func:`_cached`)
    and passes it as the task's ``inputs`` argument; the other arguments (upstream results) are not
    part of the key: the files they describe are.

    A cache hit skips the task (state ``Cached``), so the flow calls each cached task through
    :func:`_cached`, which refreshes the cache unless the stage's outputs on disk are complete for
    its inputs: deleted or half-written outputs are never hidden behind a cached result."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return fingerprint(task_ctx.task.name, str(Workspace.here().root), inputs["inputs"])


def _cached(stage_task, params: Params, workspace: Workspace, **named):
    """(``stage_task`` that may answer from Prefect's cache only when the stage's outputs are done,
    the stage's input fingerprint): computed once, through the stage protocol (polyvox.stages), it
    answers "done?" and keys the cache. ``named``: what names the run (a member)."""
    spec = STAGES[stage_task.name]
    inputs = spec.input_fingerprint(params, workspace, **named)
    done = spec.completed(params, workspace, inputs=inputs, **named) is not None
    return stage_task.with_options(refresh_cache=not done), inputs


# The stage is incremental itself (content hashes), so Prefect's input cache adds nothing here;
# retries cover a flaky filesystem or a teacher synthesiser that fails once.
@task(name="prepare", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def prepare_task(params: Params) -> PrepareResult:
    result = prepare(params, Workspace.here())
    create_markdown_artifact(_markdown_table("prepare", result.to_dict()), key="prepare-summary", description=result.summary())
    return result


# Validation is deterministic given its inputs; a failure is the data's, not a flake: no retries.
@task(name="validate", cache_policy=NO_CACHE)
def validate_task(params: Params) -> ValidateResult:
    workspace = Workspace.here()
    try:
        result = validate(params, workspace)
    finally:  # the summary is written even when the stage fails, and is what a person reads first
        summary = workspace.validated / "summary.md"
        if summary.is_file():
            create_markdown_artifact(summary.read_text(), key="validation-summary", description="validate stage")
    return result


@task(name="clean", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def clean_task(params: Params, validated: ValidateResult) -> CleanResult:
    return clean(params, Workspace.here())


def _tag_flow_run(tag: str) -> None:
    """Add ``tag`` to the flow run this task belongs to (shown and filterable in the Prefect UI)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(flow_run.id).tags
        if tag not in tags:
            client.update_flow_run(flow_run.id, tags=[*tags, tag])


@task(name="features", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def features_task(params: Params, cleaned: CleanResult) -> FeaturesResult:
    workspace = Workspace.here()
    result = features(params, workspace)
    _tag_flow_run(f"data:{workspace.data_version()}")  # which data this run trained and scored on
    return result


# The base trains like a member (resumable, so a retry picks up where it was) and is skipped when
# models/base already holds it; its base corpus's data half is incremental like the main one.
@task(name="pretrain", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pretrain_task(params: Params, featured: FeaturesResult) -> PretrainResult:
    result = pretrain_stage.pretrain(params, Workspace.here())
    figures = {"origin": result.origin, "folder": result.folder}
    if result.train is not None:
        figures |= {"steps": result.train.steps, "best validation loss": result.train.best_val_loss,
                    "seconds per step": f"{result.train.seconds_per_step:.3f}", "stopped by": result.train.stopped_by}
    create_markdown_artifact(_markdown_table("pretrain (base model)", figures), key="pretrain", description=result.summary())
    return result


# Training resumes from its last checkpoint, so a retry after a crash or a kill picks up where it was.
@task(name="train", task_run_name="train-{member}", retries=1, retry_delay_seconds=5,
      cache_policy=StageInputs())
def train_task(params: Params, member: str, featured: FeaturesResult, inputs: object) -> TrainResult:
    result = train(params, Workspace.here(), member=member)
    create_markdown_artifact(_markdown_table(f"train {member}", {
        "steps": result.steps, "best validation loss": result.best_val_loss, "device": f"{result.device} x{result.world_size}",
        "seconds per step": f"{result.seconds_per_step:.3f}", "stopped by": result.stopped_by}),
        key=f"train-{member}".lower().replace("_", "-").replace(".", "-"), description=result.summary())
    return result


@task(name="train-vocoder", retries=1, retry_delay_seconds=5,
      cache_policy=StageInputs())
def vocoder_task(params: Params, featured: FeaturesResult, inputs: object) -> VocoderResult:
    return train_vocoder(params, Workspace.here())


@task(name="ensemble", cache_policy=StageInputs())
def ensemble_task(params: Params, trained: list[TrainResult], vocoder: VocoderResult, inputs: object) -> EnsembleResult:
    result = ensemble(params, Workspace.here())
    figures = {f"member {name}": f"{score:.4f} (weight {result.weights[name]:.3f})"
               for name, score in result.member_scores.items()}
    create_markdown_artifact(_markdown_table("ensemble", {
        "mode": result.mode, "score": result.loss, **figures, "ensemble": f"{result.ensemble_score:.4f}",
        "candidate": result.candidate, "utterances": f"{result.utterances} ({result.split})"}),
        key="ensemble-comparison", description=result.summary())
    return result


@task(name="evaluate", cache_policy=StageInputs())
def evaluate_task(params: Params, candidate: EnsembleResult, inputs: object) -> EvaluateResult:
    result = evaluate(params, Workspace.here())
    systems = result.metrics["systems"]
    rows = {metric: " / ".join(f"{systems[s][metric]:.3f}" if isinstance(systems[s].get(metric), float) else "—"
                               for s in ("candidate", "champion", "real") if s in systems)
            for metric in ("wer", "cer", "mcd_db", "speaker_similarity", "mos_ovrl", "rtf_one_thread")}
    create_markdown_artifact(_markdown_table(f"evaluate ({' / '.join(s for s in ('candidate', 'champion', 'real') if s in systems)})",
                                             {**rows, "report": str(result.report)}),
                             key="evaluation", description=result.summary())
    return result


# Registry writes are not idempotent (a retry would register a second version): no retries.
@task(name="promote", cache_policy=NO_CACHE)
def promote_task(params: Params, evaluated: EvaluateResult) -> PromoteResult:
    result = promote(params, Workspace.here())
    rows = "\n".join(f"| {r['rule']} | {r['value']} | {r['op']} {r['threshold']} | {'pass' if r['passed'] else 'FAIL'} | "
                     f"{r['detail']} |" for r in result.rules)
    create_markdown_artifact(f"# gate: version {result.version} {'promoted' if result.promoted else 'refused'}\n\n"
                             f"champion before: {result.champion_before or 'none'}, after: {result.champion_after or 'none'}"
                             f"\n\n| rule | value | threshold | | why |\n|---|---|---|---|---|\n{rows}\n",
                             key="gate-decision", description=result.summary())
    return result


@flow(name="polyvox-pipeline")
def pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, str]:
    """Run every stage; returns each stage's one-line summary."""
    params = load_params(params_file, overrides or [])
    workspace = Workspace.here()
    with workspace_lock(workspace.root, "polyvox run (Prefect flow)"):
        # dvc.lock gets the stages that finished, the champion its .dvc file (polyvox.dvcstate), also
        # when a later stage failed: dvc status and dvc repro then see what this run made
        unrecorded = dvcstate.why_not(workspace.root, Path(params_file), overrides or [])
        finished: list[str] = []
        try:
            return _stages(params, workspace, finished)
        finally:
            if unrecorded is None:
                dvcstate.record(workspace.root, finished, workspace.champion)
            else:
                get_run_logger().info("dvc.lock not updated: %s", unrecorded)


def _stages(params: Params, workspace: Workspace, finished: list[str]) -> dict[str, str]:
    """The stages in order; each one's dvc.yaml name is appended to ``finished`` when it returns."""

    def done(name: str, result):
        finished.append(name)
        return result

    prepared = done("prepare", prepare_task(params))
    validated = done("validate", validate_task(params, wait_for=[prepared]))
    cleaned = done("clean", clean_task(params, validated))
    featured = done("features", features_task(params, cleaned))
    # The base exists only for text→mel members that fine-tune from it (train.init_from: base); where
    # none does, the stage says so in models/base at once (as `dvc repro` runs it) and trains nothing.
    based = [("pretrain", done("pretrain", pretrain_task(params, featured)))]
    # Members train one after another: each one uses every core (or the GPU) by itself.
    # (``inputs``: each cached stage's fingerprint, taken when its upstream has finished)
    trained = []
    for m in params.train.members:
        member_task, inputs = _cached(train_task, params, workspace, member=m.name)
        trained.append((f"train {m.name}", done(f"train@{m.name}", member_task(
            params, m.name, featured, inputs, wait_for=[result for _, result in based]))))
    vocoder_run, inputs = _cached(vocoder_task, params, workspace)
    vocoder = done("train-vocoder", vocoder_run(params, featured, inputs))
    ensemble_run, inputs = _cached(ensemble_task, params, workspace)
    candidate = done("ensemble", ensemble_run(params, [result for _, result in trained], vocoder, inputs))
    evaluate_run, inputs = _cached(evaluate_task, params, workspace)
    evaluated = done("evaluate", evaluate_run(params, candidate, inputs))
    promoted = done("promote", promote_task(params, evaluated))
    return {name: result.summary() for name, result in
            (("prepare", prepared), ("validate", validated), ("clean", cleaned), ("features", featured), *based, *trained,
             ("train-vocoder", vocoder), ("ensemble", candidate), ("evaluate", evaluated), ("promote", promoted))}
