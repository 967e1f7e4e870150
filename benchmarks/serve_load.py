"""Sustained load: N concurrent clients against `polyvox serve` on loopback for S seconds.

    .venv/bin/python benchmarks/serve_load.py --bundle models/champion [--clients 16] [--seconds 60]
    .venv/bin/python benchmarks/serve_load.py --bundle models/champion --clients 64 --hostile

With ``--hostile`` a quarter of the clients are hostile (issues 20 and 31), in equal shares: bodies
that declare 10 GB, a decompression bomb (a 13300×13300 PNG of a few hundred KB), slow clients that
trickle their body a byte at a time, slow readers (a stream asked for and never read, the socket
held for 30 s) and uploads that decode big (a 75 KB silent 8-channel 192 kHz 30 s FLAC as
reference audio). Every refused request must be a 4xx or a 503 with a reason (a JSON ``detail``).
The good clients' p95 is reported against a run of as many good clients alone (`--baseline-clients`), measured first in
the same run, with the targets: good p95 ≤ 2× the baseline's, peak RSS ≤ 300 MB over the start.

Every response is counted by status class; 5xx other than 503 (busy, Retry-After) must be zero. Latency p50/p95 is reported for the
first and the last ``--window`` seconds, and the server's resident memory (RSS, psutil) after the
warm-up and at the end, against the bound ``--rss-growth-mb`` (default 64 MB): a leak per request
shows as growth over thousands of requests. Exit status 1 when a 5xx was seen or the bound broken.
Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import io
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


def _bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (13300, 13300)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wide_flac() -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((30 * 192000, 8), dtype="float32"), 192000, format="FLAC")
    return buffer.getvalue()


def hostile(kind: str, url: str, speaker: str, bomb: bytes, flac: bytes = b"", hold: float = 30.0) -> tuple[int, bool]:
    """One hostile request; (status, whether the answer gave a reason)."""
    host, port = url.removeprefix("http://").split(":")
    if kind == "bomb":
        response = httpx.post(f"{url}/synthesize", data={"text": "Hello.", "speaker": speaker},
                              files={"image": ("bomb.png", bomb, "image/png")}, timeout=300)
        return response.status_code, bool(response.json().get("detail"))
    if kind == "upload":
        response = httpx.post(f"{url}/synthesize", data={"text": "Hello."}, timeout=300,
                              files={"reference_audio": ("wide.flac", flac, "audio/flac")})
        return response.status_code, response.status_code == 200 or bool(response.json().get("detail"))
    if kind == "reader":  # asks for a long stream, reads its status line, then nothing for `hold` seconds
        body = ("text=" + "Go+on+and+on.+" * 40 + f"&speaker={speaker}&stream=true").encode()
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(60)
        conn.connect((host, int(port)))
        try:
            conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = conn.recv(12)
            time.sleep(hold)
        finally:
            conn.close()
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") and len(head) >= 12 else 599
        return status, True
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        if kind == "oversized":
            conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 10000000000\r\n\r\n--b\r\n")
        else:  # slow: a small form, one byte every 50 ms
            body = f"text=Slowly+now.&speaker={speaker}".encode()
            conn.sendall(b"POST /synthesize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            for byte in body:
                conn.sendall(bytes([byte]))
                time.sleep(0.05)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
            if kind == "oversized" and b"}" in reply:
                break
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 599
    return status, status == 200 or b'"detail"' in reply


ATTACKS = ("oversized", "bomb", "slow", "reader", "upload")


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
    parser.add_argument("--hostile", action="store_true", help="a quarter of the clients hostile (see above)")
    parser.add_argument("--baseline-clients", type=int, default=None,
                        help="with --hostile: good clients of the baseline (default: as many as run beside the "
                             "attackers, so that the ratio is the attackers' cost alone)")
    parser.add_argument("--reader-hold", type=float, default=30.0, help="with --hostile: seconds a slow reader holds its socket")
    args = parser.parse_args()
    bomb = _bomb() if args.hostile else b""
    flac = _wide_flac() if args.hostile else b""
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

        def client(index: int, kind: str) -> None:
            with httpx.Client(timeout=300) as http:
                turn = index
                while time.monotonic() < stop:
                    start = time.monotonic()
                    reasoned = True
                    try:
                        if kind == "good":
                            response = http.post(f"{url}/synthesize", data={"text": SENTENCES[turn % len(SENTENCES)],
                                                                            "speaker": speaker})
                            status = response.status_code
                            reasoned = status == 200 or bool(response.json().get("detail"))
                        else:
                            status, reasoned = hostile(kind, url, speaker, bomb, flac, args.reader_hold)
                    except (httpx.TransportError, OSError):
                        status = 599  # no answer at all counts as a server failure
                    with lock:
                        records.append((start - began, time.monotonic() - start, status, kind, reasoned))
                    turn += 1

        def kinds(clients: int, mixed: bool) -> list[str]:
            if not mixed:
                return ["good"] * clients
            bad = clients // 4
            return ["good"] * (clients - bad) + [ATTACKS[i % len(ATTACKS)] for i in range(bad)]

        def run_clients(clients: int = args.clients, mixed: bool = args.hostile) -> None:
            threads = [threading.Thread(target=client, args=(i, kind)) for i, kind in enumerate(kinds(clients, mixed))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        records: list[tuple[float, float, int, str, bool]] = []  # (start offset, latency, status, kind, reasoned)
        lock = threading.Lock()
        baseline = None
        if args.hostile:  # the figure the good clients' latency under attack is read against, first
            began = time.monotonic()
            stop = began + args.seconds
            if args.baseline_clients is None:
                args.baseline_clients = args.clients - args.clients // 4  # the good clients of the mixed run
            run_clients(args.baseline_clients, mixed=False)
            baseline = percentiles([latency for _, latency, status, _, _ in records if status == 200])
        # Warm-up with the measured mix, right before it: lazy initialisation, one allocator arena per
        # worker thread, onnxruntime's buffers; the steady state after it is what growth is measured from.
        records = []
        began = time.monotonic()
        stop = began + args.warmup
        run_clients()
        warmup_statuses = sorted({record[2] for record in records})
        rss_start = process.memory_info().rss
        records = []
        began = time.monotonic()
        stop = began + args.seconds
        peak = [rss_start]
        sampling = threading.Event()

        def sample() -> None:  # the peak under load, not only the two ends
            while not sampling.wait(0.2):
                peak[0] = max(peak[0], process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run_clients()
        sampling.set()
        sampler.join()
        wall = time.monotonic() - began
        rss_end = process.memory_info().rss
    finally:
        server.terminate()
        server.wait(timeout=30)
    statuses: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for _, _, status, kind, _ in records:
        group = "503" if status == 503 else f"{status // 100}xx"  # 503: busy, with Retry-After — a refusal, not a failure
        statuses[group] = statuses.get(group, 0) + 1
        by_kind.setdefault(kind, {})[str(status)] = by_kind.setdefault(kind, {}).get(str(status), 0) + 1
    unexplained = sum(1 for *_, reasoned in records if not reasoned)
    ok = [(t, latency) for t, latency, status, kind, _ in records if status == 200 and kind == "good"]
    growth_mb = (rss_end - rss_start) / 2**20
    report = {
        "clients": args.clients, "seconds": args.seconds, "wall_s": wall, "statuses": statuses,
        "throughput_rps": len(ok) / wall,
        "all": percentiles([latency for _, latency in ok]),
        "first_window": percentiles([latency for t, latency in ok if t < args.window]),
        "last_window": percentiles([latency for t, latency in ok if t >= args.seconds - args.window]),
        "rss_start_mb": rss_start / 2**20, "rss_end_mb": rss_end / 2**20, "rss_growth_mb": growth_mb,
        "rss_peak_mb": peak[0] / 2**20, "rss_peak_growth_mb": (peak[0] - rss_start) / 2**20,
        "rss_bound_mb": args.rss_growth_mb, "bundle": str(args.bundle), "warmup_s": args.warmup,
        "warmup_statuses": warmup_statuses, "hostile": args.hostile, "by_kind": by_kind,
        "refused_without_reason": unexplained, "baseline": baseline, "baseline_clients": args.baseline_clients,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("serve_load_hostile.json" if args.hostile else "serve_load.json")).write_text(json.dumps(report, indent=1) + "\n")
    first, last = report["first_window"], report["last_window"]
    print(f"{args.clients} clients × {args.seconds:.0f} s: {statuses}, {report['throughput_rps']:.2f} req/s; "
          f"p50/p95 first {args.window:.0f} s {first['p50_s']:.3f}/{first['p95_s']:.3f} s, last {last['p50_s']:.3f}/"
          f"{last['p95_s']:.3f} s; RSS {report['rss_start_mb']:.0f} → {report['rss_end_mb']:.0f} MB "
          f"({growth_mb:+.1f} MB, bound {args.rss_growth_mb:.0f} MB)")
    if baseline is not None:
        print(f"hostile mix {by_kind}; refused without a reason: {unexplained}; good p95 {report['all']['p95_s']:.3f} s "
              f"against {baseline['p95_s']:.3f} s with {args.baseline_clients} good clients alone "
              f"({report['all']['p95_s'] / baseline['p95_s']:.2f}×)")
    failed = statuses.get("5xx", 0) > 0 or growth_mb > args.rss_growth_mb or unexplained > 0
    if baseline is not None:
        p95_ratio = report["all"]["p95_s"] / baseline["p95_s"]
        print(f"peak RSS {report['rss_peak_mb']:.0f} MB ({report['rss_peak_growth_mb']:+.0f} MB over the start; "
              f"target ≤ +300 MB); good p95 {p95_ratio:.2f}× the baseline (target ≤ 2×)")
        failed = failed or p95_ratio > 2.0 or report["rss_peak_growth_mb"] > 300
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
