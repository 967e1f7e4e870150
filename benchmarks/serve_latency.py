"""Serving latency and throughput on loopback, next to flite on the same sentences in the same run.

    .venv/bin/python benchmarks/serve_latency.py [--bundle DIR] [--seconds 20] [--clients 1 4 16]

1. ``polyvox serve`` on 127.0.0.1 over ``--bundle`` (default: a bundle built from the kathleen-a
   workspace's candidate and its evaluation, with the ONNX export — ``quality_kathleen.py`` and
   ``polyvox ensemble``/``evaluate`` there make them);
2. for each client count, that many threads POST a 10-word sentence to /synthesize for
   ``--seconds``; latency p50/p95 and requests per second;
3. the same sentence through ``flite`` (a subprocess per request, same client counts, same
   duration) — the ratio says what the neural voice costs next to a classic engine.

Writes ``benchmarks/results/serve_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORKSPACE = REPO / "benchmarks" / "work" / "quality_kathleen"
SENTENCE = "Please call Stella and ask her to bring these things with her."  # ten words


def build_bundle(target: Path) -> Path:
    from polyvox.runtime.bundle import build_bundle as build

    metrics = json.loads((WORKSPACE / "reports/evaluate/metrics.json").read_text())
    if target.exists():
        shutil.rmtree(target)
    build(WORKSPACE / "models/candidate", metrics, {"promoted": True, "rules": []}, metrics["data_version"], "benchmark",
          "polyvox", target, export_onnx=True)
    meta = json.loads((target / "bundle.json").read_text())
    (target / "bundle.json").write_text(json.dumps({**meta, "version": "benchmark"}))
    return target


def load(call, clients: int, seconds: float) -> dict:
    latencies, failures, lock = [], [], threading.Lock()
    stop = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop:
            started = time.perf_counter()
            ok = call()
            elapsed = time.perf_counter() - started
            with lock:
                (latencies if ok else failures).append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    values = np.array(latencies)
    return {"clients": clients, "requests": len(latencies), "failures": len(failures),
            "p50_s": float(np.percentile(values, 50)) if len(values) else None,
            "p95_s": float(np.percentile(values, 95)) if len(values) else None,
            "throughput_rps": len(latencies) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    args = parser.parse_args()
    flite = shutil.which("flite")
    if flite is None:
        sys.exit("flite is not installed (apt-get install flite)")
    bundle = args.bundle or build_bundle(REPO / "benchmarks" / "work" / "serve_bundle")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("polyvox")), "serve", "--bundle", str(bundle),
                               "--port", str(port), "-S", f"serve.runtime={args.runtime}"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json().get("status") == "ok":
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        voices = httpx.get(f"{url}/voices").json()
        speaker = voices["speakers"][0]
        with httpx.Client(timeout=120) as http:
            http.post(f"{url}/synthesize", data={"text": SENTENCE, "speaker": speaker})  # warm-up
        scratch = Path(tempfile.mkdtemp())

        def polyvox_call() -> bool:
            with httpx.Client(timeout=300) as http:
                return http.post(f"{url}/synthesize", data={"text": SENTENCE, "speaker": speaker}).status_code == 200

        def flite_call() -> bool:
            out = scratch / f"{threading.get_ident()}.wav"
            return subprocess.run([flite, "-t", SENTENCE, "-o", str(out)], capture_output=True).returncode == 0

        rows = []
        for clients in args.clients:
            ours = load(polyvox_call, clients, args.seconds)
            theirs = load(flite_call, clients, args.seconds)
            rows.append({"clients": clients, "polyvox": ours, "flite": theirs,
                         "p50_ratio": ours["p50_s"] / theirs["p50_s"],
                         "throughput_ratio": ours["throughput_rps"] / theirs["throughput_rps"]})
            print(f"{clients:>2} clients: polyvox p50 {ours['p50_s']:.3f} s p95 {ours['p95_s']:.3f} s "
                  f"{ours['throughput_rps']:.2f} req/s ({ours['failures']} failed) | flite p50 {theirs['p50_s']:.3f} s "
                  f"{theirs['throughput_rps']:.2f} req/s | p50 ×{rows[-1]['p50_ratio']:.1f}", flush=True)
        shutil.rmtree(scratch)
    finally:
        server.terminate()
        server.wait(timeout=30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"sentence": SENTENCE, "seconds_per_level": args.seconds, "runtime": args.runtime,
              "voice": voices, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"serve_latency_{args.runtime}.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
