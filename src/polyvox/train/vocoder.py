"""Train the Vocos vocoder (:mod:`polyvox.models.neural_vocoder`) on the corpus's own mels and clean audio.

Data: the ``features`` index (mels, kept in memory) joined by ``id`` with the ``clean`` manifest
(16-bit WAVs, read a segment at a time). Step ``s`` trains on random segments drawn from
(seed, s), so a resumed run sees the segments the uninterrupted one would have seen.

Loss: multi-resolution STFT (spectral convergence + log-magnitude L1 at three resolutions) plus
L1 between the log-mels of the output and of the real audio. Alone, these render the right spectral
envelope but a buzzy, over-smoothed fine structure. With ``vocoder.discriminators`` (HiFi-GAN's
multi-period and/or UnivNet's multi-resolution discriminators, :mod:`polyvox.models.discriminators`),
after ``warmup_steps`` on the spectral losses alone the generator also minimises a hinge
adversarial loss and feature matching, and the discriminators train in alternation with it (their
own AdamW and cosine). Once they join, ``best.pt`` is chosen among adversarial steps only: the
adversarial losses trade a little mel L1 for natural fine structure, and a warm-up checkpoint would
otherwise always win. ``vocoder.init_from`` fine-tunes a trained vocoder (and its discriminators).

With ``vocoder.source: harmonic`` the vocoder renders each segment from its tracked F0 (the
features stage's pyin contour, :mod:`polyvox.signal.excitation`), the pulse train's starting phase
and the noise drawn from (seed, step); its pitch tracker learns that F0 from the mel beside it (L1 in
octaves on voiced frames, binary cross-entropy on voicing), on its own weights. A harmonic vocoder
can start from a source-less one (``init_from``): backbone and gains carry over, the F0 inputs and
phase offsets start at zero, the tracker fresh.

CUDA when present (with mixed precision), CPU otherwise. Bounded by ``max_steps`` (``auto``: as
many as ``max_minutes`` allow, :class:`polyvox.train.budget.StepPlan`) and ``max_minutes``; ``last.pt`` holds model, optimiser, scheduler, grad-scaler and RNG states and the
step, and the discriminators' weights, optimiser, scheduler and scaler (exact resume); ``best.pt``
the lowest validation mel L1. Checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch import nn

from polyvox.config import AudioSection, ConfigError, Params, StepBounds, VocoderSection
from polyvox.fileio import load_arrays
from polyvox.signal.mel import MEL_FLOOR, mel_transform
from polyvox.models.discriminators import (Discriminators, discriminator_loss, feature_matching_loss,
                                           generator_loss)
from polyvox.models.meta import VocoderMeta, vocoder_checkpoint
from polyvox.models.neural_vocoder import VocoderConfig, Vocos
from polyvox.fingerprint import file_digest, fingerprint
from polyvox.train.budget import StepPlan
from polyvox.train.loop import Session, drive, finished, held_out, optimise, run_once
from polyvox.train.schedules import planned_cosine
from polyvox.train.data import seeded_rng
from polyvox.workspace import Workspace
from polyvox.stages import STAGES
from polyvox.tracking import tracked

log = logging.getLogger(__name__)

# (n_fft, hop) of the STFT loss, window = n_fft: the resolutions of Parallel WaveGAN's multi-resolution loss,
# scaled to 22.05 kHz; short windows see transients, long ones harmonics.
RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))
VALIDATION_CLIPS = 32  # the first utterances of the val split, whole: a fixed set, comparable across validations
LOSS_NAMES = ("total", "mel", "spectral_convergence", "log_magnitude")
GAN_LOSS_NAMES = ("adversarial", "feature_matching", "discriminator")  # 0 during the warm-up
PITCH_LOSS_NAMES = ("pitch", "voicing")  # the harmonic source's tracker
PITCH_SEED = 7919  # a stream of its own for the excitation, so the segments drawn stay those of a source-less run


@dataclass(frozen=True)
class VocoderResult:
    name: str
    steps: int
    best_val_mel: float | None
    last_checkpoint: str
    best_checkpoint: str | None
    device: str
    seconds: float
    stopped_by: str  # "steps" | "time"
    seconds_per_step: float

    def summary(self) -> str:
        best = f"{self.best_val_mel:.4f}" if self.best_val_mel is not None else "-"
        return (f"{self.name}: {self.steps} steps on {self.device} ({self.seconds_per_step:.3f} s/step, "
                f"stopped by {self.stopped_by}); best val mel L1 {best}")


def vocoder_config(audio: AudioSection, settings: VocoderSection) -> VocoderConfig:
    """The vocoder inverts the analysis STFT of ``features``: same n_fft, hop and window."""
    return VocoderConfig(n_mels=audio.n_mels, n_fft=audio.n_fft, hop_length=audio.hop_length,
                         win_length=audio.win_length, channels=settings.channels, layers=settings.layers,
                         intermediate=settings.intermediate, sample_rate=audio.sample_rate, source=settings.source)


class Clips:
    """One split's utterances: mels in memory (n_mels, frames), audio paths read per segment."""

    def __init__(self, workspace: Workspace, split: str, audio: AudioSection):
        index = pd.read_parquet(workspace.features_index, columns=["id", "split", "features"])
        rows = index[index["split"] == split]
        if rows.empty:
            raise ValueError(f"{workspace.features_index}: no utterances in split {split!r}")
        manifest = pd.read_parquet(workspace.clean_manifest, columns=["id", "audio"])
        duplicated = sorted(set(manifest["id"][manifest["id"].duplicated()]))
        if duplicated:
            raise ValueError(f"{workspace.clean_manifest}: id(s) listed more than once: {duplicated[:5]}")
        paths = dict(zip(manifest["id"], manifest["audio"]))
        self.hop = audio.hop_length
        self.ids: list[str] = []
        self.mels: list[np.ndarray] = []
        self.f0: list[np.ndarray] = []
        self.audio: list[Path] = []
        for row in rows.itertuples():
            if row.id not in paths:
                raise ValueError(f"{workspace.features_index}: id {row.id!r} has no row in {workspace.clean_manifest}")
            path = workspace.clean / paths[row.id]
            rate = sf.info(str(path)).samplerate
            if rate != audio.sample_rate:
                raise ValueError(f"{path}: sample rate {rate}, expected audio.sample_rate {audio.sample_rate}")
            self.ids.append(row.id)
            arrays = load_arrays(workspace.features / row.features)
            self.mels.append(arrays["mel"])
            self.f0.append(arrays["f0"])
            self.audio.append(path)
        self.floor = float(np.log(MEL_FLOOR))

    def __len__(self) -> int:
        return len(self.ids)

    def wave(self, item: int, start_frame: int, frames: int) -> np.ndarray:
        """Samples ``[start_frame * hop, (start_frame + frames) * hop)``, zero past the file's end."""
        return sf.read(str(self.audio[item]), frames=frames * self.hop, start=start_frame * self.hop,
                       dtype="float32", fill_value=0.0)[0]

    def segments(self, step: int, batch_size: int, frames: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch ``step``: mel (batch, n_mels, frames), audio (batch, frames * hop) and F0 (batch, frames),
        a pure function of (seed, step). An utterance is drawn in proportion to its number of start frames
        (so every frame is about equally likely); a shorter one is padded with silence (the mel floor,
        zero samples, unvoiced)."""
        rng = seeded_rng(seed, step)
        starts_per_item = np.array([max(1, m.shape[1] - frames + 1) for m in self.mels], dtype=np.float64)
        items = rng.choice(len(self.mels), size=batch_size, p=starts_per_item / starts_per_item.sum())
        mels, waves, tracks = [], [], []
        for item in items.tolist():
            start = int(rng.integers(starts_per_item[item]))
            mel = self.mels[item][:, start:start + frames]
            mels.append(np.pad(mel, ((0, 0), (0, frames - mel.shape[1])), constant_values=self.floor))
            waves.append(self.wave(item, start, frames))
            track = self.f0[item][start:start + frames]
            tracks.append(np.pad(track, (0, frames - track.shape[0])))
        return torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(waves)), torch.from_numpy(np.stack(tracks))

    def whole(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Utterance ``item``: mel (1, n_mels, frames), audio (1, frames * hop) and F0 (1, frames)."""
        frames = self.mels[item].shape[1]
        return (torch.from_numpy(self.mels[item])[None], torch.from_numpy(self.wave(item, 0, frames))[None],
                torch.from_numpy(self.f0[item][:frames])[None])


class VocoderLoss(nn.Module):
    """Multi-resolution STFT loss + log-mel L1, between (batch, samples) waveforms; float32 throughout."""

    def __init__(self, audio: AudioSection):
        super().__init__()
        self.mel_transform = copy.deepcopy(mel_transform(audio))  # a copy: it moves to the training device
        for n_fft, _ in RESOLUTIONS:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) → (batch, n_mels, frames), as :func:`polyvox.signal.mel.log_mel`."""
        return torch.log(torch.clamp(self.mel_transform(wave.float()), min=MEL_FLOOR))

    def _magnitude(self, wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
        spectrum = torch.stft(wave.float(), n_fft=n_fft, hop_length=hop, window=getattr(self, f"window_{n_fft}"),
                              center=True, return_complex=True)
        # sqrt with a floor rather than abs(): abs() has no usable gradient at an exactly silent bin.
        return torch.sqrt(torch.clamp(spectrum.real**2 + spectrum.imag**2, min=1e-7))

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        convergence, log_magnitude = [], []
        for n_fft, hop in RESOLUTIONS:
            p, t = self._magnitude(predicted, n_fft, hop), self._magnitude(target, n_fft, hop)
            convergence.append(torch.linalg.norm(t - p) / torch.linalg.norm(t))
            log_magnitude.append(torch.mean(torch.abs(torch.log(t) - torch.log(p))))
        losses = {
            "mel": torch.mean(torch.abs(self.log_mel(predicted) - self.log_mel(target))),
            "spectral_convergence": torch.stack(convergence).mean(),
            "log_magnitude": torch.stack(log_magnitude).mean(),
        }
        losses["total"] = losses["mel"] + losses["spectral_convergence"] + losses["log_magnitude"]
        return losses


@torch.no_grad()
def validation_mel_l1(model: Vocos, clips: Clips, loss: VocoderLoss, device: torch.device) -> float:
    """Mean log-mel L1 over the first :data:`VALIDATION_CLIPS` utterances, each rendered whole."""
    model.eval()
    total, frames = 0.0, 0
    for item in range(min(len(clips), VALIDATION_CLIPS)):
        mel, wave, track = clips.whole(item)
        predicted = model(mel.to(device), model.excitation(track, seed=item) if model.harmonic else None)
        error = torch.abs(loss.log_mel(predicted) - loss.log_mel(wave.to(device)))
        total += float(error.sum())
        frames += error.shape[-1]
    model.train()
    return total / (frames * model.cfg.n_mels)




def vocoder_fingerprints(params: Params, workspace: Workspace,
                         cfg: VocoderSection | None = None) -> tuple[str, str]:
    """(what the vocoder learns from, how long it trains); ``cfg`` defaults to params.yaml's ``vocoder``.
    A fine-tune's identity holds its starting weights by content: a retrained source retrains it."""
    cfg = params.vocoder if cfg is None else cfg
    settings = cfg.model_dump()
    stage = STAGES["train-vocoder"]
    init = init_checkpoint(workspace, cfg)
    shaping = stage.settings(params) | {"vocoder": {k: v for k, v in settings.items() if k not in StepBounds.BOUNDS},
                                        "init_sha256": None if init is None else file_digest(init)}
    identity = fingerprint(workspace.data_version(), stage.identity(params, shaping))
    return identity, fingerprint({k: v for k, v in settings.items() if k in StepBounds.BOUNDS})


