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
SETTINGS = {"2 threads": {"threads": "2"}, "2 threads passive-wait": {"threads": "2", "OMP_WAIT_POLICY": "PASSIVE"},
            # libgomp (torch's OpenMP on Linux) spins GOMP_SPINCOUNT times (default 300000) at a barrier before it sleeps
            "2 threads spin-10k": {"threads": "2", "GOMP_SPINCOUNT": "10000"},
            "2 threads spin-1k": {"threads": "2", "GOMP_SPINCOUNT": "1000"},
            "1 thread": {"threads": "1"},
            # polyvox's own policy: GOMP_SPINCOUNT from polyvox/__init__ and the trainer's ThreadGovernor
            "2 threads governed": {"threads": "2", "governed": "1"}}
NEIGHBOURS = {
    # a pure-Python loop: one busy core
    "python": "while True:\n    sum(i * i for i in range(100000))\n",
    # a scorer's shape: torch on two threads (Whisper, DNSMOS), both cores busy in bursts
    "torch": "import torch\ntorch.set_num_threads(2)\nx = torch.randn(512, 512)\nwhile True:\n    x = torch.tanh(x @ x)\n",
}


def child(workspace: Path, steps: int) -> None:
    """Time ``steps`` training steps here; print their seconds as JSON."""
    import time

    import polyvox  # noqa: F401  before torch: its GOMP_SPINCOUNT must be in the environment when libgomp loads
    import torch

    from polyvox.config import load_params
    from polyvox.models.acoustic import AcousticModel
    from polyvox.train.data import Corpus, batch_to, mel_statistics, vocabulary_and_speakers
    from polyvox.train.budget import ThreadGovernor
    from polyvox.train.trainer import model_config
    from polyvox.workspace import Workspace

    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    governor = ThreadGovernor(int(os.environ["BENCH_THREADS"])) if os.environ.get("BENCH_GOVERNED") else None
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
        if governor is not None:
            governor.observe(seconds[-1])
    if governor is not None:
        print(f"governor switches (steps observed, threads, cores others used): {governor.switches}", file=sys.stderr)
    print(json.dumps(seconds[2:]))


def timed(workspace: Path, steps: int, setting: dict, neighbour: bool, kind: str, own_session: bool) -> list[float]:
    env = {**os.environ, "BENCH_THREADS": setting["threads"], "OMP_NUM_THREADS": setting["threads"]}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "BENCH_GOVERNED"):
        env.pop(name, None)
    if setting.get("governed"):  # as polyvox runs: its own spin count, no OMP_NUM_THREADS (which turns the governor off)
        env.pop("OMP_NUM_THREADS")
        env["BENCH_GOVERNED"] = "1"
    else:  # libgomp's default unless the setting says otherwise (polyvox/__init__ would set its own)
        env["GOMP_SPINCOUNT"] = "300000"
    env.update({k: v for k, v in setting.items() if k not in ("threads", "governed")})
    # own_session: the neighbour was started from another shell or job. Linux's autogroup scheduler
    # (/proc/sys/kernel/sched_autogroup_enabled) then shares the CPU between the two sessions
    # first, and `nice` only orders processes inside one session: the niced neighbour gets its
    # fair half whatever its nice value.
    busy = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", NEIGHBOURS[kind]],
                            start_new_session=own_session) if neighbour else None
    try:
        done = subprocess.run([sys.executable, __file__, "--child", "--workspace", str(workspace), "--steps", str(steps)],
                              env=env, capture_output=True, text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    for line in done.stderr.splitlines():
        if line.startswith("governor"):
            print(f"  {line}", flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbour", choices=sorted(NEIGHBOURS), default="python")
    parser.add_argument("--own-session", action="store_true",
                        help="start the neighbour in a session of its own (as from another terminal)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/neighbour.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.workspace, args.steps)
        return
    names = args.settings.split(",")
    times = {(name, n): [] for name in names for n in (False, True)}
    for round_ in range(args.rounds):
        for name in names:
            for neighbour in (False, True):
                times[(name, neighbour)] += timed(args.workspace, args.steps, SETTINGS[name], neighbour,
                                                  args.neighbour, args.own_session)
                print(f"round {round_ + 1}: {name}{', neighbour' if neighbour else ''}: "
                      f"{statistics.median(times[(name, neighbour)]):.3f} s/step", flush=True)
    result = {"machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
              "steps_each": args.steps * args.rounds, "neighbour": args.neighbour,
              "neighbour_session": "own" if args.own_session else "same", "settings": {}}
    alone = statistics.median(times[(names[0], False)])
    for name in names:
        a, b = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        result["settings"][name] = {"alone_s_per_step": a, "with_neighbour_s_per_step": b, "slowdown": b / a,
                                    "with_neighbour_mean_s_per_step": statistics.mean(times[(name, True)]),
                                    f"vs_{names[0]}_alone": b / alone}
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
