"""The base model every voice fine-tunes from: ``polyvox pretrain`` → ``models/base``.

The base is the ``model`` section trained on the base corpus — the voices and takes the
``pretrain`` section names (the ``demo`` section's when it names none), rendered by the offline
engines from the project's prompts — with audio and image conditioning, so that every fine-tune
(``train.init_from: base``) keeps both paths. When that corpus is the workspace's own demo corpus the
base trains on its features; otherwise the stage builds the base corpus in ``pretrain/`` (its
own data half, incremental like the main one) and publishes the trained base into ``models/base``.

``pretrain.source`` says where the base comes from instead:

- ``shipped`` (the default): the base that ships inside polyvox (:mod:`polyvox.pretrained`),
  trained by this same stage for far longer than a user run; every file is checked against its
  card's sha256 before it is copied in. ``polyvox pretrain -S pretrain.source=null --ship``
  rebuilds it and writes it, with its card, into the package.
- a folder: a base built elsewhere (another project's ``models/base`` after ``make demo``, or one
  fetched with ``dvc pull``), checked and copied in.
- null: train it here.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from polyvox.models.meta import MemberMeta
from polyvox.config import ConfigError, DemoSection, MemberSection, Params
from polyvox.fingerprint import file_digest
from polyvox.fileio import atomic_path, replace_folder
from polyvox.pretrained import shipped
from polyvox.stages import STAGES
from polyvox.train.trainer import BASE, TrainResult, member_init, train
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

# What a base folder must hold for a fine-tune and for `polyvox pretrain` to publish it.
BASE_FILES = (MemberMeta.FILE, "best.pt", "speakers.pt")
SHIPPED = "shipped"  # pretrain.source's name for the base inside the package (polyvox.pretrained)
NOT_NEEDED = "not-needed.json"  # what models/base holds when no member starts from a base


@dataclass(frozen=True)
class PretrainResult:
    folder: str
    origin: str            # "trained" (here), or the folder it was copied from
    corpus: str            # the workspace whose features it trained on ("" when copied)
    train: TrainResult | None

    def summary(self) -> str:
        if self.origin == "not needed":
            return "base: not needed (no text→mel member starts from one)"
        if self.train is None:
            return f"base: copied from {self.origin} into {self.folder}"
        return f"base ({self.folder}, base corpus in {self.corpus}): {self.train.summary()}"

    def to_dict(self) -> dict:
        return asdict(self)


def base_corpus(params: Params) -> DemoSection:
    """The corpus the base trains on: the demo section with the pretrain section's voices
    and takes per voice where it sets them."""
    chosen = {key: value for key, value in (("voices", params.pretrain.voices),
                                            ("utterances_per_speaker", params.pretrain.utterances_per_speaker))
              if value is not None}
    return DemoSection.model_validate({**params.demo.model_dump(), **chosen})


def base_params(params: Params) -> Params:
    """The settings the base trains under: the run's own, on the base corpus, with the pretrain
    section's learning rate and bounds, no warm start, and one member (``base``) conditioned on audio and images."""
    train_section = params.train.model_copy(update={
        "lr": params.pretrain.lr, "max_steps": params.pretrain.max_steps, "max_minutes": params.pretrain.max_minutes,
        "init_from": None,
        "members": [MemberSection(name=BASE, seed=params.seed, conditioning="audio+image", variant={})]})
    return params.model_copy(update={"train": train_section, "demo": base_corpus(params),
                                     "prepare": params.prepare.model_copy(update={"corpus": None})})


def base_workspace(params: Params, workspace: Workspace) -> Workspace:
    """Where the base corpus lives: the workspace itself when its corpus is the demo corpus and
    the base's corpus is that same one, else its ``pretrain/`` folder."""
    own = params.prepare.corpus is None and base_corpus(params) == params.demo
    return workspace if own else Workspace(workspace.root / "pretrain")


