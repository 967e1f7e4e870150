"""A vocoder that learns from the converter's renderings of the takes (ground-truth-aligned mels).

    .venv/bin/python benchmarks/gta_vocoder.py --workspace benchmarks/work/kuser \\
        --member benchmarks/work/kuser/models/voice_pitch --twin benchmarks/work/kgta

A converter's mel is smoother than a real one, and a vocoder trained on real mels meets that
smoothness only at synthesis (copy synthesis of her takes: DNSMOS 2.79; the champion on held-out
sentences: 2.34). Tacotron 2 and HiFi-GAN fine-tune the vocoder on the acoustic model's
teacher-forced mels for this; a converter needs no forcing: decoding a take from its own content
features and pitch gives a mel on the take's own frame grid, aligned with its audio.

This makes a hard-linked twin of ``--workspace`` (``data/`` linked, nothing of it written) whose
feature files carry, in place of each take's mel, ``--member``'s rendering of it (the speaker's mean
voice embedding, as synthesis by name uses; the take's pitch z-scored with the speaker's statistics,
as training did); F0 and everything else stay. ``polyvox train-vocoder`` in the twin then learns
from those mels and the real audio, with no change to the trainer; ``benchmarks/heldout.py`` scores
the result against a vocoder trained on real mels.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polyvox.fileio import load_arrays, save_arrays
from polyvox.frontends.content import on_grid
from polyvox.progress import track
from polyvox.runtime.converter import ConverterSynthesizer
from polyvox.signal.pitch import normalised_log_f0

log = logging.getLogger("gta_vocoder")


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]


def twin(workspace: Path, target: Path) -> None:
    """``target/data`` as hard links of ``workspace/data`` (new files replace links, never write through)."""
    if (target / "data").is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(workspace / "data"), str(target / "data")], check=True)


@torch.no_grad()
def render_takes(source: Path, target: Path, member: Path) -> dict:
    """Replace every take's mel in ``target``'s features with ``member``'s rendering of it; the real
    mels are read from ``source``'s (a run killed half-way and started again still compares with them)."""
    features = target / "data" / "features"
    done = features / "gta.json"
    if done.is_file():
        return json.loads(done.read_text())
    index = pd.read_parquet(features / "index.parquet")
    stats = json.loads((features / "stats.json").read_text())
    voice = ConverterSynthesizer(member)
    l1 = []
    for row in track(list(index.itertuples()), len(index), "render the takes (ground-truth-aligned mels)", log):
        real = load_arrays(source / "data" / "features" / row.features)
        frames = real["mel"].shape[1]
        s = stats["speakers"].get(row.speaker, stats["global"])
        pitch, voiced = normalised_log_f0(real["f0"], s["log_f0_mean"], s["log_f0_std"])
        content = on_grid(np.load(features / row.content_features).astype(np.float32), frames, voice.audio)
        mel = voice.model.infer(as_tensor(content), as_tensor(pitch), as_tensor(voiced),
                                **voice.conditioning_inputs(row.speaker, None, None))[0].numpy()
        l1.append(float(np.abs(mel - real["mel"]).mean()))
        # atomic: a new file renamed over the twin's hard link, so the source keeps its own
        save_arrays(features / row.features, {**real, "mel": mel.astype(real["mel"].dtype)})
    record = {"member": str(member), "takes": len(index), "mean_l1_to_real": float(np.mean(l1))}
    done.write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with content features")
    parser.add_argument("--member", type=Path, required=True, help="a trained conversion member's folder")
    parser.add_argument("--twin", type=Path, required=True, help="where the twin workspace goes")
    parser.add_argument("--fresh", action="store_true", help="remove the twin first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(args.twin, ignore_errors=True)
    twin(args.workspace, args.twin)
    print(json.dumps(render_takes(args.workspace, args.twin, args.member)))


if __name__ == "__main__":
    main()
