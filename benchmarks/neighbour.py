"""What one busy neighbour costs a training step, per thread setting: alone against beside a neighbour.

    .venv/bin/python benchmarks/neighbour.py --workspace WORKSPACE_WITH_FEATURES [--steps 12] [--rounds 3]

On 2 cores, a 2-thread torch step was measured 8-15x slower while one `nice -n 19` process ran
beside it (issue 30): OpenMP's threads meet at a barrier after every parallel region, and when the
scheduler parks one of them behind the neighbour the other spins, then waits. This benchmark times
the default model's training step (params.yaml, batches of the workspace's train split) in a child
process per setting, alone and with a neighbour (a `nice -n 19` Python process spinning on one
core), interleaved in rounds, and reports each setting's median s/step and its slowdown with the
neighbour. Settings: torch threads 2 and 1, with OpenMP's default wait policy and with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once instead of spinning). The machine must be
otherwise quiet. Writes ``benchmarks/results/neighbour.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"2 threads": {"threads": "2"}, "2 threads, passive wait": {"threads": "2", "OMP_WAIT_POLICY": "PASSIVE"},
            "1 thread": {"threads": "1"}}
NEIGHBOUR = "import time\nwhile True:\n    sum(i * i for i in range(100000))\n"


def child(workspace: Path, steps: int) -> None:
    """Time ``steps`` training steps here; print their seconds as JSON."""
    import time

    import torch

    from polyvox.config import load_params
    from polyvox.models.acoustic import AcousticModel
    from polyvox.train.data import Corpus, batch_to, mel_statistics, vocabulary_and_speakers
    from polyvox.train.trainer import model_config
    from polyvox.workspace import Workspace

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    params = load_params(REPO / "params.yaml")
    ws = Workspace(workspace)
    vocab, speakers = vocabulary_and_speakers(ws)
    corpus = Corpus(ws, "train", vocab, speakers)
    torch.manual_seed(params.seed)
    model = AcousticModel(model_config(params, len(vocab)), *mel_statistics(ws))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seconds = []
    for step in range(steps + 2):  # the first two warm caches and allocators
        batch = batch_to(corpus.collate(corpus.batch_indices(step, params.train.batch_size, params.seed), params.seed,
                                        step), torch.device("cpu"))
        started = time.perf_counter()
        losses = model(batch)
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        seconds.append(time.perf_counter() - started)
    print(json.dumps(seconds[2:]))


def timed(workspace: Path, steps: int, setting: dict, neighbour: bool) -> list[float]:
    env = {**os.environ, "BENCH_THREADS": setting["threads"], "OMP_NUM_THREADS": setting["threads"]}
    env.pop("OMP_WAIT_POLICY", None)
    env.update({k: v for k, v in setting.items() if k != "threads"})
    busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", NEIGHBOUR]) if neighbour else None
    try:
        done = subprocess.run([sys.executable, __file__, "--child", "--workspace", str(workspace), "--steps", str(steps)],
                              env=env, capture_output=True, text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workspace, args.steps)
        return
    times = {(name, n): [] for name in SETTINGS for n in (False, True)}
    for round_ in range(args.rounds):
        for name, setting in SETTINGS.items():
            for neighbour in (False, True):
                times[(name, neighbour)] += timed(args.workspace, args.steps, setting, neighbour)
                print(f"round {round_ + 1}: {name}{', neighbour' if neighbour else ''}: "
                      f"{statistics.median(times[(name, neighbour)]):.3f} s/step", flush=True)
    result = {"machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
              "steps_each": args.steps * args.rounds, "settings": {}}
    alone = statistics.median(times[("2 threads", False)])
    for name in SETTINGS:
        a, b = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        result["settings"][name] = {"alone_s_per_step": a, "with_neighbour_s_per_step": b, "slowdown": b / a,
                                    "vs_2_threads_alone": b / alone}
    out = REPO / "benchmarks/results/neighbour.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
