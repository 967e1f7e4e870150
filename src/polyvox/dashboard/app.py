"""``polyvox dashboard``: a read-only page of the run history, from MLflow (and Prefect when reachable).

One row per pipeline run (stage runs grouped by their ``pipeline_run`` tag: the Prefect flow run,
or ``POLYVOX_RUN_ID``): when it started, what triggered it, the data version, each stage's
duration, the candidate's metrics (WER and CER with the judge that heard them: the evaluate run's
``asr`` tag, pocketsphinx for runs from before it), the gate decision with the rules that failed,
and audio of the candidate's samples. Above it: the current champion, the history of alias moves, and trend
plots. No JavaScript, no CDN: one HTML page with inline style and images; audio is served by
``/audio/<run>/<file>`` from the run's MLflow artifacts. Jinja2 autoescape escapes every string.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from polyvox.tracking import PARENT_TAG, client_and_experiment, redact

log = logging.getLogger(__name__)

STAGES = ("prepare", "validate", "clean", "features", "pretrain", "train", "train-vocoder", "ensemble", "evaluate", "promote")
# (metric, column heading: its unit and which way is better)
SHOWN = (("wer", "WER (0–1, lower is better)"), ("cer", "CER (0–1, lower is better)"),
         ("mcd_db", "MCD (dB, lower is better)"), ("speaker_similarity", "similarity (cosine, higher is better)"),
         ("mos_ovrl", "MOS (DNSMOS 1–5, higher is better)"), ("rtf_one_thread", "RTF (1 thread, lower is better)"))
JUDGED = {"wer": "wer_pocketsphinx", "cer": "cer_pocketsphinx"}  # ASR figures → their second opinion's
UNJUDGED = "pocketsphinx"  # the ASR of evaluate runs logged before the `asr` tag
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SAMPLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.wav$")

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polyvox — run history</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}th{background:#f3f3f3}
.promoted{color:#1a7f37;font-weight:600}.refused{color:#b42318;font-weight:600}small{color:#555}
audio{height:2em;width:16em;display:block}code{background:#f6f6f6}img{max-width:100%}
</style></head><body>
<h1>polyvox — run history</h1>
<p><small>{{ source }} · registered model <code>{{ model_name }}</code> · {{ now }}</small></p>
{% if prefect_problem %}<p id="prefect-problem"><small>⚠ {{ prefect_problem }}: the runs below are MLflow's, without their Prefect state.</small></p>{% endif %}
<h2>Champion</h2>
{% if champion %}<p id="champion">version <b>{{ champion }}</b></p>{% else %}<p id="champion">no champion yet</p>{% endif %}
<table id="alias-history"><tr><th>time</th><th>action</th><th>from</th><th>to</th><th>reason</th></tr>
{% for move in history|reverse %}<tr><td>{{ move.time }}</td><td>{{ move.action }}</td><td>{{ move["from"] or "—" }}</td>
<td>{{ move.to }}</td><td>{{ move.reason }}</td></tr>{% endfor %}</table>
<h2>Trends</h2>{% if trend %}<p><img alt="metric trends over runs" src="{{ trend }}"></p>
{% else %}<p id="no-trend"><small>Trend plots appear once two pipeline runs have been evaluated (a line needs two points).</small></p>{% endif %}
<h2>Runs</h2>
<table id="runs"><thead><tr><th>started</th><th>trigger</th><th>data version</th><th>stages (wall time, s)</th>
{% for _, label in shown %}<th>{{ label }}</th>{% endfor %}<th>gate</th><th>listen</th></tr></thead><tbody>
{% for run in runs %}<tr class="run">
<td>{{ run.started }}<br><small>{{ run.id }}</small>{% if run.prefect %}<br><small>Prefect: {{ run.prefect }}</small>{% endif %}</td>
<td>{{ run.trigger }}</td><td><code>{{ run.data_version }}</code>{% if run.speakers %}<br><small>{{ run.speakers }}</small>{% endif %}</td>
<td>{% for stage, seconds in run.stages %}{{ stage }} {{ "%.0f"|format(seconds) }}<br>{% endfor %}</td>
{% for key, _ in shown %}<td>{{ run.metrics.get(key, "—") }}{% if key in judged and key in run.metrics %}<br><small>{{ run.asr }}</small>
{% if judged[key] in run.metrics %}<br><small>{{ run.second }} {{ run.metrics[judged[key]] }}</small>{% endif %}{% endif %}</td>{% endfor %}
<td>{% if run.decision %}<span class="{{ run.decision }}">{{ run.decision }}</span>{% if run.version %} v{{ run.version }}{% endif %}
{% for rule in run.failed %}<br><small>✘ {{ rule }}</small>{% endfor %}{% else %}—{% endif %}</td>
<td>{% for sample in run.samples %}<small>{{ sample.name }}</small><audio controls preload="none" src="{{ sample.url }}"></audio>{% endfor %}</td>
</tr>{% endfor %}</tbody></table>
{% if truncated %}<p><small>The newest runs only (MLflow's newest {{ runs_shown }} stage runs).</small></p>{% endif %}
</body></html>
"""


