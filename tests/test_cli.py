from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from polyvox.cli import app

import corpora
from conftest import REPO

runner = CliRunner()


def test_prepare_command_with_corpus_and_overrides(tmp_path, kathleen_files, workspace):
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    result = runner.invoke(app, ["prepare", "--corpus", str(corpus), "-S", "prepare.speaker=kat", "-S", "prepare.workers=1"])
    assert result.exit_code == 0, result.output
    assert "8 rows, 1 speakers" in result.output and "5 rows with parse errors" in result.output
    rows = pq.read_table(workspace / "data/raw/manifest.parquet").to_pylist()
    assert {row["speaker"] for row in rows} == {"kat"}


def test_prepare_reads_corpus_from_params(tmp_path, kathleen_files, workspace):
    corpus = corpora.vctk(tmp_path / "vctk", kathleen_files)
    result = runner.invoke(app, ["prepare", "-S", f"prepare.corpus={corpus}", "--format", "vctk"])
    assert result.exit_code == 0, result.output
    assert "7 rows, 2 speakers" in result.output


def test_config_errors_exit_2_naming_key_and_file(workspace):
    result = runner.invoke(app, ["prepare", "-S", "prepare.colour=blue"])
    assert result.exit_code == 2
    assert "unknown key 'prepare.colour'" in result.output and "params.yaml" in result.output
    other = workspace / "other.yaml"
    other.write_text("seed: one\n")
    result = runner.invoke(app, ["prepare", "--params", str(other)])
    assert result.exit_code == 2 and "other.yaml" in result.output and "'seed'" in result.output


def test_corpus_errors_exit_1(tmp_path, workspace):
    result = runner.invoke(app, ["prepare", "--corpus", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "corpus not found" in result.output


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "prepare" in result.output and "run" in result.output


def test_run_with_an_unreachable_prefect_server_says_so_and_runs_nothing(workspace, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens on the discard port
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 1
    assert "Prefect server http://127.0.0.1:9/api is unreachable" in result.output and "PREFECT_API_URL" in result.output
    assert not (workspace / "data").exists()


@pytest.mark.parametrize("command, missing, remedy", [
    ("validate", "data/raw", "polyvox prepare"),
    ("clean", "data/raw", "polyvox prepare"),
    ("features", "data/raw", "polyvox prepare"),
    ("train", "data/features", "polyvox features"),
    ("train-vocoder", "data/clean", "polyvox clean"),
    ("ensemble", "data/clean", "polyvox clean"),
    ("evaluate", "data/clean", "polyvox clean"),
    ("promote", "models/candidate", "polyvox ensemble"),
])
def test_a_stage_in_an_empty_workspace_says_what_is_missing_and_what_makes_it(workspace, command, missing, remedy):
    """One line, no traceback (before: 57-63-line FileNotFoundError tracebacks for five of them)."""
    result = runner.invoke(app, [command])
    assert result.exit_code == 1, result.output
    assert f"polyvox {command}: {missing} is missing; run `{remedy}` first" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_ensemble_needs_no_neural_vocoder_when_griffin_lim_renders(workspace):
    """ensemble.vocoder: griffin-lim was refused for a missing models/vocoder/best.pt it never reads;
    with neural the stage itself names the command that makes it."""
    from polyvox import cli
    from polyvox.config import ConfigError, load_params
    from polyvox.ensemble.stage import vocoder_folder
    from polyvox.workspace import Workspace

    for folder in ("data/clean", "data/features"):
        (workspace / folder).mkdir(parents=True)
    ws = Workspace(workspace)
    assert cli.missing_input("ensemble", ws) is None
    params = load_params(REPO / "params.yaml", ["ensemble.vocoder=griffin-lim"])
    assert vocoder_folder(params, ws) is None
    with pytest.raises(ConfigError, match="polyvox train-vocoder"):
        vocoder_folder(load_params(REPO / "params.yaml"), ws)


def test_a_missing_input_beyond_the_declared_ones_is_named_with_its_stage(workspace, monkeypatch, capsys):
    """A FileNotFoundError for a workspace path (a stage killed half way, a file deleted by hand) is
    one line naming the path and the stage that writes it; one outside the workspace keeps its traceback."""
    from polyvox import cli

    def deleted(params, ws):
        raise FileNotFoundError(2, "No such file or directory", str(ws.root / "data/clean/manifest.parquet"))

    monkeypatch.setattr(cli, "missing_input", lambda name, ws: None)
    with pytest.raises(typer.Exit):
        cli._run_stage("polyvox features", deleted, workspace / "params.yaml", [])
    said = " ".join(capsys.readouterr().err.split())
    assert "data/clean/manifest.parquet: missing; run `polyvox clean` first" in said, said

    def elsewhere(params, ws):
        raise FileNotFoundError(2, "No such file or directory", "/usr/share/nothing")

    with pytest.raises(FileNotFoundError):
        cli._run_stage("polyvox features", elsewhere, workspace / "params.yaml", [])


def test_prefect_run_logs_carry_their_runs_name():
    """"Finished in state Completed()" said eleven times with no task named (issue 32 §5)."""
    import logging

    from polyvox.cli import RunNames

    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state %s", ("Completed()",),
                               None)
    record.task_run_name = "train-voice-0"
    assert RunNames().filter(record) and record.getMessage() == "train-voice-0: Finished in state Completed()"
    RunNames().filter(record)  # a second handler's filter does not name it twice
    assert record.getMessage() == "train-voice-0: Finished in state Completed()"
    flow = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, "Beginning flow run 'tactful-boa'", (),
                             None)
    flow.flow_run_name = "tactful-boa"
    RunNames().filter(flow)
    assert flow.getMessage() == "Beginning flow run 'tactful-boa'"  # named already
