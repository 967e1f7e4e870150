"""The promotion gate, the MLflow registry (promote, refuse, rollback) and the serving bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polyvox.config import ConfigError, load_params
from polyvox.registry.gate import judge, passed
from polyvox.registry.stage import promote, rollback
from polyvox.registry.store import Registry
from polyvox.workspace import Workspace

from conftest import REPO
from voices import make_voice


def evaluation(voice, wer=0.2, similarity=0.85, mcd=5.0, rtf=0.05, champion=None) -> dict:
    """A crafted ``reports/evaluate/metrics.json`` for ``voice``; champion: (wer, low, high) of the difference."""
    systems = {"candidate": {"wer": wer, "cer": wer / 2, "mcd_db": mcd, "speaker_similarity": similarity,
                             "mos_ovrl": 3.0, "rtf_one_thread": rtf, "parameters": 1000, "size_mb": 1.0},
               "real": {"wer": 0.1, "cer": 0.05, "speaker_similarity": 0.9, "mos_ovrl": 3.2}}
    difference = {}
    if champion is not None:
        systems["champion"] = dict(systems["candidate"], wer=wer - champion[0])
        difference["wer"] = {"difference": champion[0], "low": champion[1], "high": champion[2], "pairs": 30,
                             "confidence": 0.95, "lower_is_better": True}
    return {"utterances": 30, "speakers": ["alice", "bob"], "systems": systems, "difference": difference,
            "seconds": 1.0, "data_version": "abc123", "candidate_voice": voice.describe()}


@pytest.fixture
def project(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(REPO / "params.yaml")
    return params, ws


def _evaluate(ws, metrics):
    ws.evaluation.mkdir(parents=True, exist_ok=True)
    (ws.evaluation / "metrics.json").write_text(json.dumps(metrics))


def test_gate_rules_pass_and_fail_on_crafted_evaluations(tmp_path, params):
    voice = make_voice(tmp_path / "candidate")
    good = judge(evaluation(voice), params.promote, has_champion=False)
    assert passed(good) and {r.rule for r in good} == {"wer", "speaker_similarity", "mcd_db", "rtf_one_thread", "ensemble_gain"}
    # params.yaml's absolute WER rule: a voice a listener misses every other word of is refused
    garbled = {r.rule: r for r in judge(evaluation(voice, wer=params.promote.max_wer + 0.1), params.promote, has_champion=False)}
    assert not garbled["wer"].passed and garbled["speaker_similarity"].passed
    bad = {r.rule: r for r in judge(evaluation(voice, similarity=0.5, mcd=9.0), params.promote, has_champion=False)}
    assert not bad["speaker_similarity"].passed and bad["speaker_similarity"].value == 0.5
    assert bad["speaker_similarity"].threshold == params.promote.min_speaker_similarity
    assert not bad["mcd_db"].passed and bad["rtf_one_thread"].passed
    # with a champion: a WER difference whose interval reaches above the allowed increase fails
    worse = {r.rule: r for r in judge(evaluation(voice, champion=(0.05, 0.01, 0.09)), params.promote, has_champion=True)}
    assert not worse["wer_vs_champion"].passed and worse["wer_vs_champion"].value == 0.09
    better = judge(evaluation(voice, champion=(-0.05, -0.09, -0.01)), params.promote, has_champion=True)
    assert passed(better)
    unscored = {r.rule: r for r in judge(evaluation(voice), params.promote, has_champion=True)}
    assert not unscored["wer_vs_champion"].passed and "did not score" in unscored["wer_vs_champion"].detail
    # an ensemble that did not beat its best member on validation is refused
    ensemble_metrics = evaluation(voice)
    ensemble_metrics["candidate_voice"] = dict(ensemble_metrics["candidate_voice"], kind="ensemble",
                                               info={"member_scores": {"a": 0.70, "b": 0.72}, "ensemble_score": 0.71})
    gain = {r.rule: r for r in judge(ensemble_metrics, params.promote, has_champion=False)}
    assert not gain["ensemble_gain"].passed and gain["ensemble_gain"].threshold == 0.70


def test_the_naturalness_rule_is_off_by_default_and_judges_dnsmos_when_set(tmp_path, params):
    voice = make_voice(tmp_path / "candidate")
    assert params.promote.min_mos is None and "mos" not in {r.rule for r in judge(evaluation(voice), params.promote, False)}
    strict = params.promote.model_copy(update={"min_mos": 2.5})
    metrics = evaluation(voice)
    metrics["systems"]["candidate"]["mos_ovrl"] = 2.3
    rule = {r.rule: r for r in judge(metrics, strict, has_champion=False)}["mos"]
    assert not rule.passed and rule.value == 2.3 and rule.threshold == 2.5 and "DNSMOS" in rule.detail
    metrics["systems"]["candidate"]["mos_ovrl"] = 2.7
    assert passed(judge(metrics, strict, has_champion=False))
    del metrics["systems"]["candidate"]["mos_ovrl"]  # an evaluation that did not measure it is refused, not waved through
    rule = {r.rule: r for r in judge(metrics, strict, has_champion=False)}["mos"]
    assert not rule.passed and "not measured" in rule.detail


def test_the_gate_and_the_model_card_name_the_judge(tmp_path, params):
    from polyvox.runtime.bundle import model_card

    voice = make_voice(tmp_path / "candidate")
    strict = params.promote.model_copy(update={"max_wer": 0.5})
    metrics = evaluation(voice, champion=(0.0, -0.01, 0.01))
    old = {r.rule: r for r in judge(metrics, strict, has_champion=True)}  # evaluated before judges: pocketsphinx
    assert "heard by pocketsphinx" in old["wer"].detail and "heard by pocketsphinx" in old["wer_vs_champion"].detail
    metrics.update(asr="whisper-base", asr_second_opinion="pocketsphinx")
    metrics["systems"]["candidate"].update(wer_pocketsphinx=0.4, cer_pocketsphinx=0.2)
    rules = judge(metrics, strict, has_champion=True)
    assert "heard by whisper-base" in {r.rule: r for r in rules}["wer"].detail
    card = model_card(voice.describe(), metrics, {"promoted": True, "rules": [r.to_dict() for r in rules]}, "d", "c")
    assert "| WER (whisper-base) | 0.200 |" in card and "| WER (pocketsphinx, second opinion) | 0.400 |" in card
    assert "WER/CER: whisper-base (faster-whisper" in card


def test_promote_refuse_and_rollback_through_the_registry(project):
    from mlflow.tracking import MlflowClient

    params, ws = project
    first = make_voice(ws.candidate, seed=1)
    _evaluate(ws, evaluation(first))
    one = promote(params, ws)
    assert one.promoted and one.version == "1" and one.champion_before is None
    assert promote(params, ws).version == "1"  # the same evaluation again: judged already, nothing registered
    assert json.loads((ws.champion / "bundle.json").read_text())["version"] == "1"
    assert (ws.champion / "MODEL_CARD.md").is_file() and (ws.reports / "promote.json").is_file()

    second = make_voice(ws.candidate, seed=2)
    _evaluate(ws, evaluation(second, mcd=9.5, champion=(0.0, -0.02, 0.02)))
    refused = promote(params, ws)
    assert not refused.promoted and refused.version == "2" and refused.champion_after == "1"
    assert json.loads((ws.champion / "bundle.json").read_text())["version"] == "1"  # untouched
    decision = json.loads((ws.reports / "promote.json").read_text())
    assert [r["rule"] for r in decision["rules"] if not r["passed"]] == ["mcd_db"]

    third = make_voice(ws.candidate, seed=3)
    _evaluate(ws, evaluation(third, champion=(-0.03, -0.05, -0.01)))
    assert promote(params, ws).promoted
    registry = Registry(f"sqlite:///{ws.root.parent / 'mlflow.db'}", params.registry.model_name)
    assert registry.champion() == "3"
    client = MlflowClient(registry.uri)
    refused_tags = client.get_model_version(params.registry.model_name, "2").tags
    assert refused_tags["decision"] == "refused" and refused_tags["gate.mcd_db"].startswith("FAIL: 9.5 <= 7.5")
    assert float(refused_tags["metric.mcd_db"]) == 9.5

    back = rollback(params, ws)
    assert (back.before, back.after) == ("3", "1") and registry.champion() == "1"
    assert json.loads((ws.champion / "bundle.json").read_text())["version"] == "1"
    assert [(m["action"], m["from"], m["to"]) for m in registry.history()] == [
        ("promote", None, "1"), ("promote", "1", "3"), ("rollback", "3", "1")]
    with pytest.raises(ConfigError, match="no earlier champion"):
        rollback(params, ws)
    assert rollback(params, ws, to="3").after == "3"
    stages = {r.data.tags.get("stage") for r in client.search_runs([registry.experiment_id])}
    assert {"promote", "rollback"} <= stages
    # the history as a table on the run of the last move (issue 32 §4), not only JSON in a tag
    last = client.search_runs([registry.experiment_id], "tags.stage = 'rollback'",
                              order_by=["attributes.start_time DESC"])[0]
    table = json.loads(Path(client.download_artifacts(last.info.run_id, "champion_history.json")).read_text())
    assert table["columns"][:5] == ["time", "action", "from", "to", "reason"]
    assert [(row[1], row[3]) for row in table["data"]] == [("promote", "1"), ("promote", "3"), ("rollback", "1"),
                                                          ("rollback", "3")]


def test_promote_refuses_an_evaluation_of_another_candidate(project):
    params, ws = project
    old = make_voice(ws.candidate, seed=1)
    _evaluate(ws, evaluation(old))
    make_voice(ws.candidate, seed=2)  # a new candidate (member m2), still with m1's evaluation
    with pytest.raises(ConfigError, match="scored another candidate"):
        promote(params, ws)


def test_bundle_loads_in_a_fresh_process_without_training_code_or_mlflow(project):
    params, ws = project
    voice = make_voice(ws.candidate, seed=1)
    _evaluate(ws, evaluation(voice))
    promote(params, ws)
    script = f"""