RUNS_SHOWN = 500  # the newest MLflow runs the page reads (a pipeline run is ~10 of them)
CACHE_SECONDS = 10.0  # how long one reading of MLflow serves every page load


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def collect(uri: str, model_name: str) -> dict:
    """Everything the page shows, read from MLflow (and Prefect, when PREFECT_API_URL is set)."""
    from mlflow.exceptions import MlflowException

    client, experiment_id = client_and_experiment(uri)
    runs = client.search_runs([experiment_id], max_results=RUNS_SHOWN, order_by=["attributes.start_time DESC"])
    groups: dict[str, dict] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) == "true":  # the pipeline run's own MLflow run: its stages are the rows' content
            continue
        key = tags.get("pipeline_run", run.info.run_id)
        group = groups.setdefault(key, {"id": key, "start": run.info.start_time, "trigger": tags.get("trigger", "?"),
                                        "data_version": "", "stages": {}, "metrics": {}, "decision": None,
                                        "version": None, "failed": [], "samples": [], "speakers": "", "prefect": None,
                                        "asr": UNJUDGED, "second": None})
        group["start"] = min(group["start"], run.info.start_time)
        stage = tags.get("stage", run.info.run_name)
        if stage == "train" and tags.get("member"):
            stage = f"train:{tags['member']}"
        if run.info.end_time:
            group["stages"][stage] = group["stages"].get(stage, 0.0) + (run.info.end_time - run.info.start_time) / 1000
        group["data_version"] = group["data_version"] or tags.get("data_version", "")
        if stage == "evaluate":
            keys = [k for k, _ in SHOWN] + list(JUDGED.values())
            group["metrics"] = {k: _fmt(run.data.metrics[f"candidate.{k}"]) for k in keys
                                if f"candidate.{k}" in run.data.metrics}
            group["asr"] = tags.get("asr", UNJUDGED)
            group["second"] = tags.get("asr_second_opinion") if tags.get("asr_second_opinion") != "none" else None
            group["speakers"] = tags.get("speakers", "")
            try:
                files = client.list_artifacts(run.info.run_id, "samples")
            except (MlflowException, OSError):
                files = []
            group["samples"] = [{"name": Path(f.path).name, "url": f"audio/{run.info.run_id}/{Path(f.path).name}"}
                                for f in files if SAMPLE.match(Path(f.path).name)]
        if stage == "promote":
            group["decision"] = tags.get("decision")
            versions = [v for v in client.search_model_versions(f"name='{model_name}'") if v.run_id == run.info.run_id]
            if versions:
                group["version"] = versions[0].version
                group["failed"] = [f"{k.removeprefix('gate.')}: {v.removeprefix('FAIL: ')}"
                                   for k, v in sorted(versions[0].tags.items())
                                   if k.startswith("gate.") and v.startswith("FAIL")]
    champion, history = None, []
    try:
        from polyvox.registry.store import ALIAS, HISTORY_TAG

        model = client.get_registered_model(model_name)
        history = json.loads(model.tags.get(HISTORY_TAG, "[]"))
        champion = next((str(v) for a, v in (model.aliases or {}).items() if a == ALIAS), None)
    except MlflowException:
        pass  # no registered model yet: no champion and no history to show
    ordered = sorted(groups.values(), key=lambda g: g["start"], reverse=True)
    prefect_problem = _prefect_states(ordered)
    for group in ordered:
        group["started"] = datetime.fromtimestamp(group["start"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        group["stages"] = [(s, group["stages"][s]) for s in sorted(group["stages"], key=lambda s: (
            STAGES.index(s.split(":")[0]) if s.split(":")[0] in STAGES else len(STAGES), s))]
    return {"runs": ordered, "champion": champion, "history": history, "prefect_problem": prefect_problem,
            "truncated": len(runs) == RUNS_SHOWN}


def _prefect_states(groups: list[dict]) -> str | None:
    """Each group that is a Prefect flow run gets its name and state (only with PREFECT_API_URL set).
    Returns why Prefect could not be asked, for the page to say; the page shows MLflow's runs anyway."""
    if not os.environ.get("PREFECT_API_URL"):
        return None
    import uuid

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            for group in groups:
                try:
                    flow_run = client.read_flow_run(uuid.UUID(group["id"]))
                except ValueError:
                    continue
                except ObjectNotFound:  # the flow run was deleted in Prefect; its MLflow runs remain
                    group["prefect"] = "deleted in Prefect"
                    continue
                group["prefect"] = f"{flow_run.name} ({flow_run.state.name if flow_run.state else '?'})"
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        problem = f"Prefect at {redact(os.environ['PREFECT_API_URL'])} did not answer ({type(exc).__name__})"
        log.warning("%s: %s", problem, str(exc)[:200])
        return problem
    return None


def _series(run: dict, key: str) -> dict[str | None, float]:
    """A run's value of ``key`` by judge: WER by one ASR is not comparable with WER by another, but
    a second opinion is the same judge as the runs it judged alone (pocketsphinx before Whisper)."""
    values = {run["asr"] if key in JUDGED else None: float(run["metrics"][key])} if key in run["metrics"] else {}
    if key in JUDGED and run["second"] and JUDGED[key] in run["metrics"]:
        values.setdefault(run["second"], float(run["metrics"][JUDGED[key]]))
    return values


def trend_png(runs: list[dict]) -> str | None:
    points = [r for r in reversed(runs) if r["metrics"]]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 2.8))
    for axis, (key, label) in zip(axes, (("wer", "WER"), ("speaker_similarity", "speaker similarity"),
                                         ("mcd_db", "MCD (dB)"))):
        series: dict[str | None, list[tuple[datetime, float]]] = {}
        for run in points:
            for judge, value in _series(run, key).items():
                series.setdefault(judge, []).append((datetime.fromtimestamp(run["start"] / 1000, timezone.utc), value))
        for judge in sorted(series, key=str):
            axis.plot(*zip(*series[judge]), marker="o", label=judge)
        if key in JUDGED and series:
            axis.legend(fontsize=7)
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(uri: str, model_name: str) -> FastAPI:
    from jinja2 import Environment

    template = Environment(autoescape=True).from_string(TEMPLATE)
    app = FastAPI(title="polyvox dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    cache = Path(tempfile.mkdtemp(prefix="polyvox-dashboard-"))

    cached: dict = {}
    lock = threading.Lock()

    def fresh() -> dict:
        """:func:`collect`, at most once every CACHE_SECONDS however many people reload the page."""
        with lock:
            if not cached or time.monotonic() - cached["at"] > CACHE_SECONDS:
                cached.update(data=collect(uri, model_name), at=time.monotonic())
            return cached["data"]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        data = fresh()
        shown = redact(uri)  # never the password of a database URI
        source = shown if shown.startswith(("http://", "https://")) else "MLflow " + shown.split("?")[0]
        return template.render(**data, runs_shown=RUNS_SHOWN, shown=SHOWN, judged=JUDGED, trend=trend_png(data["runs"]), model_name=model_name,
                               source=source, now=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/audio/{run_id}/{name}")
    def audio(run_id: str, name: str) -> FileResponse:
        if not RUN_ID.match(run_id) or not SAMPLE.match(name):
            raise HTTPException(404, "no such sample")
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        target = cache / run_id
        try:
            path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"samples/{name}",
                                                            dst_path=str(target), tracking_uri=uri))
        except (MlflowException, OSError):
            raise HTTPException(404, "no such sample") from None
        if cache.resolve() not in path.resolve().parents:
            raise HTTPException(404, "no such sample")
        return FileResponse(path, media_type="audio/wav")

    return app


def dashboard(uri: str, model_name: str, host: str = "127.0.0.1", port: int = 8050) -> None:
    import uvicorn

    uvicorn.run(create_app(uri, model_name), host=host, port=port, log_level="info")
