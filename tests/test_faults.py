"""Faults: kill -9 in the middle of a stage (the rerun completes, and no partial output is taken as
done), a failing task retried by the Prefect flow, and a full or unwritable output folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from polyvox.fileio import load_arrays
from polyvox.fileio import OutputNotWritten, atomic_path

import corpora
from conftest import REPO
from tiny_project import TINY_TRAINING

POLYVOX = str(REPO / ".venv" / "bin" / "polyvox")
TINY = [*TINY_TRAINING, "train.validate_every=4", "train.checkpoint_every=2"]


def _overrides(corpus: Path, *extra: str) -> list[str]:
    return [f"prepare.corpus={corpus}", "parallel.workers=1", "features.splits.val=0.25", "features.splits.test=0.1",
            *TINY, *extra]


def _args(corpus: Path, *extra: str) -> list[str]:
    return [part for override in _overrides(corpus, *extra) for part in ("-S", override)]


def _polyvox(workspace: Path, command: str, args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "off"}
    return subprocess.Popen([POLYVOX, command, *args], cwd=workspace, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the stage never reached the point to kill it at"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, kathleen):
    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:24:3]
    return corpora.kathleen_manifest(tmp_path_factory.mktemp("corpus"), files, [texts[f.stem] for f in files])


def _workspace(root: Path, template: Path | None = None) -> Path:
    """A fresh workspace at ``root/ws``: a copy of ``template`` (a workspace some stages ran in), or empty."""
    ws = root / "ws"
    if template is None:
        ws.mkdir()
        (ws / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    else:
        shutil.copytree(template, ws, symlinks=True)
    return ws


# Workspaces after prepare+validate, +clean, +features: each stage runs once per module, and each
# test works in its own copy.
@pytest.fixture(scope="module")
def validated(tmp_path_factory, corpus):
    ws = _workspace(tmp_path_factory.mktemp("validated"))
    for stage in ("prepare", "validate"):
        _finish(_polyvox(ws, stage, _args(corpus)))
    return ws


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, corpus, validated):
    ws = _workspace(tmp_path_factory.mktemp("cleaned"), validated)
    _finish(_polyvox(ws, "clean", _args(corpus)))
    return ws


@pytest.fixture(scope="module")
def featured(tmp_path_factory, corpus, cleaned):
    ws = _workspace(tmp_path_factory.mktemp("featured"), cleaned)
    _finish(_polyvox(ws, "features", _args(corpus)))
    return ws


def _whole_files(folder: Path, suffix: str) -> dict[str, bytes]:
    """Relative path → bytes of every file under a final (not ``.tmp-*``) name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob(f"*{suffix}")
            if not p.name.startswith(".tmp-")}


def test_kill_during_clean_then_rerun(tmp_path, corpus, validated, cleaned):
    ws = _workspace(tmp_path, validated)  # ``cleaned`` is the same, cleaned without a kill
    audio = ws / "data/clean/audio"
    process = _polyvox(ws, "clean", _args(corpus))
    _kill_when(process, lambda: audio.is_dir() and len(_whole_files(audio, ".wav")) >= 2)
    assert not (ws / "data/clean/manifest.parquet").exists()  # written last, atomically: nothing claims to be done
    reference = _whole_files(cleaned / "data/clean/audio", ".wav")
    for name, data in _whole_files(audio, ".wav").items():  # a final name holds an uninterrupted run's bytes
        assert data == reference[name], name
    _finish(_polyvox(ws, "clean", _args(corpus)))
    assert _whole_files(audio, ".wav") == reference
    assert not list(audio.rglob(".tmp-*"))  # a killed writer's leftovers are swept
    rerun = pd.read_parquet(ws / "data/clean/manifest.parquet")
    pd.testing.assert_frame_equal(rerun, pd.read_parquet(cleaned / "data/clean/manifest.parquet"))


