"""A torch.distributed worker for the DDP test (a module of its own, so `spawn` can import it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def run(rank: int, world: int, port: int, params, workspace_root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from polyvox.train.trainer import fit
    from polyvox.workspace import Workspace

    result, model = fit(params, Workspace(Path(workspace_root)), member="ddp")
    torch.save({"steps": result.steps, "world": result.world_size, "model": model.state_dict()}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