import sys
from pathlib import Path
from polyvox.runtime.bundle import load_bundle
voice, meta = load_bundle(Path({str(ws.champion)!r}))
wave, rate = voice.synthesize("hello there", speaker="alice")
assert wave.size > rate // 20 and meta.version == "1", (wave.size, meta)
banned = [m for m in sys.modules if m.startswith(("polyvox.train", "mlflow", "prefect", "dvc", "great_expectations"))]
assert not banned, banned
print("ok", wave.size)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def test_registry_unreachable_is_a_clear_error(tmp_path, params, monkeypatch):
    from polyvox.tracking import TrackingUnavailable

    ws = Workspace(tmp_path)
    make_voice(ws.candidate)
    _evaluate(ws, evaluation(make_voice(ws.candidate)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9.*MLFLOW_TRACKING_URI=off"):
        promote(params, ws)
    assert not ws.champion.exists()


def test_tracking_server_unreachable_stops_a_stage_before_it_works(tmp_path, kathleen_files, monkeypatch):
    import corpora
    from polyvox.corpus.prepare import prepare
    from polyvox.tracking import TrackingUnavailable
    from stages import params_for

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files[:2], bad_rows=False)
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        prepare(params_for(corpus), Workspace(tmp_path / "ws"))
    assert not (tmp_path / "ws" / "data" / "raw" / "manifest.parquet").exists()


def test_every_data_stage_run_is_tracked(tmp_path, kathleen_files, monkeypatch):
    from mlflow.tracking import MlflowClient

    import corpora
    from stages import params_for, run_stages

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files[:3], bad_rows=False)
    run_stages(params_for(corpus, "validate.min_accepted_share=0.1"), tmp_path / "ws")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("polyvox")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"prepare", "validate", "clean", "features"}
    for stage, run in runs.items():
        assert run.info.status == "FINISHED" and len(run.data.tags["data_version"]) == 16, stage
        assert run.data.tags["git_commit"] and run.data.params, stage
    assert runs["prepare"].data.params["prepare.format"] == "auto" and runs["features"].data.metrics