def test_clean_dying_before_its_new_manifest_keeps_the_old_one_whole(tmp_path, corpus, cleaned, monkeypatch):
    """New settings redo every file; until the new manifest is written, the old one's audio stays."""
    from polyvox.clean import stage
    from polyvox.config import load_params
    from polyvox.workspace import Workspace

    ws = _workspace(tmp_path, cleaned)
    old = pd.read_parquet(ws / "data/clean/manifest.parquet")

    def die(target, **_):
        raise RuntimeError(f"killed while writing {target}")

    monkeypatch.setattr(stage, "atomic_path", die)  # in clean itself, only the manifest is written through it
    params = load_params(ws / "params.yaml", _overrides(corpus, "clean.loudness_lufs=-20"))
    with pytest.raises(RuntimeError, match="manifest.parquet"):
        stage.clean(params, Workspace(ws))
    assert pd.read_parquet(ws / "data/clean/manifest.parquet").equals(old)
    for audio in old["audio"]:  # everything the manifest on disk names is still there
        assert (ws / "data/clean" / audio).is_file(), audio


def test_kill_during_features_then_rerun(tmp_path, corpus, cleaned):
    ws = _workspace(tmp_path, cleaned)
    utt = ws / "data/features/utt"
    process = _polyvox(ws, "features", _args(corpus))
    _kill_when(process, lambda: utt.is_dir() and any(utt.rglob("*.npz")))  # some files written, not all
    index = ws / "data/features/index.parquet"
    assert not index.exists()  # the index is written last, atomically: nothing claims to be done
    for done in utt.rglob("*.npz"):  # what carries a final name is whole (a killed writer leaves only .tmp-*)
        if not done.name.startswith(".tmp-"):
            assert np.isfinite(load_arrays(done)["mel"]).all(), done
    _finish(_polyvox(ws, "features", _args(corpus)))
    rows = pd.read_parquet(index)
    assert len(rows) == 8
    for row in rows.itertuples():  # every feature file is whole and loads
        arrays = load_arrays(ws / "data/features" / row.features)
        assert arrays["mel"].shape[1] == row.frames and np.isfinite(arrays["mel"]).all()
    assert json.loads((ws / "data/features/stats.json").read_text())["global"]


def test_kill_during_training_resumes_from_the_last_checkpoint(tmp_path, corpus, featured):
    ws = _workspace(tmp_path, featured)
    args = _args(corpus, "train.max_steps=30", "train.members=[{name: m, seed: 1, conditioning: audio+image, variant: {}}]")
    out = ws / "models/m"

    def past_a_checkpoint() -> bool:
        metrics = out / "metrics.csv"
        return (out / "last.pt").is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) > 7

    process = _polyvox(ws, "train", args)
    _kill_when(process, past_a_checkpoint)
    assert not (out / "done.json").exists()  # a killed run is never taken as finished
    import torch

    step = torch.load(out / "last.pt", weights_only=True)["step"]  # the checkpoint on disk is whole
    assert 0 < step < 30
    output = _finish(_polyvox(ws, "train", args))
    assert f"resuming m from step {step}" in output and "30 steps" in output
    done = json.loads((out / "done.json").read_text())
    assert done["result"]["steps"] == 30
    rows = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(1, 31)]  # the steps logged after the checkpoint were redone, once each