SHIPPED = "shipped"  # vocoder.init_from's name for the universal vocoder inside the package (polyvox.pretrained)


def init_folder(workspace: Workspace, cfg: VocoderSection) -> Path:
    """The folder ``vocoder.init_from`` names: the shipped universal vocoder (checked against its card),
    or a vocoder folder relative to the workspace."""
    if cfg.init_from == SHIPPED:
        from polyvox.pretrained import shipped

        return shipped("vocoder")
    return workspace.resolve(Path(cfg.init_from))


def init_checkpoint(workspace: Workspace, cfg: VocoderSection) -> Path | None:
    """The checkpoint ``vocoder.init_from`` names (:func:`init_folder`), or None."""
    if cfg.init_from is None:
        return None
    folder = init_folder(workspace, cfg)
    try:
        return vocoder_checkpoint(folder)[1]
    except FileNotFoundError as error:
        raise ConfigError(f"vocoder.init_from: {error}") from None


def warm_start(model: Vocos, discriminators: Discriminators | None, workspace: Workspace,
               cfg: VocoderSection) -> None:
    """Load ``vocoder.init_from``'s weights into ``model`` (the architectures must match), and its
    discriminators' into ``discriminators`` when both have the same ones (else they start fresh)."""
    source = init_folder(workspace, cfg)
    source_cfg, checkpoint = vocoder_checkpoint(source)
    gains_only = source_cfg.source == "none" and model.cfg.source == "harmonic"
    if replace(source_cfg, source=model.cfg.source, pitch_channels=model.cfg.pitch_channels) != model.cfg or (
            source_cfg.source != model.cfg.source and not gains_only):
        differ = {k: (v, getattr(model.cfg, k)) for k, v in asdict(source_cfg).items() if getattr(model.cfg, k) != v}
        raise ConfigError(f"vocoder.init_from: {source} is another architecture than the vocoder section "
                          f"asks for (init_from's vs this one's: {differ})")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(harmonic_from_plain(state["model"], model) if gains_only else state["model"])
    taken = False
    if discriminators is not None and "discriminators" in state:
        try:
            discriminators.load_state_dict(state["discriminators"])
            taken = True
        except RuntimeError as error:  # other periods or widths: the discriminators start afresh
            log.info("vocoder.init_from: %s's discriminators do not fit these (%s); they start fresh",
                     source, str(error).splitlines()[0])
    log.info("vocoder: fine-tuning %s (step %s)%s", checkpoint, state.get("step"),
             ", discriminators included" if taken else "")


