"""Untrained tiny voices for tests that need a voice's plumbing, not its quality (registry, serving)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from polyvox.config import load_params
from polyvox.runtime.voice import Voice
from polyvox.models.acoustic import AcousticModel, ModelConfig
from polyvox.models.symbols import Vocabulary

from conftest import REPO

SPEAKERS = ("alice", "bob")


def make_member(folder: Path, seed: int = 0, channels: int = 16, conditioning: str = "audio+image",
                phone_positions: bool = False, teacher_voice: str | None = None) -> Path:
    """A member folder (model.json, best.pt, speakers.pt) with random weights and a graphemes front-end;
    ``teacher_voice``: one that reads a teacher's rendering (its projection random, not zero)."""
    params = load_params(REPO / "params.yaml")
    symbols = Vocabulary([*string.ascii_lowercase, "|", ",", ".", "?", "!", "'", "-"]).symbols
    cfg = ModelConfig(vocab_size=len(symbols), n_mels=params.audio.n_mels, channels=channels, text_layers=1,
                      decoder_layers=1, heads=2, kernel_size=3, variance_kernel_size=3, postnet_layers=2, dropout=0.0,
                      modality_dropout=0.0, contrastive_temperature=0.1, alignment_prior=0.0, phone_positions=phone_positions,
                      teacher_input=teacher_voice is not None)
    torch.manual_seed(seed)
    model = AcousticModel(cfg, torch.full((cfg.n_mels,), -5.0), torch.full((cfg.n_mels,), 2.0))
    with torch.no_grad():  # log(1 + 4): about 4 frames per token, so utterances have a sane length
        model.variance.duration.out.weight.zero_()
        model.variance.duration.out.bias.fill_(1.6)
        if model.teacher is not None:  # so that the teacher's frames change the output
            model.teacher.weight.normal_(0, 0.1)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / "best.pt")
    torch.save({name: torch.randn(channels) for name in SPEAKERS}, folder / "speakers.pt")
    meta = {"member": folder.name, "seed": seed, "conditioning": conditioning, "model": cfg.model_dump(), "init_from": None,
            "symbols": symbols, "speakers": list(SPEAKERS), "audio": params.audio.model_dump(),
            "image_size": params.features.image_size, "text": {"language": "en-us", "phonemizer": "graphemes"}, "teacher": None}
    if teacher_voice is not None:
        from polyvox.frontends.teacher import TeacherSettings

        meta["teacher"] = TeacherSettings(teacher_voice, params.audio, params.clean.trim_top_db,
                                          params.clean.loudness_lufs).to_dict()
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def make_vocoder(folder: Path, seed: int = 0, source: str = "none") -> Path:
    """A vocoder folder (vocoder.json, best.pt) of a tiny Vocos with random weights, params.yaml's audio."""
    from dataclasses import asdict

    from polyvox.models.neural_vocoder import Vocos
    from polyvox.train.vocoder import vocoder_config

    params = load_params(REPO / "params.yaml")
    torch.manual_seed(seed)
    model = Vocos(vocoder_config(params.audio, params.vocoder.model_copy(
        update=dict(channels=16, layers=1, intermediate=32, source=source))))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / "best.pt")
    (folder / "vocoder.json").write_text(json.dumps({"name": folder.name, "model": asdict(model.cfg)}), encoding="utf-8")
    return folder


def make_voice(folder: Path, seed: int = 0) -> Voice:
    """A one-member voice saved at ``folder`` (the layout of models/candidate)."""
    member = make_member(folder.parent / f".member-{folder.name}-{seed}", seed)
    voice = Voice.from_members({f"m{seed}": member})
    voice.save(folder)
    return Voice.load(folder)


def make_bundle(folder: Path, seed: int = 0, version: str = "1", onnx: bool = False) -> Path:
    """A serving bundle (as promote writes to models/champion) of an untrained voice, stamped ``version``."""
    import shutil
    import tempfile

    from polyvox.runtime.bundle import build_bundle

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".bundle-"))
    voice = make_voice(staging / "voice", seed)
    metrics = {"utterances": 1, "speakers": list(SPEAKERS), "data_version": "test", "difference": {},
               "systems": {"candidate": {"wer": 0.5, "speaker_similarity": 0.8}, "real": {"wer": 0.1}},
               "candidate_voice": voice.describe()}
    built = build_bundle(staging / "voice", metrics, {"promoted": True, "rules": []}, "test", "none", "polyvox",
                         staging / "bundle", export_onnx=onnx)
    meta = json.loads((built / "bundle.json").read_text())
    (built / "bundle.json").write_text(json.dumps({**meta, "version": version}))
    if folder.exists():
        shutil.rmtree(folder)
    built.rename(folder)
    shutil.rmtree(staging)
    return folder