def test_the_flow_retries_a_failed_training_task_and_the_retry_resumes(tmp_path, corpus, featured, prefect_server,
                                                                      monkeypatch):
    """A training task that dies after a checkpoint is retried by Prefect (the task's own ``retries``),
    and the retry carries on from that checkpoint rather than from step 0."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from polyvox import flow as pipeline
    from polyvox.config import load_params
    from polyvox.train import loop, trainer
    from polyvox.workspace import Workspace

    ws = _workspace(tmp_path, featured)
    monkeypatch.chdir(ws)
    params = load_params(ws / "params.yaml", _overrides(corpus, "train.max_steps=4",
                                                        "train.members=[{name: m, seed: 1, conditioning: audio, variant: {}}]"))
    optimise, restore = trainer.optimise, loop.restore_training_state
    steps, resumed_at = [], []

    def optimise_or_crash(*args, **kwargs):
        steps.append(len(steps) + 1)
        if len(steps) == 3:  # the first attempt dies in step 3, after the step-2 checkpoint
            raise RuntimeError("the machine went away in step 3")
        optimise(*args, **kwargs)

    def restore_and_note(*args, **kwargs):
        start, best = restore(*args, **kwargs)
        resumed_at.append(start)
        return start, best

    monkeypatch.setattr(trainer, "optimise", optimise_or_crash)
    monkeypatch.setattr(loop, "restore_training_state", restore_and_note)

    @flow(name="train-with-a-crash")
    def train_one(params):
        # as the pipeline calls it (its input fingerprint keys the cache); the task's retries, no wait
        member_task, inputs = pipeline._cached(pipeline.train_task, params, Workspace(ws), member="m")
        return member_task.with_options(retry_delay_seconds=0)(params, "m", None, inputs)

    state = train_one(params, return_state=True)
    assert state.is_completed(), state.message
    assert len(steps) == 3 + 2 and resumed_at == [2]  # the retry redid steps 3 and 4 only
    assert state.result().steps == 4 and json.loads((ws / "models/m/done.json").read_text())["result"]["steps"] == 4
    with get_client(sync_client=True) as client:
        [run] = client.read_task_runs(flow_run_filter=_flow_run_filter(state.state_details.flow_run_id))
        states = [s.name for s in sorted(client.read_task_run_states(run.id), key=lambda s: s.timestamp)]
    assert "Retrying" in states and states[-1] == "Completed" and run.run_count == 2, states
    rows = [line.split(",")[0] for line in (ws / "models/m/metrics.csv").read_text().splitlines()[1:]]
    assert rows == ["1", "2", "3", "4"]


def _flow_run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


EVALUATE = ["evaluate.max_utterances=1", "evaluate.rtf_sentences=1", "evaluate.report_samples=1",
            "evaluate.centroid_takes=2", "evaluate.bootstrap_resamples=100"]


def _untrained_candidate(ws: Path) -> None:
    """models/candidate: one untrained member that knows the corpus's speaker (training adds nothing here)."""
    import torch

    from polyvox.runtime.voice import Voice
    from voices import make_member

    member = make_member(ws / "models/m")
    torch.save({"kathleen": torch.randn(16)}, member / "speakers.pt")
    meta = json.loads((member / "model.json").read_text())
    (member / "model.json").write_text(json.dumps({**meta, "speakers": ["kathleen"]}))
    Voice.from_members({"m": member}).save(ws / "models/candidate")


def test_kill_during_evaluate_then_rerun(tmp_path, corpus, featured):
    ws = _workspace(tmp_path, featured)
    _untrained_candidate(ws)
    out = ws / "reports/evaluate"
    out.mkdir(parents=True)
    # an earlier evaluation, of another candidate: its stamp must not outlive a run that was killed
    (out / "metrics.json").write_text(json.dumps({"inputs": "an earlier candidate", "seconds": 1}))
    (out / "report.html").write_text("<html>an earlier report</html>")
    synthesised = out / "audio/candidate"
    process = _polyvox(ws, "evaluate", _args(corpus, *EVALUATE))
    _kill_when(process, lambda: synthesised.is_dir() and bool(_whole_files(synthesised, ".wav")))  # before scoring
    assert not (out / "metrics.json").exists()  # no stamp: neither the earlier one nor a new one
    for name in _whole_files(synthesised, ".wav"):
        wave, _ = sf.read(synthesised / name)
        assert wave.size and np.isfinite(wave).all(), name
    output = _finish(_polyvox(ws, "evaluate", _args(corpus, *EVALUATE)))
    assert "candidate WER" in output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utterances"] == 1 and set(metrics["systems"]) == {"candidate", "real"}
    table = pd.read_csv(out / "per_utterance.csv")
    assert sorted(table["system"]) == ["candidate", "real"]
    assert "an earlier report" not in (out / "report.html").read_text()


# A full disk or an unwritable folder: the error names the file, and nothing torn is left under it.