def harmonic_from_plain(weights: dict[str, torch.Tensor], model: Vocos) -> dict[str, torch.Tensor]:
    """A source-less vocoder's weights as a starting point for the harmonic ``model``: the backbone as
    it was, the F0 inputs of the first convolution at zero, both excitation gains from the old
    log-magnitude (a harmonic peak and the noise floor start where the old magnitude was), zero phase
    offsets (the excitation's own phase), and the pitch tracker as ``model`` initialised it."""
    state = {name: value.clone() for name, value in model.state_dict().items()}
    bins = model.cfg.n_fft // 2 + 1
    for name, value in weights.items():
        if name == "embed.weight":
            state[name].zero_()
            state[name][:, :value.shape[1]] = value
        elif name in ("head.linear.weight", "head.linear.bias"):
            magnitude = value[:bins]
            state[name] = torch.cat([magnitude, torch.zeros_like(magnitude), magnitude])
        else:
            state[name] = value
    return state


FILES = ("last.pt", VocoderMeta.FILE)  # what a finished run leaves (best.pt too, when it validated)


def input_fingerprint(params: Params, workspace: Workspace) -> tuple[str, str]:
    """The stage protocol's fingerprint (:meth:`polyvox.stages.Stage.input_fingerprint`)."""
    return vocoder_fingerprints(params, workspace)


