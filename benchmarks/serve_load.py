"""Sustained load: N concurrent clients against `polyvox serve` on loopback for S seconds.

    .venv/bin/python benchmarks/serve_load.py --bundle models/champion [--clients 16] [--seconds 60]

Every response is counted by status class; 5xx must be zero. Latency p50/p95 is reported for the
first and the last ``--window`` seconds, and the server's resident memory (RSS, psutil) after the
warm-up and at the end, against the bound ``--rss-growth-mb`` (default 64 MB): a leak per request
shows as growth over thousands of requests. Exit status 1 when a 5xx was seen or the bound broken.
Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SENTENCES = ["Please call Stella and ask her to bring these things with her.", "Not yet.",
             "The meeting starts at half past nine, in room twelve.", "What would you like for dinner on Friday?"]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"requests": 0, "p50_s": None, "p95_s": None}
    array = np.array(values)
    return {"requests": len(values), "p50_s": float(np.percentile(array, 50)), "p95_s": float(np.percentile(array, 95))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of full load before RSS is first read")
    parser.add_argument("--rss-growth-mb", type=float, default=64.0)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("polyvox")), "serve", "--bundle", str(args.bundle),
                               "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json().get("status") == "ok":
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("polyvox serve did not come up")
            time.sleep(0.5)
        speaker = httpx.get(f"{url}/voices").json()["speakers"][0]
        process = psutil.Process(server.pid)

        def client(index: int) -> None:
            with httpx.Client(timeout=300) as http:
                turn = index
                while time.monotonic() < stop:
                    start = time.monotonic()
                    try:
                        status = http.post(f"{url}/synthesize", data={"text": SENTENCES[turn % len(SENTENCES)],
                                                                      "speaker": speaker}).status_code
                    except httpx.TransportError:
                        status = 599  # no answer at all counts as a server failure
                    with lock:
                        records.append((start - began, time.monotonic() - start, status))
                    turn += 1

        def run_clients() -> None:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        # Warm-up at full concurrency: lazy initialisation, one allocator arena per worker thread,
        # onnxruntime's buffers; the steady state after it is what growth is measured from.
        records: list[tuple[float, float, int]] = []  # (start offset, latency, status)
        lock = threading.Lock()
        began = time.monotonic()
        stop = began + args.warmup
        run_clients()
        warmup_statuses = sorted({status for _, _, status in records})
        rss_start = process.memory_info().rss
        records = []
        began = time.monotonic()
        stop = began + args.seconds
        run_clients()
        wall = time.monotonic() - began
        rss_end = process.memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=30)
    statuses: dict[str, int] = {}
    for _, _, status in records:
        statuses[f"{status // 100}xx"] = statuses.get(f"{status // 100}xx", 0) + 1
    ok = [(t, latency) for t, latency, status in records if status == 200]
    growth_mb = (rss_end - rss_start) / 2**20
    report = {
        "clients": args.clients, "seconds": args.seconds, "wall_s": wall, "statuses": statuses,
        "throughput_rps": len(ok) / wall,
        "all": percentiles([latency for _, latency in ok]),
        "first_window": percentiles([latency for t, latency in ok if t < args.window]),
        "last_window": percentiles([latency for t, latency in ok if t >= args.seconds - args.window]),
        "rss_start_mb": rss_start / 2**20, "rss_end_mb": rss_end / 2**20, "rss_growth_mb": growth_mb,
        "rss_bound_mb": args.rss_growth_mb, "bundle": str(args.bundle), "warmup_s": args.warmup,
        "warmup_statuses": warmup_statuses,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=1) + "\n")
    first, last = report["first_window"], report["last_window"]
    print(f"{args.clients} clients × {args.seconds:.0f} s: {statuses}, {report['throughput_rps']:.2f} req/s; "
          f"p50/p95 first {args.window:.0f} s {first['p50_s']:.3f}/{first['p95_s']:.3f} s, last {last['p50_s']:.3f}/"
          f"{last['p95_s']:.3f} s; RSS {report['rss_start_mb']:.0f} → {report['rss_end_mb']:.0f} MB "
          f"({growth_mb:+.1f} MB, bound {args.rss_growth_mb:.0f} MB)")
    failed = statuses.get("5xx", 0) > 0 or growth_mb > args.rss_growth_mb
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