def check_base(folder: Path) -> MemberMeta:
    """The model.json of a base folder, or a ConfigError naming what is missing or unreadable."""
    missing = [name for name in BASE_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"pretrain.source: {folder} is not a trained base (missing {', '.join(missing)})")
    try:
        meta = MemberMeta.read(folder)
    except ValueError as exc:
        raise ConfigError(f"pretrain.source: {exc}") from None
    if meta.conditioning != "audio+image":
        raise ConfigError(f"pretrain.source: {folder} was trained with conditioning {meta.conditioning!r}; "
                          "a base needs audio+image so that its fine-tunes keep the image path")
    return meta


def _publish(source: Path, target: Path) -> bool:
    """Copy the base files of ``source`` into ``target`` (atomically, as one folder) unless they are
    there already; True when anything was copied."""
    if source.resolve() == target.resolve():
        return False
    if all((target / n).is_file() and file_digest(target / n) == file_digest(source / n) for n in BASE_FILES):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in (*BASE_FILES, "metrics.csv", "done.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True




def _base_data(params: Params, base_ws: Workspace) -> None:
    """The data half of the base corpus in its own workspace, stage by stage through their specs
    (each stage skips what is done)."""
    base_ws.root.mkdir(parents=True, exist_ok=True)
    for name in STAGES["pretrain"].composes:
        log.info("pretrain: %s of the base corpus in %s", name, base_ws.root)
        STAGES[name].function()(params, base_ws)


def needs_base(params: Params) -> bool:
    """Whether any member starts from ``models/base`` (:func:`~polyvox.train.trainer.member_init` says
    which: a text→mel member under ``train.init_from: base``)."""
    return any(member_init(spec, params.train.init_from) == BASE for spec in params.train.members)


def _not_needed(target: Path) -> PretrainResult:
    """No member needs a base: leave a base that is there (it took minutes to make and a later
    text→mel member can use it), else leave only :data:`NOT_NEEDED` in ``models/base``, so that the
    stage still has its output and ``dvc commit`` / ``dvc repro`` see the same state as the flow."""
    if not all((target / name).is_file() for name in BASE_FILES):
        note = {"needed": False, "why": "no member of train.members starts from a base (a text→mel member "
                "with train.init_from: base); `polyvox pretrain` builds one once a member needs it"}
        with atomic_path(target / NOT_NEEDED, keep_unchanged=True) as tmp:
            tmp.write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")
    log.info("pretrain: no member starts from a base; nothing to build")
    return PretrainResult(str(target), "not needed", "", None)


def pretrain(params: Params, workspace: Workspace) -> PretrainResult:
    """Build ``models/base``: copied from ``pretrain.source``, or trained on the base corpus; a note
    saying no base is needed where no member starts from one."""
    target = workspace.models / BASE
    if not needs_base(params):
        return _not_needed(target)
    (target / NOT_NEEDED).unlink(missing_ok=True)
    if params.pretrain.source is not None:
        source = shipped(BASE) if params.pretrain.source == SHIPPED else workspace.resolve(params.pretrain.source)
        check_base(source)
        copied = _publish(source, target)
        log.info("pretrain: %s base from %s", "copied the" if copied else "already holds the", source)
        return PretrainResult(str(target), str(source), "", None)
    settings = base_params(params)
    base_ws = base_workspace(params, workspace)
    if base_ws != workspace:
        _base_data(settings, base_ws)
    result = train(settings, base_ws, member=BASE)
    if base_ws != workspace and _publish(base_ws.models / BASE, target):
        log.info("pretrain: published the base trained in %s into %s", base_ws.models / BASE, target)
    return PretrainResult(str(target), "trained", str(base_ws.root), result)


# What rebuilds the shipped base: the stage itself with `pretrain.source: null` and params.yaml's
# recipe (the card records those settings; tests/test_pretrained.py checks the card against both).
REBUILD_COMMAND = "polyvox pretrain -S pretrain.source=null --ship"
# fp16 weights are shipped when the synthesised mels match fp32's on PARITY_SENTENCES: the same
# frame counts and a mean absolute log-mel difference below this (a tenth of the smallest
# difference between two real takes that the judges notice is far larger).
FP16_MEAN_ABS_LIMIT = 0.01
PARITY_SENTENCES = ("Good morning, how can I help you today?", "The train to Boston leaves at 7:45.",
                    "Could you spell your last name for me, please?", "Thank you.")


def _fp16_parity(folder: Path, halved: Path) -> dict:
    """Synthesise :data:`PARITY_SENTENCES` for each speaker with fp32 and fp16 weights; the largest
    frame-count difference and the mean absolute log-mel difference."""
    from polyvox.runtime.synthesizer import Synthesizer

    full, half = Synthesizer(folder), Synthesizer(halved)
    frames, diffs = 0, []
    for speaker in sorted(full.speakers):
        for text in PARITY_SENTENCES:
            a, b = full.mel(text, speaker=speaker), half.mel(text, speaker=speaker)
            frames = max(frames, abs(a.shape[1] - b.shape[1]))
            if a.shape == b.shape:
                diffs.append(float((a - b).abs().mean()))
    return {"frame_count_difference": frames, "mean_abs_log_mel": max(diffs) if diffs else float("inf")}


def ship_base(params: Params, workspace: Workspace, result: PretrainResult, commit: str,
              root: Path | None = None, figures: dict | None = None) -> Path:
    """Write the base just trained (``models/base``) into the package as the shipped base, with its
    card: weights only, fp16 where parity holds (:func:`_fp16_parity`)."""
    import pandas as pd
    import torch

    from polyvox import pretrained
    from polyvox.runtime.synthesizer import Synthesizer

    if params.pretrain.source is not None or result.train is None:
        raise ConfigError("--ship ships a base trained by this run: set pretrain.source: null "
                          f"({REBUILD_COMMAND})")
    folder = workspace.models / BASE
    base_ws = base_workspace(params, workspace)
    state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    buffers = {name for name, _ in Synthesizer(folder).model.named_buffers()}
    with tempfile.TemporaryDirectory(prefix="polyvox-ship-") as scratch:
        halved = Path(scratch) / "fp16"
        halved.mkdir()
        for name in (MemberMeta.FILE, "speakers.pt"):
            shutil.copy2(folder / name, halved / name)
        weights = {name: tensor.half() if tensor.is_floating_point() and name not in buffers else tensor
                   for name, tensor in state["model"].items()}
        torch.save({"model": weights, "step": state["step"], "best_val_loss": state.get("best_val_loss")},
                   halved / "best.pt")
        parity = _fp16_parity(folder, halved)
        fp16 = parity["frame_count_difference"] == 0 and parity["mean_abs_log_mel"] < FP16_MEAN_ABS_LIMIT
        if not fp16:
            torch.save({"model": state["model"], "step": state["step"], "best_val_loss": state.get("best_val_loss")},
                       halved / "best.pt")
        index = pd.read_parquet(base_ws.data / "features" / "index.parquet")
        corpus = base_corpus(params)
        record = pretrained.card_record(
            about="The base acoustic model every polyvox voice fine-tunes from (train.init_from: base): the "
                  "`model` section trained by `polyvox pretrain` on the base corpus below, with audio and "
                  "image conditioning.",
            command=REBUILD_COMMAND, commit=commit, params=STAGES["pretrain"].settings(params), index=index,
            audio=params.audio, result=result.train,
            data={"voices": ", ".join(corpus.voices), "utterances_per_speaker": corpus.utterances_per_speaker,
                  "train_utterances": int((index["split"] == "train").sum())},
            training={"planned_steps": result.train.planned_steps, "best_val_loss": result.train.best_val_loss},
            figures={"weights": "fp16" if fp16 else "fp32 (fp16 parity failed)", "fp16_parity": parity,
                     **(figures or {})})
        return pretrained.ship(BASE, {name: halved / name for name in BASE_FILES}, record, root)