def completed(params: Params, workspace: Workspace, name: str = "vocoder",
              cfg: VocoderSection | None = None, inputs: tuple[str, str] | None = None) -> dict | None:
    """``done.json`` of a finished vocoder run on exactly these inputs and bounds, with its outputs in
    place; None when :func:`train_vocoder` would train."""
    return finished(workspace.models / name, *(inputs or vocoder_fingerprints(params, workspace, cfg)), FILES)


@tracked("train-vocoder", lambda ws: ws.features_index)
def train_vocoder(params: Params, workspace: Workspace, name: str = "vocoder",
                  cfg: VocoderSection | None = None, resume: bool = True) -> VocoderResult:
    """Train a vocoder on the corpus into ``models/<name>/`` (``vocoder.json``, ``last.pt``, ``best.pt``,
    ``metrics.csv``); load it with :func:`polyvox.models.meta.load_vocoder`. ``cfg`` defaults
    to params.yaml's ``vocoder`` section.

    Like the acoustic trainer (:func:`polyvox.train.loop.run_once`): a rerun on the same inputs is a
    no-op, a change of bounds only resumes, any other change (data, settings, code) trains afresh."""
    cfg = params.vocoder if cfg is None else cfg
    return run_once(workspace.models / name, *vocoder_fingerprints(params, workspace, cfg), FILES, resume,
                    name if "vocoder" in name else f"vocoder {name}", lambda resume: _fit(params, workspace, name, cfg, resume), VocoderResult)


