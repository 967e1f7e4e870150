"""The run-history dashboard, loaded in a real browser (headless Chromium from Debian, via selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from polyvox.config import load_params
from polyvox.registry.stage import promote
from polyvox.tracking import Run
from polyvox.workspace import Workspace

from conftest import REPO
from test_registry import _evaluate, evaluation
from voices import make_voice

EVIL = '<script>alert("pwned")</script><img src=x onerror=alert(2)>'


def _record_pipeline_run(ws, monkeypatch, run_id: str, trigger: str, wer: float, seed: int, params) -> None:
    """What one pipeline run leaves in MLflow: stage runs sharing a pipeline_run tag, an evaluate run
    with metrics and a sample, and a promote through the real gate."""
    monkeypatch.setenv("POLYVOX_RUN_ID", run_id)
    monkeypatch.setenv("POLYVOX_TRIGGER", trigger)
    dumped = params.model_dump(by_alias=True)
    for stage in ("prepare", "features"):
        Run(stage, dumped, {"stage": stage, "data_version": "d4t4"}, ws).end()
    voice = make_voice(ws.candidate, seed=seed)
    metrics = evaluation(voice, wer=wer, mcd=5.0 if seed != 2 else 9.9,
                         champion=None if seed == 1 else (-0.05, -0.08, -0.01))
    sample = ws.root / f"sample_{seed}.wav"
    sf.write(sample, np.sin(np.arange(22050) / 10.0).astype(np.float32) * 0.3, 22050)
    tags = {"stage": "evaluate", "data_version": "d4t4", "speakers": f"alice,{EVIL}"}
    if seed == 3:  # the newest run was judged by Whisper; the older ones carry no `asr` tag (pocketsphinx)
        tags.update(asr="whisper-base", asr_second_opinion="pocketsphinx")
        metrics["systems"]["candidate"]["wer_pocketsphinx"] = 0.41
    tracker = Run("evaluate", dumped, tags, ws)
    tracker.metrics({f"candidate.{k}": v for k, v in metrics["systems"]["candidate"].items()}, step=0)
    tracker.artifacts([sample], "samples")
    tracker.end()
    _evaluate(ws, metrics)
    promote(params, ws)


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = load_params(REPO / "params.yaml", ["promote.export_onnx=false"])
    _record_pipeline_run(ws, monkeypatch, "night-1", "deployment nightly", 0.30, 1, params)
    _record_pipeline_run(ws, monkeypatch, "night-2", EVIL, 0.25, 2, params)  # refused: MCD 9.9
    _record_pipeline_run(ws, monkeypatch, "night-3", "polyvox run", 0.20, 3, params)
    return uri


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="needs Debian's chromium and chromium-driver (make test installs them)")
def test_dashboard_in_a_real_browser(recorded, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("polyvox")), "dashboard", "--port", str(port),
                               "--params", str(REPO / "params.yaml")], cwd=tmp_path,
                              env={**os.environ, "MLFLOW_TRACKING_URI": recorded}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.5)
        html = httpx.get(url, timeout=60).text
        assert "<script>" not in html and "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
        assert "http://" not in html.replace(f"http://127.0.0.1:{port}", "") and "https://" not in html  # no CDN

        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(flag)
        options.binary_location = shutil.which("chromium")
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.set_window_size(1400, 1100)
            browser.get(url)
            rows = browser.find_elements(By.CSS_SELECTOR, "table#runs tbody tr.run")
            assert len(rows) == 3, browser.page_source[:2000]
            texts = [r.text for r in rows]
            assert "polyvox run" in texts[0] and "promoted" in texts[0] and "0.200" in texts[0]
            assert "whisper-base" in texts[0] and "pocketsphinx 0.410" in texts[0]  # the judge, and the second opinion
            assert "pocketsphinx" in texts[2] and "whisper" not in texts[2]
            assert "refused" in texts[1] and "mcd_db" in texts[1] and EVIL in texts[1]  # shown as text, not run
            assert "deployment nightly" in texts[2] and "prepare" in texts[2]
            assert browser.find_element(By.ID, "champion").text == "version 3"
            moves = browser.find_elements(By.CSS_SELECTOR, "table#alias-history tr")
            assert len(moves) == 1 + 2  # header + two promotions (version 2 was refused)
            assert browser.execute_script("return document.scripts.length") == 0
            sources = [a.get_attribute("src") for a in browser.find_elements(By.TAG_NAME, "audio")]
            assert len(sources) == 3
            audio = httpx.get(sources[0], timeout=60)
            assert audio.status_code == 200 and sf.read(__import__("io").BytesIO(audio.content))[1] == 22050
            assert httpx.get(f"{url}audio/{'0' * 32}/..%2F..%2Fetc%2Fpasswd.wav").status_code == 404
            shot = tmp_path / "dashboard.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            shutil.copy(shot, REPO / "benchmarks" / "results" / "dashboard.png") if (REPO / "benchmarks/results").is_dir() else None
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _page(app) -> str:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        response = client.get("/")
    assert response.status_code == 200, response.text[:500]
    return response.text


def test_an_unreachable_prefect_leaves_the_page_up_and_says_so(recorded, monkeypatch):
    from polyvox.dashboard.app import create_app

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import uuid

    monkeypatch.setenv("POLYVOX_RUN_ID", str(uuid.uuid4()))  # a run of a Prefect flow, which the page asks about
    Run("prepare", {}, {"stage": "prepare"}, Workspace(Path(recorded.removeprefix("sqlite:///")).parent)).end()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    text = _page(create_app(recorded, "polyvox"))
    assert text.count('class="run"') == 4 and "did not answer" in text


def test_a_flow_run_deleted_in_prefect_is_shown_as_such(tmp_path, prefect_server, monkeypatch):
    import uuid

    from polyvox.dashboard.app import collect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("POLYVOX_RUN_ID", str(uuid.uuid4()))  # a flow run id Prefect does not know (deleted)
    Run("prepare", {}, {"stage": "prepare"}, Workspace(tmp_path)).end()
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the test server's
    data = collect(uri, "polyvox")
    assert data["runs"][0]["prefect"] == "deleted in Prefect" and data["prefect_problem"] is None


def test_credentials_in_the_tracking_uri_are_never_shown(monkeypatch):
    from polyvox.dashboard import app as dashboard

    monkeypatch.setattr(dashboard, "collect", lambda uri, model: {"runs": [], "champion": None, "history": [],
                                                                 "prefect_problem": None, "truncated": False})
    text = _page(dashboard.create_app("postgresql://polyvox:s3cret-pw@db.internal:5432/mlflow", "polyvox"))
    assert "s3cret-pw" not in text and "polyvox:***@db.internal" in text


def test_page_loads_share_one_reading_of_mlflow(recorded, monkeypatch):
    from polyvox.dashboard import app as dashboard

    calls = []
    real = dashboard.collect
    monkeypatch.setattr(dashboard, "collect", lambda uri, model: calls.append(uri) or real(uri, model))
    app = dashboard.create_app(recorded, "polyvox")
    for _ in range(5):
        assert _page(app).count('class="run"') == 3
    assert len(calls) == 1


def test_a_stage_that_opens_its_run_when_done_shows_its_wall_time(tmp_path, monkeypatch):
    """Ensemble and evaluate open their MLflow run once their work is done: the dashboard showed
    0 s and MLflow 31 ms for a 157 s evaluation (issue 32 §4). The run now starts when the stage did."""
    from polyvox.dashboard import app as dashboard
    from polyvox.tracking import stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("POLYVOX_RUN_ID", "night-1")
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    params = load_params(REPO / "params.yaml")
    stage_run("evaluate", params, ws, seconds=157.0).end()
    stage_run("ensemble", params, ws, seconds=12.0).end()
    stages = dict(dashboard.collect(uri, "polyvox")["runs"][0]["stages"])
    assert 157 <= stages["evaluate"] < 170 and 12 <= stages["ensemble"] < 25, stages
    page = _page(dashboard.create_app(uri, "polyvox"))
    assert "stages (wall time, s)" in page and "WER (0–1, lower is better)" in page
    assert "Trend plots appear once two pipeline runs" in page  # one run: no plot, and the page says why


def test_a_pipeline_runs_stages_nest_under_one_mlflow_run(tmp_path, monkeypatch):
    """MLflow showed a pipeline run as ten loose stage runs (issue 32 §4): they now nest under one
    run per pipeline run, which spans them; a single command outside a pipeline gets no parent; the
    dashboard still shows one row per pipeline run."""
    from mlflow.tracking import MlflowClient

    from polyvox.dashboard import app as dashboard
    from polyvox.tracking import PARENT_TAG, stage_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    params = load_params(REPO / "params.yaml")
    monkeypatch.setenv("POLYVOX_RUN_ID", "night-1")
    runs = [stage_run(stage, params, ws) for stage in ("prepare", "features")]
    for run in runs:
        run.end()
    client = MlflowClient(uri)
    parent = {client.get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parent) == 1
    top = client.get_run(parent.pop())
    assert top.data.tags[PARENT_TAG] == "true" and top.info.end_time >= client.get_run(runs[-1].run_id).info.end_time
    monkeypatch.delenv("POLYVOX_RUN_ID")
    alone = stage_run("prepare", params, ws)
    alone.end()
    assert "mlflow.parentRunId" not in client.get_run(alone.run_id).data.tags
    shown = dashboard.collect(uri, "polyvox")["runs"]
    assert len(shown) == 2 and all("pipeline" not in dict(r["stages"]) for r in shown)
