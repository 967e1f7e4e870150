"""Does image-only conditioning select the right voice? (demo corpus: six teacher voices, one avatar each)

    .venv/bin/python benchmarks/image_voice_demo.py [--minutes 25] [--phase all|data|train|evaluate]

1. data: the demo corpus through prepare → validate → clean → features in ``--workspace``;
2. train: member ``demo`` (default model config, audio+image conditioning) for ``--minutes``;
3. evaluate: every held-out (test split) prompt is synthesised from its text and its speaker's
   *avatar only* (no name, no reference audio). A nearest-centroid speaker classifier on
   resemblyzer embeddings — centroids from each speaker's real training takes — names the voice of
   each synthesis; accuracy is the share named right (target ≥ 90 %). For comparison the same is
   done for the real test takes (the classifier's ceiling) and for synthesis by speaker name.

Writes ``benchmarks/results/image_voice_demo.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from polyvox.config import load_params
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CENTROID_TAKES = 20


def evaluate(params, ws: Workspace, member: str) -> dict:
    from polyvox.judges.speaker import SpeakerEncoder
    from polyvox.runtime.synthesizer import Synthesizer

    torch.set_grad_enabled(False)
    index = pd.read_parquet(ws.features_index).merge(pd.read_parquet(ws.clean_manifest)[["id", "audio"]], on="id")
    synthesizer = Synthesizer(ws.models / member)
    encoder = SpeakerEncoder()

    def embed_file(relative: str) -> np.ndarray:
        signal, rate = sf.read(str(ws.clean / relative), dtype="float32")
        return encoder.embed(signal, rate)

    speakers = sorted(index["speaker"].unique())
    centroids = {s: encoder.centroid([embed_file(a) for a in index[(index.speaker == s) & (index.split == "train")]
                                      ["audio"].head(CENTROID_TAKES)]) for s in speakers}
    matrix = np.stack([centroids[s] for s in speakers])

    def classify(embedding: np.ndarray) -> str:
        return speakers[int(np.argmax(matrix @ embedding))]

    test = index[index.split == "test"]
    rows = []
    for row in test.itertuples():
        image = np.load(ws.features / row.image_features, allow_pickle=False)
        by_image, rate = synthesizer.synthesize(row.clean_text, image=image)
        by_name, _ = synthesizer.synthesize(row.clean_text, speaker=row.speaker)
        rows.append({"id": row.id, "speaker": row.speaker,
                     "image_only": classify(encoder.embed(by_image, rate)),
                     "by_name": classify(encoder.embed(by_name, rate)),
                     "real": classify(embed_file(row.audio))})
        logging.info("%s (%s): image-only → %s, by name → %s, real → %s", row.id, row.speaker, rows[-1]["image_only"],
                     rows[-1]["by_name"], rows[-1]["real"])
    table = pd.DataFrame(rows)
    accuracy = {k: float((table[k] == table["speaker"]).mean()) for k in ("image_only", "by_name", "real")}
    per_speaker = {s: float((part["image_only"] == s).mean()) for s, part in table.groupby("speaker")}
    confusion = pd.crosstab(table["speaker"], table["image_only"]).to_dict()
    return {"prompts": len(table), "speakers": speakers, "accuracy": accuracy, "image_only_per_speaker": per_speaker,
            "image_only_confusion": confusion, "target": ">= 0.90", "met": accuracy["image_only"] >= 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks/work/demo_voices")
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--phase", choices=("all", "data", "train", "evaluate"), default="all")
    parser.add_argument("--member", default="demo")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="params override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ws = Workspace(args.workspace)
    params = load_params(REPO / "params.yaml", ["prepare.corpus=null", f"train.max_minutes={args.minutes}",
                                                *args.overrides])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "image_voice_demo.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if args.phase in ("all", "data"):
        from polyvox.clean.stage import clean
        from polyvox.corpus.prepare import prepare
        from polyvox.features.stage import features
        from polyvox.validate.stage import validate

        for stage in (prepare, validate, clean, features):
            stage(params, ws)
    if args.phase in ("all", "train"):
        from polyvox.train.trainer import train

        result = train(params, ws, member=args.member)
        report["train"] = {"steps": result.steps, "best_val_loss": result.best_val_loss,
                           "seconds_per_step": result.seconds_per_step, "minutes": args.minutes, "machine": machine,
                           "member": args.member, "model": params.model.model_dump()}
        path.write_text(json.dumps(report, indent=1) + "\n")
    if args.phase in ("all", "evaluate"):
        report["evaluate"] = {"machine": machine, "member": args.member, **evaluate(params, ws, args.member)}
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report["evaluate"]["accuracy"], indent=1))


if __name__ == "__main__":
    main()
