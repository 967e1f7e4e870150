"""prepare on kathleen-a against a bare loop that only reads and hashes the same files.

Both run in this one process, interleaved, several times; the figure is the ratio of medians,
so machine noise hits both sides alike. `prepare` here is the whole stage (read metadata.csv,
hash, copy into data/raw, read each audio header, write the manifest) into a fresh folder
("cold") and again over its own output ("warm": hashes only, copies reused).

    .venv/bin/python benchmarks/prepare_kathleen.py [--corpus PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from polyvox.config import load_params
from polyvox.corpus.prepare import prepare
from polyvox.fileio import sha256_file
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def bare_loop(files: list[Path]) -> None:
    for path in files:
        sha256_file(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/kathleen-a")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    files = sorted((args.corpus / "wavs").glob("*.flac"))
    bare_loop(files)  # warm the page cache for both sides
    variants = {  # name: (overrides, also time a warm rerun)
        "prepare cold, link auto, 1 worker": (["prepare.link=auto", "prepare.workers=1"], True),
        "prepare cold, link auto, 2 workers": (["prepare.link=auto", "prepare.workers=2"], False),
        "prepare cold, link copy, 1 worker": (["prepare.link=copy", "prepare.workers=1"], False),
    }
    timings: dict[str, list[float]] = {"bare read+hash": [], **{k: [] for k in variants}, "prepare warm rerun, 1 worker": []}
    for _ in range(args.repeats):
        for name, (overrides, warm) in variants.items():
            with tempfile.TemporaryDirectory() as scratch:
                params = load_params(REPO / "params.yaml", [f"prepare.corpus={args.corpus}", *overrides])
                ws = Workspace(Path(scratch))
                start = time.perf_counter()
                prepare(params, ws)
                timings[name].append(time.perf_counter() - start)
                if warm:
                    start = time.perf_counter()
                    prepare(params, ws)
                    timings["prepare warm rerun, 1 worker"].append(time.perf_counter() - start)
            start = time.perf_counter()
            bare_loop(files)
            timings["bare read+hash"].append(time.perf_counter() - start)
    base = statistics.median(timings["bare read+hash"])
    result = {
        "corpus": str(args.corpus),
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in timings.items()},
        "ratio_to_bare": {k: round(statistics.median(v) / base, 3) for k, v in timings.items()},
    }
    print(f"{len(files)} files, {result['bytes'] / 1e6:.1f} MB, {args.repeats} repeats, {result['machine']}")
    for key in timings:
        print(f"  {key:36s} {result['median_seconds'][key]:7.3f} s   x{result['ratio_to_bare'][key]:.2f}")
    out = REPO / "benchmarks/results/prepare_kathleen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
