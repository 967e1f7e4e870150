"""Run the data stages in a test workspace."""

from __future__ import annotations

from pathlib import Path

from polyvox.config import Params, load_params
from polyvox.workspace import Workspace

from conftest import REPO


def params_for(corpus: Path, *overrides: str) -> Params:
    return load_params(REPO / "params.yaml", [f"prepare.corpus={corpus}", "parallel.workers=1", *overrides])


def run_stages(params: Params, workspace: Path, upto: str = "features") -> dict:
    from polyvox.clean.stage import clean
    from polyvox.corpus.prepare import prepare
    from polyvox.features.stage import features
    from polyvox.validate.stage import validate

    ws = Workspace(workspace)
    results = {}
    for name, stage in (("prepare", prepare), ("validate", validate), ("clean", clean), ("features", features)):
        results[name] = stage(params, ws)
        if name == upto:
            break
    return results