def test_promote_to_an_mlflow_server(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at a tracking server (started here on loopback) is honoured."""
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = REPO / ".venv" / "bin" / "mlflow"
    server = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "server-artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**__import__("os").environ,
                                                                                          "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        ws = Workspace(tmp_path / "ws")
        params = load_params(REPO / "params.yaml")
        voice = make_voice(ws.candidate, seed=1)
        _evaluate(ws, evaluation(voice))
        result = promote(params, ws)
        assert result.promoted and Registry(url, params.registry.model_name).champion() == result.version
        assert json.loads((ws.champion / "bundle.json").read_text())["version"] == result.version
        assert any((tmp_path / "server-artifacts").rglob("bundle.json"))  # the bundle went through the server
        assert not (ws.root / "mlflow.db").exists()  # nothing fell back to the embedded store

        # The server goes away in the middle of a run: logging warns, keeps the metrics, and never
        # stops the stage (its results are in its own files).
        from polyvox.tracking import Run

        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        run = Run("server-lost", {"seed": 1}, {"stage": "test"}, ws)
        server.terminate()
        server.wait(timeout=30)
        run.metrics({"loss": 1.0}, 1)
        run.flush()
        run.artifacts([ws.champion / "bundle.json"])
        run.end()
        assert run._pending and run._pending[0].key == "loss"  # kept for a later flush
    finally:
        server.terminate()
        server.wait(timeout=30)


class Killed(BaseException):
    """A kill at a chosen point (BaseException: no `except Exception` on the way may swallow it)."""


def _download_killed_once(monkeypatch):
    real = Registry.download
    calls = []

    def download(self, version, target):
        calls.append(version)
        if len(calls) == 1:
            raise Killed(f"killed before the bundle of version {version} was downloaded")
        return real(self, version, target)

    monkeypatch.setattr(Registry, "download", download)
    return calls


def _on_disk(ws) -> str | None:
    from polyvox.runtime.bundle import BundleMeta

    return BundleMeta.read(ws.champion).version


def test_a_promote_killed_after_the_alias_moved_is_mended_by_the_rerun(project, monkeypatch):
    params, ws = project
    _evaluate(ws, evaluation(make_voice(ws.candidate, seed=1)))
    assert promote(params, ws).version == "1"
    _evaluate(ws, evaluation(make_voice(ws.candidate, seed=2), champion=(-0.03, -0.05, -0.01)))
    _download_killed_once(monkeypatch)
    with pytest.raises(Killed):
        promote(params, ws)
    registry = Registry(f"sqlite:///{ws.root.parent / 'mlflow.db'}", params.registry.model_name)
    assert registry.champion() == "2" and _on_disk(ws) == "1"  # the alias moved, the disk did not
    assert json.loads((ws.reports / "promote.json").read_text())["version"] == "1"  # the decision was not written
    again = promote(params, ws)  # the rerun: the bundle on disk is mended to the alias, nothing registered twice
    assert _on_disk(ws) == registry.champion() == again.version == "2"
    assert [str(v.version) for v in registry.versions()] == ["1", "2"]


def test_a_rollback_killed_halfway_is_finished_not_repeated(project, monkeypatch):
    params, ws = project
    for seed, champion in ((1, None), (2, (-0.03, -0.05, -0.01)), (3, (-0.03, -0.05, -0.01))):
        _evaluate(ws, evaluation(make_voice(ws.candidate, seed=seed), champion=champion))
        assert promote(params, ws).promoted
    _download_killed_once(monkeypatch)
    with pytest.raises(Killed):
        rollback(params, ws)  # 3 → 2: the alias moved, then the kill
    registry = Registry(f"sqlite:///{ws.root.parent / 'mlflow.db'}", params.registry.model_name)
    assert registry.champion() == "2" and _on_disk(ws) == "3"
    finished = rollback(params, ws)  # the rerun completes 3 → 2 instead of rolling back to 1
    assert (finished.after, registry.champion(), _on_disk(ws)) == ("2", "2", "2"), finished
    assert "interrupted" in finished.reason


def test_mlflow_failing_at_the_end_neither_masks_the_error_nor_fails_the_work(project, monkeypatch):
    from mlflow.exceptions import MlflowException

    params, ws = project
    _evaluate(ws, evaluation(make_voice(ws.candidate, seed=1)))

    def end_run(self, run_id, status="FINISHED"):
        raise MlflowException("the tracking server went away")

    monkeypatch.setattr(Registry, "end_run", end_run)
    assert promote(params, ws).promoted and _on_disk(ws) == "1"  # done work stands
    _evaluate(ws, evaluation(make_voice(ws.candidate, seed=2), champion=(-0.03, -0.05, -0.01)))
    monkeypatch.setattr(Registry, "download", lambda self, version, target: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):  # the stage's own error, not MLflow's
        promote(params, ws)


def test_a_kill_between_the_two_renames_of_a_folder_swap_is_recovered(tmp_path, monkeypatch):
    from pathlib import Path

    from polyvox.fileio import recover_folder, replace_folder

    target, staging = tmp_path / "champion", tmp_path / "staging"
    target.mkdir()
    (target / "bundle.json").write_text("old")
    staging.mkdir()
    (staging / "bundle.json").write_text("new")
    real, renames = Path.rename, []

    def rename(self, to):
        renames.append(self)
        if len(renames) == 2:
            raise Killed("killed between the renames")
        return real(self, to)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Killed):
        replace_folder(staging, target)
    monkeypatch.setattr(Path, "rename", real)
    assert not target.exists() and (tmp_path / ".champion-old" / "bundle.json").read_text() == "old"
    assert recover_folder(target) and (target / "bundle.json").read_text() == "old"
    assert not recover_folder(target)  # nothing to recover twice
    replace_folder(staging, target)  # and the next swap goes through
    assert (target / "bundle.json").read_text() == "new" and not (tmp_path / ".champion-old").exists()