def _fit(params: Params, workspace: Workspace, name: str, cfg: VocoderSection, resume: bool) -> VocoderResult:
    seed = params.seed
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)

    train_clips, val_clips = held_out(workspace, lambda split: Clips(workspace, split, params.audio))
    model = Vocos(vocoder_config(params.audio, cfg)).to(device)
    loss_fn = VocoderLoss(params.audio).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.9), weight_decay=0.01)
    label = name if "vocoder" in name else f"vocoder {name}"
    out = workspace.models / name
    plan = StepPlan(cfg, f"train {label}", "vocoder")
    if resume and (out / "last.pt").is_file():
        plan.resume(out / "last.pt")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, planned_cosine(cfg.max_steps, lambda: plan.steps))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gan = Adversary(cfg, device, amp, lambda: plan.steps) if cfg.discriminators else None
    if cfg.init_from is not None:
        init_checkpoint(workspace, cfg)  # a clear error before anything is written
    session = Session(out, model, optimiser, scheduler, scaler, device=device, amp=amp, best_key="best_val_mel",
                      losses=LOSS_NAMES + (GAN_LOSS_NAMES if gan else ()) + (PITCH_LOSS_NAMES if model.harmonic else ()),
                      val_name="val_mel", bounds=cfg, resume=resume,
                      companions=gan.companions() if gan else None, extra=lambda: plan.state(session.elapsed()),
                      label=label)
    start = session.start
    if not start and cfg.init_from is not None:
        warm_start(model, gan.discriminators if gan else None, workspace, cfg)
    VocoderMeta(name=name, seed=seed, model=model.cfg, audio=params.audio, train=cfg.model_dump()).write(out)

    def run_step(step: int, validate: bool) -> int:
        if gan and step == cfg.warmup_steps and step > 0:
            session.best = None  # best.pt from here on is an adversarial step's (the module docstring says why)
        mel, wave, track = (t.to(device) for t in train_clips.segments(step, cfg.batch_size, cfg.segment_frames, seed))
        source = harmonic_source(model, track, seed, step) if model.harmonic else None
        with torch.autocast(device.type, enabled=amp):
            predicted = model(mel, source)
        losses = loss_fn(predicted, wave)
        if model.harmonic:
            losses.update(pitch_losses(model, mel, track))
            losses["total"] = losses["total"] + losses["pitch"] + losses["voicing"]
        if gan:
            losses.update(gan.step(predicted, wave, adversarial=step >= cfg.warmup_steps))
            losses["total"] = (losses["total"] + cfg.adversarial_weight * losses["adversarial"]
                               + cfg.feature_weight * losses["feature_matching"])
        optimise(losses["total"], model, optimiser, scheduler, scaler, cfg.grad_clip)
        done, last = step + 1, step + 1 == plan.steps
        val = None
        if validate or session.validation_due(done, last):
            val = plan.validation(lambda: validation_mel_l1(model, val_clips, loss_fn, device))
            session.keep_if_best(val, done)
            log.info("%s step %d: train loss %.4f (mel %.4f), val mel L1 %.4f, %.3f s/step", label, done,
                     float(losses["total"].detach()), float(losses["mel"].detach()), val,
                     session.elapsed() / (done - start))
        session.record(done, losses, val, last)
        return done

    step, stopped_by = drive(plan, session, run_step, f"train {label}")
    seconds = session.elapsed()
    result = VocoderResult(
        name=name, steps=step, best_val_mel=session.best, last_checkpoint=str(out / "last.pt"),
        best_checkpoint=str(out / "best.pt") if (out / "best.pt").is_file() else None, device=str(device),
        seconds=seconds, stopped_by=stopped_by, seconds_per_step=seconds / max(1, step - start),
    )
    log.info("train vocoder: %s", result.summary())
    return result


def harmonic_source(model: Vocos, track: torch.Tensor, seed: int, step: int):
    """Batch ``step``'s excitation: each segment's tracked F0, a pulse-train phase and noise drawn from (seed, step)."""
    rng = seeded_rng(seed, PITCH_SEED, step)
    return model.excitation(track, rng=rng, phase=rng.uniform(-np.pi, np.pi, size=track.shape[0]))


def pitch_losses(model: Vocos, mel: torch.Tensor, track: torch.Tensor) -> dict[str, torch.Tensor]:
    """The pitch tracker's losses against the tracked F0: L1 in octaves over voiced frames, and the
    voicing decision's binary cross-entropy over all frames."""
    from polyvox.signal.excitation import PITCH_CENTRE_HZ

    octaves, voicing = model.pitch(mel.float())
    voiced = track > 0
    target = torch.log2(torch.clamp(track, min=1.0) / PITCH_CENTRE_HZ)
    pitch = (torch.abs(octaves - target) * voiced).sum() / voiced.sum().clamp(min=1)
    return {"pitch": pitch, "voicing": nn.functional.binary_cross_entropy_with_logits(voicing, voiced.float())}


