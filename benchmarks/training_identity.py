"""Do the trainers compute exactly what they computed before a refactor? A fingerprint of each.

    .venv/bin/python benchmarks/training_identity.py --out before.json            # at the old commit
    .venv/bin/python benchmarks/training_identity.py --out after.json --compare before.json

(``PYTHONPATH=<other checkout>/src`` runs another commit's polyvox with this script.) On eight real
kathleen-a takes (features with content, in ``--workspace``, built once and reused), it trains a few
fixed-step runs of each trainer: the text→mel member, the conversion member, the vocoder without
and with its harmonic source, and an adversarial vocoder (discriminators joining after a warm-up).
For each it records a digest of ``metrics.csv`` (every column but the wall-clock ``seconds``) and
of the tensors in ``best.pt`` and ``last.pt`` (weights, optimiser, schedule, discriminators). Two
files that agree mean the same losses, the same learning rates and bit-identical weights.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: the same sums in the same order each run

import torch  # noqa: E402

from tiny_project import TINY_TRAINING  # noqa: E402

STEPS = ["max_steps=6", "validate_every=2", "checkpoint_every=2"]
RUNS = {  # name → (kind of run, overrides)
    "acoustic": ("member", ["train.members.voice.kind=acoustic", *(f"train.{s}" for s in STEPS)]),
    "convert": ("member", ["train.members.voice.kind=convert", "train.members.voice.conditioning=audio",
                           *(f"train.{s}" for s in STEPS)]),
    "vocoder_plain": ("vocoder", ["vocoder.source=none", *(f"vocoder.{s}" for s in STEPS)]),
    "vocoder_harmonic": ("vocoder", ["vocoder.source=harmonic", *(f"vocoder.{s}" for s in STEPS)]),
    "vocoder_gan": ("vocoder", ["vocoder.source=harmonic", "vocoder.discriminators=[period, resolution]",
                                "vocoder.warmup_steps=2", *(f"vocoder.{s}" for s in STEPS)]),
}
DATA = ["parallel.workers=1", "features.splits.val=0.2", "features.splits.test=0.2", *TINY_TRAINING,
        "train.members.voice.kind=convert", "train.members.voice.conditioning=audio"]


def params(corpus: Path, *overrides: str):
    from polyvox.config import load_params

    return load_params(REPO / "params.yaml", [f"prepare.corpus={corpus}", *DATA, *overrides])


def build_data(root: Path, kathleen: Path) -> Path:
    """Eight real takes through prepare → features (content included); returns the workspace."""
    from polyvox.clean.stage import clean
    from polyvox.corpus.prepare import prepare
    from polyvox.features.stage import features
    from polyvox.validate.stage import validate
    from polyvox.workspace import Workspace

    corpus, ws = root / "corpus", root / "ws"
    if (ws / "data" / "features").is_dir():
        return ws
    shutil.rmtree(root, ignore_errors=True)
    (corpus / "clips").mkdir(parents=True)
    texts = dict(line.split("|")[:2] for line in (kathleen / "metadata.csv").read_text().splitlines() if line)
    rows = []
    for source in sorted((kathleen / "wavs").glob("*.flac"))[:24:3]:
        shutil.copy(source, corpus / "clips" / source.name)
        rows.append([source.stem, "kathleen", texts[source.stem], f"clips/{source.name}"])
    with open(corpus / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "speaker", "text", "audio"], *rows])
    p = params(corpus / "manifest.csv")
    for stage in (prepare, validate, clean, features):
        stage(p, Workspace(ws))
    return ws


def digest_metrics(path: Path) -> str:
    rows = list(csv.reader(open(path, newline="")))
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    return hashlib.sha256(json.dumps([[row[i] for i in keep] for row in rows]).encode()).hexdigest()


def digest_state(value, sink) -> None:
    """Every tensor (and number) in a checkpoint, in a fixed order, into ``sink``."""
    if isinstance(value, torch.Tensor):
        sink.update(str((value.dtype, tuple(value.shape))).encode())
        if value.numel():
            sink.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            if key in ("trained_seconds", "planned_steps"):  # wall clock, and None with fixed steps
                continue
            sink.update(str(key).encode())
            digest_state(value[key], sink)
    elif isinstance(value, (list, tuple)):
        for item in value:
            digest_state(item, sink)
    else:
        sink.update(repr(value).encode())


def fingerprint_run(folder: Path) -> dict[str, str]:
    out = {"metrics": digest_metrics(folder / "metrics.csv")}
    for name in ("best.pt", "last.pt"):
        sink = hashlib.sha256()
        digest_state(torch.load(folder / name, map_location="cpu", weights_only=True), sink)
        out[name] = sink.hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / "work" / "training_identity")
    parser.add_argument("--kathleen", type=Path, default=REPO.parent / "shared" / "data" / "kathleen-a")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    args = parser.parse_args()

    import polyvox
    from polyvox.train.trainer import train
    from polyvox.train.vocoder import train_vocoder
    from polyvox.workspace import Workspace

    ws = Workspace(build_data(args.workspace, args.kathleen))
    corpus = args.workspace / "corpus" / "manifest.csv"
    prints = {}
    for name, (kind, overrides) in RUNS.items():
        p = params(corpus, *overrides)
        if kind == "member":
            shutil.rmtree(ws.models / "voice", ignore_errors=True)
            train(p, ws, member="voice", resume=False)
            folder = ws.models / "voice"
        else:
            shutil.rmtree(ws.models / name, ignore_errors=True)
            train_vocoder(p, ws, name=name, resume=False)
            folder = ws.models / name
        prints[name] = fingerprint_run(folder)
        print(name, prints[name]["metrics"][:12], prints[name]["last.pt"][:12], flush=True)
    record = {"polyvox": str(Path(polyvox.__file__).parent), "torch": torch.__version__, "runs": prints}
    args.out.write_text(json.dumps(record, indent=1))
    if args.compare:
        before = json.loads(args.compare.read_text())["runs"]
        differ = [f"{name} {part}" for name in prints for part in prints[name]
                  if before.get(name, {}).get(part) != prints[name][part]]
        print("identical" if not differ else "DIFFERENT: " + ", ".join(differ))
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
