from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from polyvox.cli import app

import corpora

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
