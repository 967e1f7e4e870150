"""What each vocoder option costs on the CPU: training steps per minute, and inference per second of audio.

    .venv/bin/python benchmarks/vocoder_cost.py [--rounds 5] [--steps 3] [--threads 1] [--onnx]

Training: one process builds the params.yaml vocoder and, for each variant (spectral losses only;
the harmonic source, with its excitation and pitch tracker; the multi-period discriminator; the
multi-resolution one; both; both at twice the width), runs
the trainer's own step (:class:`polyvox.train.vocoder.Adversary` and the spectral loss) on random
batches of params.yaml's shape. The variants take turns, ``--steps`` steps each per round, over
``--rounds`` rounds, so a noisy machine slows them alike; the median seconds per step and its
ratio to the spectral baseline are reported. Inference: the real-time factor of the vocoder alone
on one thread, through PyTorch and (``--onnx``) onnxruntime, on 5 s of mel, taking turns likewise:
without a source, and with the harmonic one given a contour and reading its own from the mel.

Writes ``benchmarks/results/vocoder_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from polyvox.config import load_params
from polyvox.models.neural_vocoder import Vocos
from polyvox.train.loop import optimise
from polyvox.train.schedules import cosine
from polyvox.train.vocoder import Adversary, VocoderLoss, harmonic_source, pitch_losses, vocoder_config

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "spectral": dict(discriminators=[]),
    "harmonic source": dict(discriminators=[], source="harmonic"),
    "period": dict(discriminators=["period"]),
    "resolution": dict(discriminators=["resolution"]),
    "period+resolution": dict(discriminators=["period", "resolution"]),
    "period+resolution, 2x width": dict(discriminators=["period", "resolution"], width=2),
}


def trainer(params, variant: dict):
    cfg = params.vocoder.model_copy(update={
        "discriminators": variant["discriminators"], "warmup_steps": 0, "max_steps": 2400,  # a schedule to step along
        "discriminator_channels": params.vocoder.discriminator_channels * variant.get("width", 1),
        "source": variant.get("source", "none")})
    model = Vocos(vocoder_config(params.audio, cfg))
    loss_fn = VocoderLoss(params.audio)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine(cfg.max_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    gan = Adversary(cfg, torch.device("cpu"), False) if cfg.discriminators else None
    samples = cfg.segment_frames * params.audio.hop_length

    def step() -> None:
        mel = torch.randn(cfg.batch_size, params.audio.n_mels, cfg.segment_frames) - 5
        wave = 0.1 * torch.randn(cfg.batch_size, samples)
        track = 100 + 150 * torch.rand(cfg.batch_size, cfg.segment_frames)
        predicted = model(mel, harmonic_source(model, track, 0, 0) if model.harmonic else None)
        losses = loss_fn(predicted, wave)
        if model.harmonic:
            losses.update(pitch_losses(model, mel, track))
            losses["total"] = losses["total"] + losses["pitch"] + losses["voicing"]
        if gan:
            losses.update(gan.step(predicted, wave, adversarial=True))
            losses["total"] = (losses["total"] + cfg.adversarial_weight * losses["adversarial"]
                               + cfg.feature_weight * losses["feature_matching"])
        optimise(losses["total"], model, optimiser, scheduler, scaler, cfg.grad_clip)

    parameters = sum(p.numel() for p in gan.discriminators.parameters()) if gan else 0
    return step, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--onnx", action="store_true", help="also time the vocoder's ONNX export in onnxruntime")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    torch.manual_seed(0)

    steps = {name: trainer(params, variant) for name, variant in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name, (step, _) in steps.items():
        step()  # warm-up: allocations and first-call overheads stay out of the timings
    for round_ in range(args.rounds):
        for name, (step, _) in steps.items():
            began = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - began) / args.steps)
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    base = statistics.median(times["spectral"])
    training = {name: {"seconds_per_step": statistics.median(t), "ratio_to_spectral": statistics.median(t) / base,
                       "steps_per_minute": 60 / statistics.median(t),
                       "discriminator_parameters": steps[name][1]} for name, t in times.items()}

    model = Vocos(vocoder_config(params.audio, params.vocoder.model_copy(update={"source": "none"}))).eval()
    harmonic = Vocos(vocoder_config(params.audio, params.vocoder.model_copy(update={"source": "harmonic"}))).eval()
    seconds = 5.0
    frames = int(seconds * params.audio.sample_rate / params.audio.hop_length)
    mel = torch.randn(1, params.audio.n_mels, frames) - 5
    f0 = torch.linspace(110, 220, frames)[None]
    runners = {"torch": lambda: model.synthesize(mel), "torch, harmonic, given F0": lambda: harmonic.synthesize(mel, f0),
               "torch, harmonic, own F0": lambda: harmonic.synthesize(mel)}
    if args.onnx:
        from polyvox.runtime.onnx import OnnxVocoder, export_vocoder

        folder = Path(tempfile.mkdtemp(prefix="vocoder-onnx-"))
        export_vocoder(model, folder / "vocoder.onnx")
        onnx = OnnxVocoder(folder / "vocoder.onnx", threads=args.threads)
        runners["onnxruntime"] = lambda: onnx.synthesize(mel[0].numpy())
        (folder / "harmonic").mkdir()
        export_vocoder(harmonic, folder / "harmonic" / "vocoder.onnx")
        onnx_harmonic = OnnxVocoder(folder / "harmonic" / "vocoder.onnx", threads=args.threads)
        runners["onnxruntime, harmonic, given F0"] = lambda: onnx_harmonic.synthesize(mel[0].numpy(), f0[0].numpy())
        runners["onnxruntime, harmonic, own F0"] = lambda: onnx_harmonic.synthesize(mel[0].numpy())
    inference: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run()
    for _ in range(args.rounds):
        for name, run in runners.items():
            began = time.perf_counter()
            run()
            inference[name].append((time.perf_counter() - began) / seconds)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)",
        "batch": f"{params.vocoder.batch_size} x {params.vocoder.segment_frames} frames",
        "training": training,
        "rtf_one_thread" if args.threads == 1 else f"rtf_{args.threads}_threads":
            {name: statistics.median(t) for name, t in inference.items()},
    }
    out = REPO / "benchmarks" / "results" / "vocoder_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
