"""The pipeline's stages, each declared once: the params it reads, the data it reads and writes, and
the module it runs, whose import closure is the code it depends on.

Everything else derives from these declarations or is checked against them:

- the stage's fingerprint digests :meth:`Stage.code` and reads :meth:`Stage.settings` (a stage
  reruns when its code or its settings change, the same rule DVC applies);
- the MLflow run of a stage records :meth:`Stage.settings` (:func:`polyvox.tracking.tracked`);
- ``dvc.yaml`` lists the same cmd, params, deps (data + code) and outputs: ``tests/test_stages.py``
  fails when they drift, and prints what a stage's entry should say.

A stage's code is package-grained: a stage that imports one module of ``models`` depends on the
whole ``models`` folder, so that ``dvc.yaml`` names folders, as DVC users expect, and never misses a
file that a new import pulls in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, cast

from polyvox.fingerprint import fingerprint, source_digest
from polyvox.imports import closure, unit


class StampedStage(Protocol):
    """What the module of a stage that stamps its outputs (train, train-vocoder, ensemble, evaluate)
    provides, of (params, workspace, **what names the run: a member, a vocoder's name): the
    fingerprint of its inputs, and the stamp (``done.json``) of outputs made from exactly those, None
    when the stage would work. ``completed`` also takes ``inputs=``: that fingerprint, when the caller
    has it (computed once)."""

    def input_fingerprint(self, params, workspace, /, **named) -> object: ...

    def completed(self, params, workspace, /, *, inputs=None, **named) -> dict | None: ...


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # what the stage runs; its import closure is the stage's code
    params: tuple[str, ...]  # params.yaml keys it reads: a section, or section.key
    deps: tuple[str, ...] = ()  # the data it reads (workspace paths)
    outs: tuple[str, ...] = ()  # what it writes: DVC outs, metrics and plots alike
    cmd: str | None = None  # the CLI command, when it is not `polyvox <name>`
    about: str = ""  # one line: what it does (the CLI's help)
    composes: tuple[str, ...] = ()  # stages it runs through their specs (not imports): their code is its too

    @property
    def command(self) -> str:
        return self.cmd or f"polyvox {self.name}"

    def function(self) -> Callable:
        """What the stage runs: ``<module>.<name>`` (``-`` as ``_``), a function of (params, workspace)."""
        return getattr(importlib.import_module(self.module), self.name.replace("-", "_"))

    def stamped(self) -> StampedStage:
        """The stage's module as a :class:`StampedStage`; a TypeError naming what it lacks otherwise."""
        module = importlib.import_module(self.module)
        lacking = [name for name in ("input_fingerprint", "completed") if not callable(getattr(module, name, None))]
        if lacking:
            raise TypeError(f"stage {self.name}: {self.module} does not stamp its outputs (no {', '.join(lacking)})")
        return cast(StampedStage, module)

    def input_fingerprint(self, params, workspace, **named) -> object:
        """What the stage reads (data version, settings, upstream outputs, code), as a fingerprint."""
        return self.stamped().input_fingerprint(params, workspace, **named)

    def completed(self, params, workspace, **named) -> dict | None:
        """The stamp of outputs made from exactly these inputs; None when the stage would work."""
        return self.stamped().completed(params, workspace, **named)

    @cached_property
    def code(self) -> tuple[str, ...]:
        """The parts of the package (folders, or top-level modules as ``name.py``) that the stage's
        module imports, transitively; paths relative to ``src/polyvox``."""
        own = {unit(m) for m in closure(self.module)}
        return tuple(sorted(own.union(*(STAGES[name].code for name in self.composes)) - BOOKKEEPING))

    def code_digest(self) -> str:
        return source_digest(*(part.removesuffix(".py") for part in self.code))

    def dvc_deps(self) -> list[str]:
        return [*self.deps, *(f"src/polyvox/{part}" for part in self.code)]

    def identity(self, params, settings: dict[str, Any] | None = None) -> str:
        """Fingerprint of what, besides its data, makes the stage's outputs: its settings (``settings``
        when the caller narrowed them, e.g. without the bounds of a resumable run) and its code."""
        return fingerprint(self.settings(params) if settings is None else settings, self.code_digest())

    def settings(self, params) -> dict[str, Any]:
        """The values of :attr:`params`, nested as in params.yaml (``{"audio": {"f0_min": …}}``)."""
        dumped = params.model_dump(by_alias=True)
        chosen: dict[str, Any] = {}
        for key in self.params:
            section, _, field = key.partition(".")
            if not field:
                chosen[section] = dumped[section]
            else:
                chosen.setdefault(section, {})[field] = dumped[section][field]
        return chosen


# Parts every stage imports that do not shape any output: the package marker, these declarations
# (what they change, a stage's settings, is digested on its own), the import graph, the MLflow
# logging and the progress bars. Editing them reruns nothing.
BOOKKEEPING = frozenset({"__init__.py", "stages.py", "imports.py", "tracking.py", "progress.py"})

# What the base reads of the train section: not the fine-tune's lr, bounds, warm start or members.
PRETRAIN_TRAIN_KEYS = ("batch_size", "warmup_steps", "lr_schedule", "calibration_steps", "precision", "grad_clip")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prepare", "polyvox.corpus.prepare", ("seed", "prepare", "demo"), outs=("data/raw",)),
    Stage("validate", "polyvox.validate.stage",
          # the judge of validate.asr_check
          ("validate", "evaluate.asr", "evaluate.whisper_model", "clean.language"),
          deps=("data/raw",), outs=("data/validated",)),
    Stage("clean", "polyvox.clean.stage", ("audio.sample_rate", "audio.win_length", "audio.hop_length", "clean"),
          deps=("data/raw", "data/validated/accepted.parquet"), outs=("data/clean",),
          about="Clean accepted rows: resample, downmix, trim, loudness-normalise; spoken-form text and phonemes."),
    Stage("features", "polyvox.features.stage",
          # the teacher rendering (features.teacher_voice) is cleaned as a corpus take is; content
          # features are computed when a member is kind: convert
          ("seed", "audio", "features", "clean.trim_top_db", "clean.loudness_lufs", "train.members"),
          deps=("data/raw", "data/clean"), outs=("data/features",),
          about="Compute log-mel, F0, energy and image tensors, speaker statistics and leakage-free splits."),
    Stage("pretrain", "polyvox.pretrain.stage",
          ("seed", "demo", "audio", "model", "pretrain", *(f"train.{k}" for k in PRETRAIN_TRAIN_KEYS),
           "train.init_from", "train.members"),  # these two: whether any member needs a base
          deps=("data/features",), outs=("models/base",), composes=("prepare", "validate", "clean", "features"),
          about="Build models/base, the model every voice fine-tunes from: trained on the base corpus, or "
                "copied from pretrain.source."),
    Stage("train", "polyvox.train.trainer", ("seed", "audio", "model", "converter", "train"),
          deps=("data/features", "models/base"), cmd="polyvox train --member ${key}",
          outs=tuple(f"models/${{key}}/{f}" for f in ("best.pt", "last.pt", "model.json", "speakers.pt",
                                                             "metrics.csv"))),
    Stage("train-vocoder", "polyvox.train.vocoder", ("seed", "audio", "vocoder"), deps=("data/clean", "data/features"),
          outs=tuple(f"models/vocoder/{f}" for f in ("best.pt", "last.pt", "vocoder.json", "metrics.csv"))),
    # deps: also every member's best.pt (models/<member>/best.pt for each of train.members)
    Stage("ensemble", "polyvox.ensemble.stage",
          ("seed", "ensemble", "evaluate.centroid_takes", "evaluate.asr", "evaluate.whisper_model", "clean.language"),
          deps=("data/clean", "data/features", "models/vocoder/best.pt"),
          outs=("models/candidate", "reports/ensemble.csv", "reports/ensemble.json"),
          about="Combine the trained members into models/candidate (kept only if it beats its best member on "
                "validation)."),
    Stage("evaluate", "polyvox.evaluate.stage",
          ("seed", "audio.f0_min", "audio.f0_max", "audio.f0_resolution", "clean.language", "evaluate"),
          deps=("data/clean", "data/features", "models/candidate"),
          outs=("reports/evaluate/audio", "reports/evaluate/plots", "reports/evaluate/report.html",
                "reports/evaluate/metrics.json", "reports/evaluate/per_utterance.csv"),
          about="Score the candidate, the champion (if any) and the real takes on the test split; write "
                "reports/evaluate/."),
    Stage("promote", "polyvox.registry.stage", ("registry", "promote"),
          deps=("models/candidate", "reports/evaluate/metrics.json"), outs=("reports/promote.json",)),
)}
