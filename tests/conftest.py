from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Prefect keeps its embedded server's database under PREFECT_HOME: give the test session its own.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="polyvox-prefect-home-"))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from polyvox.config import Params, load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _find_kathleen() -> Path | None:
    candidates = [os.environ.get("POLYVOX_KATHLEEN"), REPO.parent / "shared/data/kathleen-a", "/work/shared/data/kathleen-a"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "metadata.csv").is_file():
            return Path(candidate)
    return None


KATHLEEN = _find_kathleen()


@pytest.fixture(scope="session")
def kathleen() -> Path:
    if KATHLEEN is None:
        pytest.skip("kathleen-a corpus not found (set POLYVOX_KATHLEEN to its folder)")
    return KATHLEEN


@pytest.fixture(scope="session")
def kathleen_files(kathleen: Path) -> list[Path]:
    """A handful of real Kathleen takes, sorted, for building small corpora in tests."""
    return sorted((kathleen / "wavs").glob("*.flac"))[:8]


@pytest.fixture(autouse=True)
def no_tracking_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages track to an embedded MLflow store by default; tests that check tracking set a URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "off")


@pytest.fixture
def params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder holding a copy of params.yaml, as the current directory."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    return root


def with_overrides(params: Params, **sections: dict) -> Params:
    """A copy of ``params`` with fields of its sections replaced, e.g. prepare={"corpus": p}."""
    update = {name: getattr(params, name).model_copy(update=values) for name, values in sections.items()}
    return params.model_copy(update=update)


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server and database for the session, stopped before pytest exits."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
