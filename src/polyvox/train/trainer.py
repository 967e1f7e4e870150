"""The joint trainer: one optimiser over every encoder, the variance adaptor and the decoder.

CUDA when present (with fp16 mixed precision), CPU otherwise (bf16 autocast where the CPU has native
bf16, ``train.precision``); ``torchrun`` runs it data-parallel (DDP, NCCL on GPUs, gloo on CPU).
Bounded by ``train.max_steps`` and ``train.max_minutes``; with ``max_steps: auto`` the step count
is planned from a timed start so that the run spends its minutes (:class:`polyvox.train.budget.StepPlan`).
Checkpoints hold model, optimiser, scheduler, grad-scaler and RNG states and the step, so a
resumed run continues exactly where the uninterrupted one would be; ``best.pt`` (lowest
validation loss) and ``last.pt`` are kept apart. Checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from polyvox.config import ConfigError, MemberSection, Params, StepBounds
from polyvox.fileio import chosen_checkpoint
from polyvox.fingerprint import file_digest, fingerprint
from polyvox.stages import STAGES
from polyvox.frontends.teacher import TeacherSettings
from polyvox.models.acoustic import AcousticModel, ModelConfig
from polyvox.models.meta import MemberMeta, TextFrontEnd
from polyvox.train.budget import StepPlan
from polyvox.train.loop import Session, drive, finished, held_out, optimise, run_once, save_checkpoint
from polyvox.train.schedules import lr_factor
from polyvox.train.recipe import MemberRecipe, speaker_embeddings, validation_loss
from polyvox.tracking import stage_run
from polyvox.train.data import Corpus, batch_to, checkpoint_dir, mel_statistics, vocabulary_and_speakers
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

BASE = "base"  # train.init_from's name for models/base, the output of `polyvox pretrain`
LOSS_NAMES = ("total", "mel", "prior", "duration", "pitch", "energy", "cross_modal")


@dataclass(frozen=True)
class TrainResult:
    member: str
    steps: int
    best_val_loss: float | None
    last_checkpoint: str
    best_checkpoint: str | None
    device: str
    world_size: int
    seconds: float
    stopped_by: str  # "steps" | "time"
    seconds_per_step: float
    planned_steps: int | None = None  # the step count the schedule ran over (max_steps, or planned for "auto")
    precision: str = "fp32"

    def summary(self) -> str:
        best = f"{self.best_val_loss:.4f}" if self.best_val_loss is not None else "-"
        return (f"{self.member}: {self.steps} steps on {self.device} x{self.world_size} "
                f"({self.seconds_per_step:.3f} s/step, stopped by {self.stopped_by}); best val loss {best}")


def model_config(params: Params, vocab_size: int, member: MemberSection | None = None) -> ModelConfig:
    section = params.member_model(member) if member is not None else params.model
    return ModelConfig(vocab_size=vocab_size, n_mels=params.audio.n_mels, **section.model_dump(),
                       teacher_input=params.features.teacher_voice is not None)


def member_init(spec: MemberSection, init_from: str | Path | None) -> str | Path | None:
    """The warm start of a member: ``base`` (the pretrained text→mel base) means nothing to a converter,
    which learns no language and then starts from scratch; any other source it takes (another
    converter's folder). The one rule of who needs a base (pretrain's ``needs_base`` asks it too)."""
    return None if spec.kind == "convert" and str(init_from) == BASE else init_from


def member_spec(params: Params, name: str) -> MemberSection:
    """The member listed under ``train.members``, or an ad-hoc one (params seed, all conditioning, no variant)."""
    listed = {m.name: m for m in params.train.members}
    return listed.get(name) or MemberSection(name=name, seed=params.seed, conditioning="audio+image", variant={})


def _init_path(workspace: Workspace, init: str | Path) -> Path:
    """``base`` is this workspace's ``models/base``; any other value a path relative to the workspace."""
    return workspace.models / BASE if str(init) == BASE else workspace.resolve(Path(init))


def _checkpoint_of(source: Path) -> Path | None:
    folder = source if source.is_dir() else source.parent
    checkpoint = source if source.is_file() else chosen_checkpoint(folder)
    return checkpoint if checkpoint is not None and (folder / MemberMeta.FILE).is_file() else None


