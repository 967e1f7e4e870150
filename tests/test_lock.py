"""One writer per workspace: a second run stops with a message naming the first; a killed holder
(kill -9) leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polyvox.cli import app
from polyvox.lock import WorkspaceBusy, workspace_lock

HOLDER = """
import sys, time
from pathlib import Path
from polyvox.lock import workspace_lock
with workspace_lock(Path(sys.argv[1]), "polyvox train (test holder)"):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(workspace):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(workspace)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    yield process
    process.kill()
    process.wait()


def test_second_run_is_refused_naming_the_first(workspace, holder):
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1
    assert f"pid {holder.pid}" in result.output and "polyvox train (test holder)" in result.output
    assert "in use" in result.output and not (workspace / "data").exists()  # it wrote nothing

    os.kill(holder.pid, signal.SIGKILL)  # the holder dies mid-run: the kernel drops its lock
    holder.wait()
    result = CliRunner().invoke(app, ["validate"])
    assert "in use" not in result.output  # this time validate itself runs (and fails: nothing was prepared)
    assert "raw/manifest.parquet" in result.output or result.exception is not None


def test_reentrant_in_one_process_exclusive_across_threads_of_another(workspace):
    with workspace_lock(workspace, "outer"):
        with workspace_lock(workspace, "inner"):  # the flow holds it while its tasks run stages
            pass
        probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from polyvox.lock import workspace_lock\n"
                                "with workspace_lock(Path(sys.argv[1]), 'probe'): pass", str(workspace)],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "WorkspaceBusy" in probe.stderr and "outer" in probe.stderr
    with workspace_lock(workspace, "again"):  # released after the outer block
        pass


def test_lock_in_an_unwritable_folder_names_the_path(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "missing" / "deeper"  # root writes anywhere: a folder that does not exist instead
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
    with pytest.raises(WorkspaceBusy, match="cannot create the workspace lock"):
        with workspace_lock(target, "x"):
            pass
