"""The three ways in (CLI, DVC, Prefect) stay wired to the same stage functions and params."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from typer.main import get_command

from polyvox.cli import app
from polyvox.workspace import Workspace

import corpora
from conftest import REPO
from tiny_project import TINY_MODEL, TINY_VOCODER, as_overrides, tiny_params


def _flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
    return keys


def _expand(stages: dict, params: dict) -> dict:
    """Stage name → definition, with ``foreach`` over a params mapping expanded (``${key}``)."""
    expanded = {}
    for name, stage in stages.items():
        if "foreach" not in stage:
            expanded[name] = stage
            continue
        source = stage["foreach"].removeprefix("${").removesuffix("}")
        items = params
        for part in source.split("."):
            items = items[part]
        for key in items:  # a mapping: DVC names each stage by its key
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            expanded[f"{name}@{key}"] = yaml.safe_load(text)
    return expanded


def test_dvc_yaml_matches_cli_params_and_workspace():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = _expand(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"], params)
    commands = set(get_command(app).commands)
    param_keys = _flatten(params)
    ws = Workspace(REPO)
    known_outs = {p.relative_to(REPO).as_posix() for p in (ws.raw, ws.validated, ws.clean, ws.features)}
    models, reports = ws.models.relative_to(REPO).as_posix(), ws.reports.relative_to(REPO).as_posix()
    produced: list[str] = []
    for name, stage in stages.items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "polyvox" and argv[1] == name.split("@")[0] and argv[1] in commands, stage["cmd"]
        if "@" in name:
            assert argv[2:] == ["--member", name.split("@")[1]], stage["cmd"]
        for key in stage.get("params", []):
            assert key in param_keys, f"dvc.yaml stage {name} lists unknown param {key}"
        for dep in stage.get("deps", []):
            if dep.startswith(("data/", "models/", "reports/")):
                assert any(dep == out or dep.startswith(out + "/") for out in produced), f"{name}: {dep} is no earlier output"
            else:
                assert (REPO / dep).exists(), f"dvc.yaml stage {name} depends on missing {dep}"
        for out in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            out = out if isinstance(out, str) else next(iter(out))
            assert out in known_outs or out.startswith((models + "/", reports + "/")), f"dvc.yaml stage {name} writes {out}"
            produced.append(out)
    members = list(params["train"]["members"])
    assert list(stages) == ["prepare", "validate", "clean", "features", "pretrain", *[f"train@{m}" for m in members], "train-vocoder",
                            "ensemble", "evaluate", "promote"]
    # the ensemble reads every member it combines, and the candidate is where the workspace says
    combined = params["ensemble"]["members"] or members
    checkpoints = {d for d in stages["ensemble"]["deps"] if d.startswith(models + "/") and d.endswith("/best.pt")}
    assert checkpoints == {f"{models}/{m}/best.pt" for m in [*combined, "vocoder"]}, checkpoints
    candidate = ws.candidate.relative_to(REPO).as_posix()
    assert candidate in stages["ensemble"]["outs"] and candidate in stages["evaluate"]["deps"]


def _task_states(flow_run_id) -> dict[str, str]:
    """Task run name → state name for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {re.sub(r"-[0-9a-f]{3}$", "", run.name): run.state.name for run in runs}  # Prefect's default names end in -xyz