def init_source(workspace: Workspace, init: str | Path | None) -> Path | None:
    """The folder (or ``.pt``) a fresh run warm-starts from (:func:`_init_path`); None: from scratch."""
    if init is None:
        return None
    source = _init_path(workspace, init)
    if str(init) == BASE and _checkpoint_of(source) is None:
        raise ConfigError(f"train.init_from: base, but {source} holds no trained base model; "
                          "run `polyvox pretrain` first (or set pretrain.source to a base built elsewhere)")
    return source


def init_identity(workspace: Workspace, init: str | Path | None) -> str | None:
    """What a warm start starts from, by content: a retrained or replaced base retrains its fine-tunes.
    A source not built yet has no identity but its name (the run itself then says what is missing)."""
    if init is None:
        return None
    checkpoint = _checkpoint_of(_init_path(workspace, init))
    return f"absent:{init}" if checkpoint is None else file_digest(checkpoint)


def warm_start(model: AcousticModel, symbols: list[str], source: Path) -> dict[str, int]:
    """Seed ``model`` with the weights of an earlier run (a member folder or a ``.pt`` in one).

    Tensors of equal name and shape are copied, except the mel normalisation statistics, which stay
    the new corpus's (the decoder adapts to the shift within a few steps, and validation losses
    stay comparable with a run from scratch); phoneme embeddings are copied row by row for the
    symbols both vocabularies share. Returns counts of copied / skipped tensors and shared symbols."""
    checkpoint = _checkpoint_of(source)
    if checkpoint is None:
        raise ConfigError(f"train.init_from: {source} holds no model.json with best.pt or last.pt")
    folder = checkpoint.parent
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    old_symbols = MemberMeta.read(folder).symbols
    own = model.state_dict()
    copied, skipped, shared = 0, 0, 0
    with torch.no_grad():
        for name, tensor in state.items():
            if name == "text.embedding.weight":
                old_index = {symbol: i for i, symbol in enumerate(old_symbols)}
                rows = [(i, old_index[sym]) for i, sym in enumerate(symbols) if sym in old_index]
                for new_row, old_row in rows:
                    own[name][new_row] = tensor[old_row]
                copied += 1
                shared = len(rows)
            elif name in ("mel_mean", "mel_std"):
                continue  # the new corpus's mel statistics stay: its losses are comparable with a fresh run's
            elif name in own and own[name].shape == tensor.shape:
                own[name].copy_(tensor)
                copied += 1
            else:
                skipped += 1
    if skipped > copied:  # not a warm start but a scratch run in disguise: say so
        raise ConfigError(f"train.init_from: {checkpoint} fits this model in only {copied} of {copied + skipped} "
                          "tensors; its `model` section differs from this one (see its model.json)")
    model.load_state_dict(own)
    counts = {"copied": copied, "skipped": skipped, "shared_symbols": shared, "symbols": len(symbols)}
    log.info("warm start from %s: %d tensors copied, %d skipped; %d of %d phoneme symbols shared", checkpoint,
             copied, skipped, shared, len(symbols))
    return counts


def data_version(workspace: Workspace) -> str:
    """A short hash of the features index: which utterances, splits and feature files were trained on."""
    return workspace.data_version()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step: fp16 on CUDA; on CPU bf16 when asked for, or with
    ``auto`` where the CPU computes bf16 natively (AVX512-BF16 or AMX: a default-model step ~1.27x
    faster at equal loss, benchmarks/README.md); None = fp32."""
    if device.type == "cuda":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return None


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def training_fingerprint(params: Params, workspace: Workspace, member: str, seed: int | None,
                         init_from: str | Path | None) -> tuple[str, str]:
    """(what the run learns from — the data, the settings that shape the model but not the other
    members', the warm start, the code —, how long it runs)."""
    spec = member_spec(params, member)
    init = member_init(spec, init_from if init_from is not None else params.train.init_from)
    stage = STAGES["train"]  # the base too: pretrain's settings reach here as base_params' train section
    settings = stage.settings(params) | {"train": params.train.model_dump(exclude={"members", *StepBounds.BOUNDS})}
    identity = fingerprint(workspace.data_version(), stage.identity(params, settings), spec.model_dump(), seed,
                           init_identity(workspace, init))
    return identity, fingerprint(params.train.model_dump(include=set(StepBounds.BOUNDS)))


FILES = ("last.pt", MemberMeta.FILE, "speakers.pt")  # what a finished run leaves (best.pt too, when it validated)


def input_fingerprint(params: Params, workspace: Workspace, member: str = "default") -> tuple[str, str]:
    """The stage protocol's fingerprint (:meth:`polyvox.stages.Stage.input_fingerprint`): the member's,
    with its listed seed and the configured warm start."""
    return training_fingerprint(params, workspace, member, None, None)


def completed(params: Params, workspace: Workspace, member: str = "default", seed: int | None = None,
              init_from: str | Path | None = None, inputs: tuple[str, str] | None = None) -> dict | None:
    """``done.json`` of a finished run on exactly these inputs and bounds, with its outputs in place;
    None when :func:`train` would train. ``inputs``: :func:`training_fingerprint`'s, when known."""
    inputs = inputs or training_fingerprint(params, workspace, member, seed, init_from)
    return finished(checkpoint_dir(workspace, member), *inputs, FILES)


def train(params: Params, workspace: Workspace, member: str = "default", seed: int | None = None,
          resume: bool = True, init_from: str | Path | None = None) -> TrainResult:
    """Train one ensemble member into ``models/<member>/``, a no-op when it is trained already
    (:func:`polyvox.train.loop.run_once`: a change of bounds only resumes, of anything else trains afresh)."""
    identity, bounds = training_fingerprint(params, workspace, member, seed, init_from)
    return run_once(checkpoint_dir(workspace, member), identity, bounds, FILES, resume,
                    f"train {member} (data {workspace.data_version()})",
                    lambda resume: fit(params, workspace, member, seed, resume, init_from)[0], TrainResult,
                    stamp=_distributed()[0] == 0)


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}  # autocast dtype → train.precision


