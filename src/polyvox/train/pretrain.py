"""The base model every voice fine-tunes from: ``polyvox pretrain`` → ``models/base``.

The base is the ``model`` section trained on the teacher corpus — the ``demo`` section's voices
and prompts, rendered by the offline engines — with audio and image conditioning, so that every
fine-tune (``train.init_from: base``) keeps both paths. In the demo (no ``prepare.corpus``) the
teacher corpus is the workspace's own and the base trains on its features; for a user's corpus
the stage builds the teacher corpus in ``pretrain/`` (its own data half, incremental like the
main one) and publishes the trained base into ``models/base``.

A user who cannot spend the minutes takes a base built elsewhere: ``pretrain.source`` names its
folder (another project's ``models/base`` after ``make demo``, or one fetched with ``dvc pull``),
which is checked and copied in, and nothing is trained.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from polyvox.models.meta import MemberMeta
from polyvox.config import ConfigError, MemberConfig, Params
from polyvox.fingerprint import file_digest
from polyvox.fileio import replace_folder
from polyvox.train.trainer import BASE, TrainResult, train
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

# What a base folder must hold for a fine-tune and for `polyvox pretrain` to publish it.
BASE_FILES = ("model.json", "best.pt", "speakers.pt")


@dataclass(frozen=True)
class PretrainResult:
    folder: str
    origin: str            # "trained" (here), or the folder it was copied from
    teachers: str          # the workspace whose features it trained on ("" when copied)
    train: TrainResult | None

    def summary(self) -> str:
        if self.train is None:
            return f"base: copied from {self.origin} into {self.folder}"
        return f"base ({self.folder}, teacher corpus in {self.teachers}): {self.train.summary()}"

    def to_dict(self) -> dict:
        return asdict(self)


def base_params(params: Params) -> Params:
    """The settings the base trains under: the run's own, on the demo corpus, with the pretrain
    section's learning rate and bounds, no warm start, and one member (``base``) conditioned on audio and images."""
    train_section = params.train.model_copy(update={
        "lr": params.pretrain.lr, "max_steps": params.pretrain.max_steps, "max_minutes": params.pretrain.max_minutes,
        "init_from": None,
        "members": [MemberConfig(name=BASE, seed=params.seed, conditioning="audio+image", variant={})]})
    return params.model_copy(update={"train": train_section,
                                     "prepare": params.prepare.model_copy(update={"corpus": None})})


def teacher_workspace(params: Params, workspace: Workspace) -> Workspace:
    """Where the teacher corpus lives: the workspace itself when its corpus is the demo corpus,
    else its ``pretrain/`` folder."""
    return workspace if params.prepare.corpus is None else Workspace(workspace.root / "pretrain")


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


def _teacher_data(params: Params, teachers: Workspace) -> None:
    """The data half of the teacher corpus in its own workspace (each stage skips what is done)."""
    from polyvox.clean.stage import clean
    from polyvox.corpus.prepare import prepare
    from polyvox.features.stage import features
    from polyvox.validate.stage import validate

    teachers.root.mkdir(parents=True, exist_ok=True)
    for stage in (prepare, validate, clean, features):
        log.info("pretrain: %s of the teacher corpus in %s", stage.__name__, teachers.root)
        stage(params, teachers)


def pretrain(params: Params, workspace: Workspace) -> PretrainResult:
    """Build ``models/base``: copied from ``pretrain.source``, or trained on the teacher corpus."""
    target = workspace.models / BASE
    if params.pretrain.source is not None:
        source = workspace.resolve(params.pretrain.source)
        check_base(source)
        copied = _publish(source, target)
        log.info("pretrain: %s base from %s", "copied the" if copied else "already holds the", source)
        return PretrainResult(str(target), str(source), "", None)
    settings = base_params(params)
    teachers = teacher_workspace(params, workspace)
    if teachers != workspace:
        _teacher_data(settings, teachers)
    result = train(settings, teachers, member=BASE)
    if teachers != workspace and _publish(teachers.models / BASE, target):
        log.info("pretrain: published the base trained in %s into %s", teachers.models / BASE, target)
    return PretrainResult(str(target), "trained", str(teachers.root), result)
