"""Checks that `prefect deploy` runs (prefect.yaml's build steps) before it registers a deployment.

A deployment stores its working directory when it is deployed. With ``POLYVOX_PROJECT`` unset,
Prefect keeps the placeholder ``{{ $POLYVOX_PROJECT }}`` as the literal directory (with a warning
that scrolls past), and every scheduled run fails hours later on a worker. Refused here instead,
at deploy time, with what to do."""

from __future__ import annotations

from pathlib import Path


def require_project(directory: str) -> dict[str, str]:
    """The prefect.yaml build step ``polyvox.deploy.require_project``: ``directory`` (the resolved
    ``{{ $POLYVOX_PROJECT }}``) must be an absolute path to a folder holding params.yaml."""
    if not directory.strip() or "{{" in directory:
        raise ValueError("POLYVOX_PROJECT is not set, so the deployment would run in no project: "
                         "`export POLYVOX_PROJECT=/path/to/your/project` (the folder with params.yaml) and deploy again")
    path = Path(directory)
    if not path.is_absolute():
        raise ValueError(f"POLYVOX_PROJECT={directory!r} is relative; a worker runs elsewhere: give an absolute path "
                         "(`export POLYVOX_PROJECT=$PWD` in the project)")
    if not (path / "params.yaml").is_file():
        raise ValueError(f"POLYVOX_PROJECT={directory!r} holds no params.yaml: point it at the project folder")
    return {"project": str(path)}