def _corpora(params: Params, workspace: Workspace, spec: MemberSection):
    """(vocabulary, speakers, teacher settings, (train corpus, validation corpus)) of a member."""
    vocab, speakers = vocabulary_and_speakers(workspace)
    teachers = TeacherSettings.from_params(params)
    corpora = held_out(workspace, lambda split: Corpus(workspace, split, vocab, speakers,
                                                       images=spec.conditioning == "audio+image",
                                                       teachers=teachers is not None))
    return vocab, speakers, teachers, corpora


def _meta(params: Params, workspace: Workspace, member: str, spec: MemberSection, seed: int, model: AcousticModel,
          init_from, symbols: list[str], speakers: list[str], teachers: TeacherSettings | None) -> MemberMeta:
    """model.json of a member: what it is and what it needs at synthesis."""
    return MemberMeta(member=member, seed=seed, conditioning=spec.conditioning, model=model.cfg,
                      init_from=None if init_from is None else str(init_from),
                      init_sha256=init_identity(workspace, init_from), symbols=symbols, speakers=speakers,
                      audio=params.audio, image_size=params.features.image_size,
                      text=TextFrontEnd(language=params.clean.language, phonemizer=params.clean.phonemizer),
                      teacher=teachers.to_dict() if teachers is not None else None)


def _report(tracker, member: str, names: tuple[str, ...], done: int, losses: dict[str, torch.Tensor], val: float | None,
            lr: float, pace: float) -> None:
    """A step's losses to MLflow (``tracker``: rank 0's, else None); a validation's also to the log."""
    if tracker is None:
        return
    tracker.metrics({f"train_{n}": float(losses[n].detach()) for n in names} | {"lr": lr}
                    | ({} if val is None else {"val_loss": val}), done)
    if val is not None:
        tracker.flush()
        log.info("%s step %d: train loss %.4f (mel %.4f), val loss %.4f, %.2f s/step", member, done,
                 float(losses["total"].detach()), float(losses["mel"].detach()), val, pace)


def _acoustic_recipe(params: Params, workspace: Workspace, member: str, spec: MemberSection, seed: int, init_from,
                     warm: bool, speakers: list[str]) -> MemberRecipe:
    """The text→mel model's part of a training run (after ``torch.manual_seed(seed)``)."""
    cfg = params.train
    vocab, _, teachers, (train_corpus, val_corpus) = _corpora(params, workspace, spec)
    model = AcousticModel(model_config(params, len(vocab), spec), *mel_statistics(workspace))
    started = warm_start(model, vocab.symbols, init_source(workspace, init_from)) if warm and init_from is not None else None
    meta = _meta(params, workspace, member, spec, seed, model, init_from, vocab.symbols, speakers, teachers)
    return MemberRecipe(
        model=model, train_corpus=train_corpus, batch_size=cfg.batch_size, lr=cfg.lr, loss_names=LOSS_NAMES, meta=meta,
        warm=started, batch=lambda indices, step: train_corpus.collate(indices, seed, step),
        validation_loss=lambda m, device: validation_loss(m, val_corpus, cfg.batch_size, device, seed),
        speaker_embeddings=lambda m, device: speaker_embeddings(m, train_corpus, cfg.batch_size, device, seed, speakers))


