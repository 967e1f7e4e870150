"""Training data from ``data/features``: utterances in memory, batches chosen by step.

Which utterances form batch ``step`` and which reference utterance each one gets is a pure
function of (seed, step), so a resumed run sees exactly the batches the uninterrupted run would
have seen; only the model, optimiser, scheduler and torch RNG states need checkpointing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polyvox.fileio import load_arrays
from polyvox.models.acoustic import Batch
from polyvox.models.symbols import Vocabulary
from polyvox.workspace import Workspace


@dataclass
class Utterance:
    tokens: np.ndarray  # (tokens,)
    mel: np.ndarray  # (n_mels, frames)
    pitch: np.ndarray  # (frames,) speaker-normalised log-F0, 0 where unvoiced
    voiced: np.ndarray  # (frames,)
    energy: np.ndarray  # (frames,) speaker-normalised
    speaker: int
    image: np.ndarray | None
    teacher: np.ndarray | None = None  # (n_mels, teacher frames): the teacher voice's log-mel of the same text


BUCKET_POOL = 8  # batches sorted by length together


def seeded_rng(seed: int, *parts: int) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


class Corpus:
    """All utterances of one split, loaded once. ``speakers`` fixes speaker ids across splits;
    ``images=False`` leaves the images out (a member conditioned on reference audio only);
    ``teachers=True`` loads each text's teacher rendering (``features.teacher_voice``) and requires one."""

    def __init__(self, workspace: Workspace, split: str, vocab: Vocabulary, speakers: list[str], images: bool = True,
                 teachers: bool = False):
        index = pd.read_parquet(workspace.features_index)
        rows = index[index["split"] == split].reset_index(drop=True)
        if rows.empty:
            raise ValueError(f"{workspace.features_index}: no utterances in split {split!r}")
        stats = json.loads((workspace.features / "stats.json").read_text())
        self.speaker_ids = {name: i for i, name in enumerate(speakers)}
        loaded: dict[str, np.ndarray] = {}
        self.items: list[Utterance] = []
        for row in rows.itertuples():
            arrays = load_arrays(workspace.features / row.features)
            s = stats["speakers"].get(row.speaker, stats["global"])
            voiced = arrays["f0"] > 0
            pitch = np.where(voiced, (np.log(np.maximum(arrays["f0"], 1.0)) - s["log_f0_mean"]) / s["log_f0_std"], 0.0)
            image = None
            if images and isinstance(row.image_features, str):
                if row.image_features not in loaded:
                    loaded[row.image_features] = np.load(workspace.features / row.image_features, allow_pickle=False)
                image = loaded[row.image_features]
            teacher = None
            if teachers:
                relative = getattr(row, "teacher_features", None)
                if not isinstance(relative, str):
                    raise ValueError(f"{workspace.features_index} row {row.row} ({row.id}): no teacher rendering; "
                                     "set features.teacher_voice and rerun `polyvox features`")
                if relative not in loaded:
                    loaded[relative] = np.load(workspace.features / relative, allow_pickle=False)
                teacher = loaded[relative]
            self.items.append(Utterance(
                tokens=np.asarray(vocab.encode(row.phonemes), dtype=np.int64),
                mel=arrays["mel"], pitch=pitch.astype(np.float32), voiced=voiced.astype(np.float32),
                energy=((arrays["energy"] - s["energy_mean"]) / s["energy_std"]).astype(np.float32),
                speaker=self.speaker_ids.get(row.speaker, -1), image=image, teacher=teacher,
            ))
        self.by_speaker: dict[int, list[int]] = {}
        for i, item in enumerate(self.items):
            self.by_speaker.setdefault(item.speaker, []).append(i)

    def __len__(self) -> int:
        return len(self.items)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """Epoch-wise shuffles with length bucketing: step ``s`` takes batch ``s mod per_epoch`` of epoch
        ``s // per_epoch``. Each epoch's shuffle is cut into pools of ``BUCKET_POOL`` batches, each pool
        sorted by length and cut into batches (little padding), and the batches shuffled again."""
        per_epoch = max(1, len(self.items) // batch_size)
        epoch, position = divmod(step, per_epoch)
        rng = seeded_rng(seed, epoch)
        order = rng.permutation(len(self.items))[: per_epoch * batch_size] if len(self.items) >= batch_size \
            else rng.permutation(len(self.items))
        pool = batch_size * BUCKET_POOL
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool].tolist(), key=lambda i: self.items[i].mel.shape[1])
            batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        return [int(i) for i in batches[int(rng.permutation(len(batches))[position % len(batches)])]]

    def collate(self, indices: list[int], seed: int, step: int) -> Batch:
        items = [self.items[i] for i in indices]
        # Each item's reference is another take of its speaker (itself when it has none).
        references = []
        for slot, (index, item) in enumerate(zip(indices, items)):
            others = [j for j in self.by_speaker[item.speaker] if j != index] or [index]
            references.append(self.items[others[int(seeded_rng(seed, step, slot).integers(len(others)))]])
        token_max = max(len(it.tokens) for it in items)
        frame_max = max(it.mel.shape[1] for it in items)
        ref_max = max(r.mel.shape[1] for r in references)
        floor = float(min(it.mel.min() for it in items))

        def pad(array: np.ndarray, length: int, value: float = 0.0) -> np.ndarray:
            widths = [(0, 0)] * (array.ndim - 1) + [(0, length - array.shape[-1])]
            return np.pad(array, widths, constant_values=value)

        image_present = [it.image is not None for it in items]
        image = None
        if any(image_present):
            shape = next(it.image for it in items if it.image is not None).shape
            image = torch.tensor(np.stack([it.image if it.image is not None else np.zeros(shape, np.float32) for it in items]))
        teacher = teacher_lengths = None
        if all(it.teacher is not None for it in items):
            teacher_max = max(it.teacher.shape[1] for it in items)
            teacher = torch.tensor(np.stack([pad(it.teacher, teacher_max, floor) for it in items]))
            teacher_lengths = torch.tensor([it.teacher.shape[1] for it in items])
        return Batch(
            tokens=torch.tensor(np.stack([pad(it.tokens, token_max) for it in items])),
            token_lengths=torch.tensor([len(it.tokens) for it in items]),
            mel=torch.tensor(np.stack([pad(it.mel, frame_max, floor) for it in items])),
            mel_lengths=torch.tensor([it.mel.shape[1] for it in items]),
            pitch=torch.tensor(np.stack([pad(it.pitch, frame_max) for it in items])),
            voiced=torch.tensor(np.stack([pad(it.voiced, frame_max) for it in items])),
            energy=torch.tensor(np.stack([pad(it.energy, frame_max) for it in items])),
            speaker=torch.tensor([it.speaker for it in items]),
            reference_mel=torch.tensor(np.stack([pad(r.mel, ref_max, floor) for r in references])),
            reference_lengths=torch.tensor([r.mel.shape[1] for r in references]),
            image=image,
            image_present=torch.tensor(image_present) if image is not None else None,
            teacher_mel=teacher,
            teacher_lengths=teacher_lengths,
        )


def batch_to(batch, device: torch.device):
    """A batch dataclass (:class:`Batch`, a converter's batch) with its tensors on ``device``."""
    return type(batch)(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()})


def vocabulary_and_speakers(workspace: Workspace) -> tuple[Vocabulary, list[str]]:
    """The phoneme inventory and speaker list, from the training split."""
    index = pd.read_parquet(workspace.features_index)
    train = index[index["split"] == "train"]
    return Vocabulary.build(list(train["phonemes"])), sorted(set(index["speaker"]))


def mel_statistics(workspace: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    stats = json.loads((workspace.features / "stats.json").read_text())["global"]
    return torch.tensor(stats["mel_mean"]), torch.tensor(stats["mel_std"]).clamp(min=1e-2)


def checkpoint_dir(workspace: Workspace, member: str) -> Path:
    return workspace.models / member
