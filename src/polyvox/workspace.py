"""Where every stage reads and writes: the one place paths are spelled.

Commands run in a workspace (the directory holding ``params.yaml``) and write under its
``data/`` and ``models/``. ``dvc.yaml`` names the same folders; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def here(cls) -> "Workspace":
        return cls(Path.cwd())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def raw(self) -> Path:
        """Output of ``prepare``: ``manifest.parquet`` + ``audio/`` + ``reference/`` + ``images/``."""
        return self.data / "raw"

    @property
    def raw_manifest(self) -> Path:
        return self.raw / "manifest.parquet"

    @property
    def validated(self) -> Path:
        """Output of ``validate``: accepted / quarantine tables, summary, GX project and Data Docs."""
        return self.data / "validated"

    @property
    def accepted_manifest(self) -> Path:
        return self.validated / "accepted.parquet"

    @property
    def clean(self) -> Path:
        """Output of ``clean``: content-addressed audio and ``manifest.parquet``."""
        return self.data / "clean"

    @property
    def clean_manifest(self) -> Path:
        return self.clean / "manifest.parquet"

    @property
    def features(self) -> Path:
        """Output of ``features``: per-utterance arrays, image tensors, splits, speaker statistics."""
        return self.data / "features"

    @property
    def features_index(self) -> Path:
        return self.features / "index.parquet"

    @property
    def demo_corpus(self) -> Path:
        """The demo corpus, built once and reused (a cache, not a pipeline output)."""
        return self.data / "demo-corpus"

    @property
    def vocoder(self) -> Path:
        """Output of ``train-vocoder``."""
        return self.models / "vocoder"

    @property
    def candidate(self) -> Path:
        """Output of ``ensemble``: the voice to evaluate (an ensemble, or its best member), self-contained."""
        return self.models / "candidate"

    @property
    def champion(self) -> Path:
        """The voice currently promoted (written by ``promote``); evaluate scores it next to the candidate."""
        return self.models / "champion"

    @property
    def reports(self) -> Path:
        """Small outputs people read and DVC tracks as metrics and plots."""
        return self.root / "reports"

    @property
    def evaluation(self) -> Path:
        """Output of ``evaluate``: metrics.json, per_utterance.csv, plots, report.html, audio."""
        return self.reports / "evaluate"

    def data_version(self) -> str:
        """A short hash of the features index: which utterances, splits and feature files a model saw."""
        import hashlib

        return hashlib.sha256(self.features_index.read_bytes()).hexdigest()[:16]

    def resolve(self, path: Path) -> Path:
        """A path from params, taken relative to the workspace root when not absolute."""
        return path if path.is_absolute() else self.root / path