def _recipe(params: Params, workspace: Workspace, member: str, spec: MemberSection, seed: int, init_from,
            warm: bool) -> MemberRecipe:
    _, speakers = vocabulary_and_speakers(workspace)
    if spec.kind == "convert":
        from polyvox.train.converter import converter_recipe

        return converter_recipe(params, workspace, member, spec, seed, init_from, warm, speakers)
    return _acoustic_recipe(params, workspace, member, spec, seed, init_from, warm, speakers)


def fit(params: Params, workspace: Workspace, member: str = "default", seed: int | None = None,
        resume: bool = True, init_from: str | Path | None = None) -> tuple[TrainResult, torch.nn.Module]:
    """:func:`train`, also returning the trained model (on its device).

    ``member``: a name under ``train.members`` (its seed, conditioning, kind and variant apply) or any
    other name (params seed, all conditioning, the plain ``model`` section). ``seed`` overrides the
    member's. ``init_from`` (default ``train.init_from``) warm-starts a fresh run; a resumed run ignores it."""
    cfg = params.train
    spec = member_spec(params, member)
    seed = spec.seed if seed is None else seed
    init_from = member_init(spec, cfg.init_from if init_from is None else init_from)
    rank, world = _distributed()
    device = _device(rank)
    torch.manual_seed(seed)

    out = checkpoint_dir(workspace, member)
    resuming = resume and (out / "last.pt").is_file()
    recipe = _recipe(params, workspace, member, spec, seed, init_from, warm=not resuming)
    model = recipe.model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.0)
    plan = StepPlan(cfg, f"train {member}", "train", world)
    if resuming:
        plan.resume(out / "last.pt")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor(cfg, lambda: plan.steps))
    amp = device.type == "cuda"
    cast = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    # Not every batch uses every encoder (no image in it, or every modality present), hence unused-parameter detection.
    wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    session = Session(out, model, optimiser, scheduler, scaler, device=device, amp=amp, best_key="best_val_loss",
                      losses=recipe.loss_names, val_name="val_loss", bounds=cfg, resume=resuming, write=rank == 0,
                      extra=lambda: plan.state(session.elapsed()), label=member)
    start = session.start
    if rank == 0:
        recipe.meta.write(out)
    tracker = stage_run("pretrain" if member == BASE else "train", params, workspace,
                        {"member": member, "kind": spec.kind, "data_version": data_version(workspace),
                         "resumed_from_step": str(start), "warm_start": str(init_from) if recipe.warm else ""},
                        name=f"train-{member}") if rank == 0 else None

    def run_step(step: int, validate: bool) -> int:
        indices = recipe.train_corpus.batch_indices(step, recipe.batch_size * world, seed)[rank::world]
        batch = batch_to(recipe.batch(indices, step), device)
        with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
            losses = wrapped(batch)
        optimise(losses["total"], model, optimiser, scheduler, scaler, cfg.grad_clip)
        done = step + 1
        last = done == plan.steps
        val = None
        if validate or session.validation_due(done, last):
            val = plan.validation(lambda: recipe.validation_loss(model, device))
            session.keep_if_best(val, done)
        session.record(done, losses, val, last)
        _report(tracker if rank == 0 else None, member, recipe.loss_names, done, losses, val,
                scheduler.get_last_lr()[0], session.elapsed() / (done - start))
        return done

    status = "FAILED"
    try:
        step, stopped_by = drive(plan, session, run_step, f"train {member}")
        status = "FINISHED"
    finally:
        if tracker:
            if status == "FINISHED":
                tracker.artifacts([out / MemberMeta.FILE, session.metrics_path])
            tracker.end(status)
    seconds = session.elapsed()
    if rank == 0:
        save_checkpoint(out / "speakers.pt", recipe.speaker_embeddings(model, device))
    result = TrainResult(
        member=member, steps=step, best_val_loss=session.best, last_checkpoint=str(out / "last.pt"),
        best_checkpoint=str(out / "best.pt") if (out / "best.pt").is_file() else None, device=str(device),
        world_size=world, seconds=seconds, stopped_by=stopped_by, seconds_per_step=seconds / max(1, step - start),
        planned_steps=plan.steps, precision=PRECISION_NAMES[cast],
    )
    log.info("train: %s", result.summary())
    return result, model