def test_unwritable_outputs_name_the_file_and_leave_nothing_behind(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    with pytest.raises(OutputNotWritten, match=rf"cannot write {blocked}/out.json: File exists \({blocked}\)"):
        with atomic_path(blocked / "out.json") as tmp:
            tmp.write_text("{}")

    target = tmp_path / "out/metrics.json"
    target.parent.mkdir()
    target.write_text("the previous version")

    def write_half(path: Path, code: int) -> None:
        path.write_text('{"half": ')  # what a full disk leaves: a torn file
        raise OSError(code, os.strerror(code))

    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        with pytest.raises(OutputNotWritten, match=f"cannot write {target}: {os.strerror(code)}$") as caught:
            with atomic_path(target) as tmp:
                write_half(tmp, code)
        assert caught.value.errno == code and isinstance(caught.value.__cause__, OSError)
        assert target.read_text() == "the previous version" and os.listdir(target.parent) == ["metrics.json"]

    # libsndfile and torch say only "System error." when the disk fills: a folder with no space left decides it
    monkeypatch.setattr(os, "statvfs", lambda folder: os.statvfs_result((4096,) * 3 + (0,) * 7))
    with pytest.raises(OutputNotWritten, match=f"cannot write {target}: No space left on device"):
        with atomic_path(target):
            raise RuntimeError("System error.")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="a bug"):  # with space left, any other error keeps its own traceback
        with atomic_path(target):
            raise RuntimeError("a bug")
    with pytest.raises(FileNotFoundError):  # so does a missing *input* read inside the block
        with atomic_path(target) as tmp:
            shutil.copyfile(tmp_path / "no such source", tmp)
    assert os.listdir(target.parent) == ["metrics.json"]


def test_a_real_full_disk_names_the_file(tmp_path):
    """The writers the stages use (Parquet, WAV, npz, torch, text) on a real 64 KiB tmpfs, where one can be mounted."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root and a mount namespace that allows it)")
    noise = np.random.default_rng(0).random(100_000)
    writers = {"manifest.parquet": lambda tmp: pq.write_table(pa.table({"x": noise}), tmp, compression="none"),
               "take.wav": lambda tmp: sf.write(tmp, noise.astype(np.float32), 22050, subtype="PCM_16"),
               "take.npz": lambda tmp: np.savez(tmp, mel=noise),
               "last.pt": lambda tmp: torch.save({"w": torch.from_numpy(noise)}, tmp),
               "report.html": lambda tmp: tmp.write_bytes(b"x" * 200_000)}
    try:
        for name, write in writers.items():
            with pytest.raises(OutputNotWritten, match=f"cannot write {disk}/{name}: No space left on device"):
                with atomic_path(disk / name) as tmp:
                    write(tmp)
            assert os.listdir(disk) == [], name  # no torn file, under its name or a temporary one
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_during_prepare_is_a_one_line_error_naming_the_file(tmp_path, corpus, monkeypatch):
    from typer.testing import CliRunner

    from polyvox.cli import app

    ws = _workspace(tmp_path)
    monkeypatch.chdir(ws)
    real_copy = shutil.copyfile
    copied = []

    def copy_until_full(source, target, **kwargs):
        if Path(target).is_relative_to(ws) and copied:
            Path(target).write_bytes(Path(source).read_bytes()[:100])  # torn: the disk filled mid-file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        copied.append(Path(source))
        return real_copy(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_until_full)
    result = CliRunner().invoke(app, ["prepare", *_args(corpus, "prepare.link=copy", "prepare.workers=1")])
    assert result.exit_code == 1, result.output
    message = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "Traceback" not in result.output, result.output  # not a row error, not a traceback
    assert message[0].startswith(f"error: cannot write {ws}/data/raw/audio/") and message[0].endswith(
        ": No space left on device"), message
    raw = ws / "data/raw"
    assert not (raw / "manifest.parquet").exists()
    left = [p for p in raw.rglob("*") if p.is_file()]
    assert [p.name for p in left] == [copied[0].name] and left[0].read_bytes() == copied[0].read_bytes()  # nothing torn