class Adversary:
    """The discriminators of an adversarial run, their optimiser, schedule and loss scaler, and one
    alternating step: the discriminators learn on real against (detached) generated audio, then
    judge the generated audio again for the generator's adversarial and feature-matching losses."""

    def __init__(self, cfg: VocoderSection, device: torch.device, amp: bool,
                 total_steps: Callable[[], int | None] = lambda: None):
        self.cfg = cfg
        self.discriminators = Discriminators(cfg.discriminators, cfg.periods, cfg.discriminator_channels).to(device)
        # HiFi-GAN's betas for its discriminators; the cosine runs over the adversarial steps only
        # (``total_steps``: the run's plan, with max_steps: auto).
        self.optimiser = torch.optim.AdamW(self.discriminators.parameters(), lr=cfg.discriminator_lr,
                                           betas=(0.8, 0.99), weight_decay=0.01)
        adversarial = cfg.max_steps - cfg.warmup_steps if isinstance(cfg.max_steps, int) else "auto"
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, planned_cosine(
            max(1, adversarial) if adversarial != "auto" else adversarial,
            lambda: None if total_steps() is None else max(1, total_steps() - cfg.warmup_steps)))
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def companions(self) -> dict:
        return {"discriminators": self.discriminators, "discriminator_optimizer": self.optimiser,
                "discriminator_scheduler": self.scheduler, "discriminator_scaler": self.scaler}

    def step(self, predicted: torch.Tensor, wave: torch.Tensor, adversarial: bool) -> dict[str, torch.Tensor]:
        """One discriminator update and the generator's adversarial losses; zeros in the warm-up."""
        if not adversarial:
            zero = torch.zeros((), device=wave.device)
            return {"adversarial": zero, "feature_matching": zero, "discriminator": zero}
        judged = self.discriminators(torch.cat([wave, predicted.detach().float()]))
        real, fake = _split(judged, wave.shape[0])
        d_loss = discriminator_loss(real, fake)
        optimise(d_loss, self.discriminators, self.optimiser, self.scheduler, self.scaler, self.cfg.grad_clip)
        with torch.no_grad():
            real = self.discriminators(wave)
        weights = list(self.discriminators.parameters())
        for weight in weights:  # the generator's backward needs no gradient of the discriminators' weights
            weight.requires_grad_(False)
        try:
            fake = self.discriminators(predicted.float())
        finally:
            for weight in weights:
                weight.requires_grad_(True)
        return {"adversarial": generator_loss(fake), "feature_matching": feature_matching_loss(real, fake),
                "discriminator": d_loss.detach()}


def _split(judged, batch: int):
    """Judgements of ``cat([real, fake])`` → (real's, fake's)."""
    real = [(logits[:batch], [f[:batch] for f in features]) for logits, features in judged]
    fake = [(logits[batch:], [f[batch:] for f in features]) for logits, features in judged]
    return real, fake


def ship_vocoder(params: Params, workspace: Workspace, name: str, result: VocoderResult, command: str, commit: str,
                 root: Path | None = None, figures: dict | None = None) -> Path:
    """Write the vocoder ``models/<name>`` into the package as the shipped universal vocoder
    (``vocoder.init_from: shipped``) with its card: ``vocoder.json`` and best.pt's weights (fp32:
    the vocoder is small, and a waveform has no duration rounding to hide a difference behind)."""
    import tempfile

    import pandas as pd

    from polyvox import pretrained

    folder = workspace.models / name
    cfg, checkpoint = vocoder_checkpoint(folder)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    index = pd.read_parquet(workspace.features_index)
    with tempfile.TemporaryDirectory(prefix="polyvox-ship-") as scratch:
        weights = Path(scratch) / "best.pt"
        torch.save({"model": state["model"], "step": state["step"], "best_val_mel": state.get("best_val_mel")}, weights)
        record = pretrained.card_record(
            about="The universal neural vocoder (log-mel" + (" and an F0 contour, through a harmonic-plus-noise "
                  "source," if cfg.source == "harmonic" else "") + " to waveform) that `polyvox train-vocoder` "
                  "fine-tunes per voice (vocoder.init_from: shipped), trained on the base corpus below.",
            command=command, commit=commit,
            params={"audio": params.audio.model_dump(), "vocoder": params.vocoder.model_dump()}, index=index,
            audio=params.audio, result=result, data={"speakers": ", ".join(sorted(index["speaker"].unique()))},
            training={"best_val_mel": result.best_val_mel}, figures={"weights": "fp32", **(figures or {})})
        return pretrained.ship("vocoder", {VocoderMeta.FILE: folder / VocoderMeta.FILE, "best.pt": weights}, record, root)