def test_flow_runs_the_pipeline_through_prefect(tmp_path, kathleen_files, workspace, prefect_server, monkeypatch):
    from polyvox.flow import pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    tiny = [*as_overrides("model", TINY_MODEL), *as_overrides("vocoder", TINY_VOCODER), "train.max_steps=2",
            "pretrain.max_steps=2", "pretrain.source=null", "vocoder.init_from=null",
            "demo.utterances_per_speaker=3", "train.batch_size=2", "vocoder.max_steps=2",
            "train.members=[{name: a, seed: 1, conditioning: audio, variant: {}}, "
            "{name: b, seed: 2, conditioning: audio+image, variant: {kernel_size: 3}}]",
            "features.splits.test=0.34", "ensemble.fit_steps=20", "evaluate.rtf_sentences=1", "evaluate.centroid_takes=2",
            "evaluate.report_samples=1", "evaluate.bootstrap_resamples=100"]
    overrides = [f"prepare.corpus={corpus}", "validate.min_accepted_share=0.3", "parallel.workers=1", *tiny]
    state = pipeline(params_file="params.yaml", overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["pretrain"].startswith("base (") and "base: 2 steps" in summary["pretrain"]
    assert summary["train a"].startswith("a: 2 steps") and summary["train b"].startswith("b: 2 steps")
    assert "vocoder" in summary["train-vocoder"]
    assert summary["ensemble"].startswith("ensemble (weighted)") and "members a" in summary["ensemble"]
    assert summary["evaluate"].startswith("candidate WER") and (workspace / "reports/evaluate/report.html").is_file()
    assert summary["promote"].startswith("version 1 ") and (workspace / "reports/promote.json").is_file()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(state.state_details.flow_run_id).tags
    assert [t for t in tags if t.startswith("data:")] == [f"data:{Workspace(workspace).data_version()}"]

    # the nightly case: nothing new arrived, so the rerun trains, scores and registers nothing
    stamps = {p: p.stat().st_mtime_ns for p in (workspace / "models").rglob("*.pt")}
    report = (workspace / "reports/evaluate/report.html").stat().st_mtime_ns
    again = pipeline(params_file="params.yaml", overrides=overrides, return_state=True)
    assert again.is_completed(), again.message
    rerun = again.result()
    assert rerun["train a"] == summary["train a"] and rerun["train-vocoder"] == summary["train-vocoder"]
    assert rerun["promote"].startswith("version 1 ")  # nothing new registered
    # Prefect's cache by inputs: the expensive tasks were not even run; a cheap stage (promote) ran
    states = _task_states(again.state_details.flow_run_id)
    assert all(states.get(name) == "Cached" for name in ("train-a", "train-b", "train-vocoder", "ensemble", "evaluate")), states
    assert states["promote"] == "Completed" and _task_states(state.state_details.flow_run_id)["train-a"] == "Completed"
    assert {p: p.stat().st_mtime_ns for p in (workspace / "models").rglob("*.pt")} == stamps
    assert (workspace / "reports/evaluate/report.html").stat().st_mtime_ns == report
    # an output gone from disk is never hidden behind a cached result: that stage runs again
    (workspace / "reports/evaluate/report.html").unlink()
    third = pipeline(params_file="params.yaml", overrides=overrides, return_state=True)
    states = _task_states(third.state_details.flow_run_id)
    assert states["evaluate"] == "Completed" and states["train-a"] == "Cached", states
    assert (workspace / "reports/evaluate/report.html").is_file()
    for out in ("models/a/last.pt", "models/b/speakers.pt", "models/vocoder/best.pt"):
        assert (workspace / out).is_file(), out
    assert summary["prepare"].startswith("8 rows, 1 speakers") and "5 rows with parse errors" in summary["prepare"]
    assert summary["validate"].startswith("3/8 rows accepted")
    assert summary["features"].startswith("3 utterances")
    assert len(pq.read_table(workspace / "data/features/index.parquet")) == 3


def test_flow_fails_when_validation_fails(tmp_path, kathleen_files, workspace, prefect_server):
    from polyvox.flow import pipeline

    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    state = pipeline(params_file="params.yaml", overrides=[f"prepare.corpus={corpus}"], return_state=True)
    assert state.is_failed()
    assert not (workspace / "data/clean").exists()  # nothing downstream ran on rejected data
    assert (workspace / "data/validated/quarantine.parquet").is_file()


def _env(home: Path) -> dict[str, str]:
    """A plain user's environment: the venv's polyvox and dvc on PATH, a fresh HOME, no telemetry."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DO_NOT_TRACK": "1", "HOME": str(home),
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _dvc_project(tmp_path: Path, params: dict):
    """A copy of the project (src/, dvc.yaml, .dvc/config, ``params``) in a fresh git + DVC repository;
    returns (folder, run): ``run(*args)`` runs a command there with the venv's dvc and polyvox on PATH."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", project)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(tmp_path)

    def run(*args, cwd=project):
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)

    (project / ".gitignore").write_text("__pycache__/\n*.egg-info/\n/mlflow.db\n/mlruns/\n/.prefect/\n.polyvox.lock\n")
    for step in (("git", "init", "-q"), ("dvc", "init", "-q")):
        assert run(*step).returncode == 0, step
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the project's own: analytics off, remote
    for step in (("git", "add", "-A"), ("git", "commit", "-qm", "project")):
        assert run(*step).returncode == 0, step
    return project, run


def _contents(project: Path) -> dict[str, str]:
    """sha256 of every file the pipeline writes (data/, models/, reports/)."""
    return {str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("data", "models", "reports") for p in sorted((project / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_runs_prepare_and_then_skips(tmp_path):
    """`dvc repro` in a copy of the project builds a tiny demo corpus and trains tiny members and a
    vocoder on it, then a rerun does nothing, and neither does `polyvox run` after it."""
    params = tiny_params(REPO / "params.yaml")
    project, run = _dvc_project(tmp_path, params)
    dvc = "dvc"
    first = run(str(dvc), "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    voices = len(params["demo"]["voices"])
    rows = voices * params["demo"]["utterances_per_speaker"]
    assert len(pq.read_table(project / "data/raw/manifest.parquet")) == rows
    assert len(pq.read_table(project / "data/features/index.parquet")) == rows
    for member in params["train"]["members"]:
        assert (project / "models" / member / "best.pt").is_file(), member
    assert (project / "models/vocoder/vocoder.json").is_file()
    assert (project / "models/candidate/voice.json").is_file() and (project / "reports/evaluate/report.html").is_file()
    assert (project / "reports/promote.json").is_file() and (project / "mlflow.db").is_file()  # the embedded registry
    shown = run(str(dvc), "metrics", "show", "--json")
    assert shown.returncode == 0 and "mcd_db" in shown.stdout, shown.stdout + shown.stderr
    second = run(str(dvc), "repro")
    assert second.returncode == 0 and "didn't change, skipping" in second.stdout, second.stdout
    # the flow after dvc repro: every stage finds its outputs done, so no file changes, nor dvc.lock
    before, lock = _contents(project), (project / "dvc.lock").read_bytes()
    flow = run("polyvox", "run")
    assert flow.returncode == 0, flow.stdout + flow.stderr
    assert _contents(project) == before and (project / "dvc.lock").read_bytes() == lock
    assert "up to date" in run(str(dvc), "status").stdout
    # the configured local-folder remote (a sibling of the project): push, lose everything, pull back
    pushed = run(str(dvc), "push")
    assert pushed.returncode == 0 and (tmp_path / "polyvox-dvc-remote").is_dir(), pushed.stdout + pushed.stderr
    manifest = (project / "data/raw/manifest.parquet").read_bytes()
    shutil.rmtree(project / "data" / "raw")  # (data/.gitignore, which DVC wrote, stays)
    shutil.rmtree(project / "models" / "candidate")
    shutil.rmtree(project / ".dvc" / "cache")
    pulled = run(str(dvc), "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (project / "data/raw/manifest.parquet").read_bytes() == manifest
    assert (project / "models/candidate/voice.json").is_file()
    for step in (("git", "add", "-A"), ("git", "commit", "-qm", "reproduced")):  # dvc.lock, as a user would
        assert run(*step).returncode == 0, step
    changed = run(str(dvc), "exp", "run", "-S", "demo.utterances_per_speaker=3")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert len(pq.read_table(project / "data/raw/manifest.parquet")) == voices * 3
    assert len(pq.read_table(project / "data/features/index.parquet")) == voices * 3



def _first_hour() -> list[str]:
    """The lines of README's first-hour block, as written (comments and all)."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("<!-- first-hour:"):]
    block = block[block.index("```bash\n") + len("```bash\n"):]
    return block[:block.index("```")].strip().splitlines()


@pytest.mark.slow
def test_polyvox_run_writes_the_state_dvc_reads_and_dvc_pull_brings_the_champion_back(tmp_path, kathleen, kathleen_files):
    """After `polyvox run` (what `make demo` and the deployment run), `dvc status` is clean and `dvc
    repro` runs nothing; `dvc push` stores the run's data and models, and `dvc pull` in a fresh clone
    brings them back, the champion with them. Then README's first hour, as written, in that project."""
    params = tiny_params(REPO / "params.yaml")
    params["promote"].update(max_wer=1.0, max_wer_increase=1.0, min_speaker_similarity=0.0, max_mcd_db=1000.0,
                             max_rtf=10.0, require_ensemble_gain=False)  # the tiny voice must become champion
    project, run = _dvc_project(tmp_path, params)
    flow = run("polyvox", "run")
    assert flow.returncode == 0, flow.stdout + flow.stderr
    assert "promoted to champion" in flow.stdout, flow.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["prepare", "validate", "clean", "features", "pretrain", "train@voice", "train-vocoder",
                          "ensemble", "evaluate", "promote"]
    assert (project / "models/champion.dvc").is_file()
    status = run("dvc", "status")
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout, status.stdout
    before = _contents(project)
    repro = run("dvc", "repro")
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    assert _contents(project) == before
    for step in (("git", "add", "-A"), ("git", "commit", "-qm", "a run"), ("dvc", "push")):
        done = run(*step)
        assert done.returncode == 0, (step, done.stdout + done.stderr)
    clone = tmp_path / "clone"
    assert run("git", "clone", "-q", str(project), str(clone)).returncode == 0
    pulled = run("dvc", "pull", cwd=clone)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    champion = {p.relative_to(project): p.read_bytes() for p in (project / "models/champion").rglob("*") if p.is_file()}
    assert champion and {p.relative_to(clone): p.read_bytes() for p in (clone / "models/champion").rglob("*")
                         if p.is_file()} == champion
    assert (clone / "models/candidate/voice.json").is_file() and (clone / "data/features/index.parquet").is_file()
    assert "up to date" in run("dvc", "status", cwd=clone).stdout

    # README's first hour: every line as written but the two that make this workspace and its PATH
    lines = _first_hour()
    assert lines[0].startswith("make demo ") and lines[1].startswith("source .venv/bin/activate ")
    corpus = project / "path/to/your/corpus"
    (corpus / "wavs").mkdir(parents=True)
    texts = corpora.kathleen_texts(kathleen)
    for take in kathleen_files[:4]:
        shutil.copy(take, corpus / "wavs" / take.name)
    (corpus / "metadata.csv").write_text("".join(f"{t.stem}|{texts[t.stem]}|{texts[t.stem]}\n" for t in kathleen_files[:4]))
    script = "set -euo pipefail\n" + "\n".join(lines[2:]) + "\n"
    log = tmp_path / "first-hour.log"  # a file, not a pipe: the servers left running hold their output open
    with open(log, "w") as output:
        hour = subprocess.Popen(["bash", "-c", script], cwd=project, env={**_env(tmp_path), "PYTHONUNBUFFERED": "1"},
                                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            hour.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone when its servers failed to start
                os.killpg(hour.pid, signal.SIGTERM)  # the service and the dashboard it started in the background
    said = log.read_text()
    assert hour.returncode == 0, said
    for name in ("hello.wav", "piped.wav", "http.wav"):
        audio, rate = sf.read(project / name)
        assert audio.size > rate // 4 and np.abs(audio).max() > 0.01, name
    assert "Data and pipelines are up to date." in said
    summary = json.loads((project / "data/validated/summary.json").read_text())
    assert (summary["rows"], summary["accepted"]) == (4, 4), summary

def test_deployment_runs_through_a_prefect_server_and_worker(tmp_path, kathleen_files, prefect_server):
    """prefect.yaml deployed to a real server on loopback, a run triggered through the API, a process
    worker picks it up, and the run completes."""
    import os

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "prefect.yaml"):
        shutil.copy(REPO / name, project / name)
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "POLYVOX_PROJECT": str(project),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    run = lambda *args: subprocess.run([prefect, *args], cwd=project, env=env, capture_output=True, text=True,  # noqa: E731
                                       timeout=300)
    created = run("work-pool", "create", "polyvox-local", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    tiny = [*as_overrides("model", TINY_MODEL), *as_overrides("vocoder", TINY_VOCODER), "train.max_steps=2",
            "pretrain.max_steps=2", "pretrain.source=null", "vocoder.init_from=null",
            "demo.utterances_per_speaker=3", "train.batch_size=2", "vocoder.max_steps=2", "features.splits.test=0.34",
            "ensemble.fit_steps=20", "evaluate.rtf_sentences=1", "evaluate.centroid_takes=2",
            "evaluate.report_samples=1", "evaluate.bootstrap_resamples=100", "parallel.workers=1",
            f"prepare.corpus={corpus}", "validate.min_accepted_share=0.3"]
    flow_run = run_deployment("polyvox-pipeline/nightly", parameters={"overrides": tiny}, timeout=0)
    worker = run("worker", "start", "--pool", "polyvox-local", "--run-once")
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    import asyncio

    async def final_state():
        async with get_client() as client:
            deadline = asyncio.get_event_loop().time() + 300
            while True:
                state = (await client.read_flow_run(flow_run.id)).state
                if state.is_final() or asyncio.get_event_loop().time() > deadline:
                    return state
                await asyncio.sleep(1)

    state = asyncio.run(final_state())
    assert state.is_completed(), f"{state.name}: {state.message}\n{worker.stdout[-3000:]}"
    assert (project / "reports/evaluate/report.html").is_file() and (project / "reports/promote.json").is_file()


def test_deploying_without_a_project_is_refused_at_deploy_time(tmp_path, prefect_server):
    """POLYVOX_PROJECT unset: Prefect would store the literal `{{ $POLYVOX_PROJECT }}` as the runs'
    directory; prefect.yaml's build step refuses the deploy instead, saying what to export."""
    import os

    from prefect.settings import PREFECT_API_URL

    from polyvox.deploy import require_project

    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "prefect.yaml"):
        shutil.copy(REPO / name, project / name)
    env = {k: v for k, v in os.environ.items() if k != "POLYVOX_PROJECT"} | {
        "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    run = lambda *args: subprocess.run([prefect, *args], cwd=project, env=env, capture_output=True, text=True,  # noqa: E731
                                       timeout=300)
    run("work-pool", "create", "polyvox-local", "--type", "process")  # may exist already (another test made it)
    deployed = run("--no-prompt", "deploy", "--all")
    said = deployed.stdout + deployed.stderr
    assert deployed.returncode != 0 and "POLYVOX_PROJECT is not set" in said, said[-3000:]

    assert require_project(str(project)) == {"project": str(project)}
    for wrong, says in (("", "not set"), ("project", "relative"), (str(tmp_path), "no params.yaml")):
        with pytest.raises(ValueError, match=says):
            require_project(wrong)


def test_the_offline_plots_template_is_what_the_pinned_bundle_writes():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "offline_plots.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="needs Debian's chromium and chromium-driver (make test installs them)")
def test_dvc_plots_render_in_a_real_browser_with_the_network_off(tmp_path):
    """`dvc plots show` loaded Vega from a CDN and drew nothing offline (issue 32 §4). With the
    project's .dvc/config (plots.html_template: the inline bundle), a training curve renders in a
    browser that can reach nothing but loopback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    project = tmp_path / "project"
    (project / "models/voice").mkdir(parents=True)
    (project / "models/voice/metrics.csv").write_text("step,mel\n" + "".join(f"{s},{2 / s:.4f}\n" for s in range(1, 40)))
    (project / "dvc.yaml").write_text("plots:\n  - models/voice/metrics.csv:\n      x: step\n      y: mel\n")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DO_NOT_TRACK": "1", "HOME": str(tmp_path)}
    assert subprocess.run(["dvc", "init", "-q", "--no-scm"], cwd=project, env=env).returncode == 0
    for name in ("config", "offline-plots.html"):
        shutil.copy(REPO / ".dvc" / name, project / ".dvc" / name)
    shown = subprocess.run(["dvc", "plots", "show", "-o", "plots"], cwd=project, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    page = project / "plots" / "index.html"
    html = page.read_text()
    assert "vegaEmbed" in html and "cdn.jsdelivr" not in html and "<script src=" not in html
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--proxy-server=http://127.0.0.1:9"):  # nothing but loopback gets out
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(page.as_uri())
        WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")))
        drawn = browser.find_element(By.CSS_SELECTOR, ".vega-embed canvas, .vega-embed svg")
        assert drawn.size["width"] > 100 and drawn.size["height"] > 100, drawn.size
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
