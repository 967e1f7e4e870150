"""What a conversion member (``kind: convert``) brings to the shared training loop
(:func:`polyvox.train.trainer.fit`): its data (each take's content features, pitch and mel, cropped
to ``converter.segment_frames``), its model (:class:`~polyvox.models.converter.ConverterModel`), its
validation and its ``model.json``.

Which takes form batch ``step``, where each is cropped and which other take of its speaker is its
reference are pure functions of (seed, step), as for the acoustic model, so a resumed run sees the
batches the uninterrupted one would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polyvox.config import ConfigError, MemberSection, Params
from polyvox.fileio import chosen_checkpoint, load_arrays
from polyvox.frontends.content import ContentSettings, content_model, on_grid
from polyvox.frontends.teacher import TeacherSettings, tempo
from polyvox.models.converter import LOSS_NAMES, ConversionBatch, ConverterConfig, ConverterModel
from polyvox.models.meta import ConverterMeta, TextFrontEnd, member_kind
from polyvox.signal.pitch import normalised_log_f0
from polyvox.train.data import mel_statistics, seeded_rng
from polyvox.train.loop import held_out
from polyvox.train.recipe import MemberRecipe, speaker_embeddings, validation_loss
from polyvox.workspace import Workspace


def speaker_pitch(workspace: Workspace, speakers: list[str]) -> dict[str, list[float]]:
    """Each speaker's log-F0 mean and standard deviation (the features stage's statistics): what the
    decoder's pitch input was z-scored with, so synthesis can tell a vocoder the contour in Hz."""
    stats = json.loads((workspace.features / "stats.json").read_text())
    chosen = {name: stats["speakers"].get(name, stats["global"]) for name in speakers}
    return {name: [float(s["log_f0_mean"]), float(s["log_f0_std"])] for name, s in chosen.items()}


def speaker_tempo(workspace: Workspace, speakers: list[str], teacher: TeacherSettings,
                  texts: int) -> dict[str, float] | None:
    """Each speaker's pace as the teacher's ``length_scale`` (:func:`polyvox.frontends.teacher.tempo`),
    from up to ``texts`` of their training takes, spread evenly over the split (a text read several
    times counts with its takes' mean length). A speaker with no measurable take is left out (the
    teacher's own pace); None when ``texts`` is 0, the teacher has no pace, or no speaker was measured."""
    if texts == 0:
        return None
    index = pd.read_parquet(workspace.features_index, columns=["speaker", "split", "clean_text", "duration"])
    found = {}
    for name in speakers:
        rows = index[(index["speaker"] == name) & (index["split"] == "train")]
        means = rows.groupby("clean_text", sort=True)["duration"].mean()
        if means.empty:
            continue
        chosen = means.iloc[np.unique(np.linspace(0, len(means) - 1, min(texts, len(means))).round().astype(int))]
        pace = tempo(list(zip(chosen.index, chosen.to_numpy(dtype=float))), teacher)
        if pace is not None:
            found[name] = pace
    return found or None


class ContentCorpus:
    """All takes of one split with their content features on the mel grid (float16 in memory)."""

    def __init__(self, workspace: Workspace, split: str, speakers: list[str], audio, images: bool):
        index = pd.read_parquet(workspace.features_index)
        rows = index[index["split"] == split].reset_index(drop=True)
        if rows.empty:
            raise ValueError(f"{workspace.features_index}: no utterances in split {split!r}")
        stats = json.loads((workspace.features / "stats.json").read_text())
        speaker_ids = {name: i for i, name in enumerate(speakers)}
        loaded_images: dict[str, np.ndarray] = {}
        self.mel, self.content, self.pitch, self.voiced, self.speaker, self.image = [], [], [], [], [], []
        for row in rows.itertuples():
            relative = getattr(row, "content_features", None)
            if not isinstance(relative, str):
                raise ValueError(f"{workspace.features_index} row {row.row} ({row.id}): no content features; a member "
                                 "of kind: convert needs them — rerun `polyvox features` (it computes them when a "
                                 "member is kind: convert)")
            arrays = load_arrays(workspace.features / row.features)
            frames = arrays["mel"].shape[1]
            s = stats["speakers"].get(row.speaker, stats["global"])
            pitch, voiced = normalised_log_f0(arrays["f0"], s["log_f0_mean"], s["log_f0_std"])
            content = np.load(workspace.features / relative, allow_pickle=False).astype(np.float32)
            self.mel.append(arrays["mel"])
            self.content.append(on_grid(content, frames, audio).astype(np.float16))
            self.pitch.append(pitch)
            self.voiced.append(voiced)
            self.speaker.append(speaker_ids.get(row.speaker, -1))
            image = None
            if images and isinstance(row.image_features, str):
                if row.image_features not in loaded_images:
                    loaded_images[row.image_features] = np.load(workspace.features / row.image_features,
                                                                allow_pickle=False)
                image = loaded_images[row.image_features]
            self.image.append(image)
        self.width = int(self.content[0].shape[0])
        self.by_speaker: dict[int, list[int]] = {}
        for i, speaker in enumerate(self.speaker):
            self.by_speaker.setdefault(speaker, []).append(i)

    def __len__(self) -> int:
        return len(self.mel)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """Epoch-wise shuffles: step ``s`` takes batch ``s mod per_epoch`` of epoch ``s // per_epoch``."""
        per_epoch = max(1, len(self) // batch_size)
        epoch, position = divmod(step, per_epoch)
        order = seeded_rng(seed, epoch).permutation(len(self))
        if len(self) < batch_size:
            return [int(i) for i in order]
        return [int(i) for i in order[position * batch_size:(position + 1) * batch_size]]

    def collate(self, indices: list[int], seed: int, step: int, crop: int | None = None) -> ConversionBatch:
        """The takes ``indices``, each cut to a ``crop``-frame window (None: whole), padded to the longest."""
        spans = []
        for slot, i in enumerate(indices):
            frames = self.mel[i].shape[1]
            if crop is None or frames <= crop:
                spans.append((0, frames))
            else:
                start = int(seeded_rng(seed, step, slot, 1).integers(frames - crop + 1))
                spans.append((start, start + crop))
        references = []
        for slot, i in enumerate(indices):
            others = [j for j in self.by_speaker[self.speaker[i]] if j != i] or [i]
            references.append(others[int(seeded_rng(seed, step, slot).integers(len(others)))])
        length = max(end - start for start, end in spans)
        floor = float(min(self.mel[i].min() for i in indices))

        def pad(array: np.ndarray, width: int, value: float = 0.0) -> np.ndarray:
            return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, width - array.shape[-1])], constant_values=value)

        def cut(arrays: list[np.ndarray], value: float = 0.0) -> torch.Tensor:
            return torch.tensor(np.stack([pad(arrays[i][..., a:b].astype(np.float32), length, value)
                                          for i, (a, b) in zip(indices, spans)]))

        reference_length = max(self.mel[r].shape[1] for r in references)
        present = [self.image[i] is not None for i in indices]
        image = None
        if any(present):
            shape = next(self.image[i] for i in indices if self.image[i] is not None).shape
            image = torch.tensor(np.stack([self.image[i] if self.image[i] is not None else np.zeros(shape, np.float32)
                                           for i in indices]))
        return ConversionBatch(
            content=cut(self.content), pitch=cut(self.pitch), voiced=cut(self.voiced), mel=cut(self.mel, floor),
            mel_lengths=torch.tensor([b - a for a, b in spans]), speaker=torch.tensor([self.speaker[i] for i in indices]),
            reference_mel=torch.tensor(np.stack([pad(self.mel[r], reference_length, floor) for r in references])),
            reference_lengths=torch.tensor([self.mel[r].shape[1] for r in references]),
            image=image, image_present=torch.tensor(present) if image is not None else None)


def converter_config(params: Params, spec: MemberSection, content_width: int) -> ConverterConfig:
    section = params.member_model(spec)
    return ConverterConfig(content_width=content_width, n_mels=params.audio.n_mels,
                           **section.model_dump(include=set(ConverterConfig.model_fields)))


def warm_start(model: ConverterModel, source: Path) -> dict[str, int]:
    """Seed ``model`` with a trained converter's weights (tensors of equal name and shape; the mel
    statistics stay this corpus's)."""
    folder = source if source.is_dir() else source.parent
    checkpoint = source if source.is_file() else chosen_checkpoint(folder)
    if checkpoint is None or member_kind(folder) != "convert":
        raise ConfigError(f"train.init_from: {source} holds no trained converter (model.json of kind convert with "
                          "best.pt or last.pt)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    own = model.state_dict()
    copied = [name for name, tensor in state.items()
              if name not in ("mel_mean", "mel_std") and name in own and own[name].shape == tensor.shape]
    with torch.no_grad():
        for name in copied:
            own[name].copy_(state[name])
    model.load_state_dict(own)
    return {"copied": len(copied), "skipped": len(state) - len(copied)}


def converter_recipe(params: Params, workspace: Workspace, member: str, spec: MemberSection, seed: int,
                     init_from, warm: bool, speakers: list[str]) -> MemberRecipe:
    """The converter's part of a training run (after ``torch.manual_seed(seed)``)."""
    settings = ContentSettings.from_params(params)
    corpora = held_out(workspace, lambda split: ContentCorpus(workspace, split, speakers, params.audio,
                                                              images=spec.conditioning == "audio+image"))
    train_corpus, val_corpus = corpora
    expected = content_model(settings.model).width
    if train_corpus.width != expected:
        raise ValueError(f"{workspace.features}: content features {train_corpus.width} wide, but "
                         f"features.content.model {settings.model} gives {expected}; rerun `polyvox features`")
    model = ConverterModel(converter_config(params, spec, train_corpus.width), *mel_statistics(workspace))
    started = None
    if warm and init_from is not None:
        started = warm_start(model, workspace.resolve(Path(init_from)))
    section = params.member_model(spec)
    teacher = TeacherSettings(section.teacher_voice, params.audio, params.clean.trim_top_db, params.clean.loudness_lufs)
    meta = ConverterMeta(member=member, seed=seed, conditioning=spec.conditioning, model=model.cfg, speakers=speakers,
                         audio=params.audio, image_size=params.features.image_size,
                         text=TextFrontEnd(language=params.clean.language, phonemizer=params.clean.phonemizer),
                         content=settings.to_dict(),
                         teacher=teacher.to_dict(),
                         content_model=content_model(settings.model).identity(),
                         init_from=None if init_from is None else str(init_from),
                         pitch=speaker_pitch(workspace, speakers),
                         tempo=speaker_tempo(workspace, speakers, teacher, section.tempo_texts),
                         vocoder_pitch=section.vocoder_pitch)
    batch_size, crop = section.batch_size, section.segment_frames
    return MemberRecipe(
        model=model, train_corpus=train_corpus, batch_size=batch_size, lr=section.lr, loss_names=LOSS_NAMES,
        meta=meta, warm=started,
        batch=lambda indices, step: train_corpus.collate(indices, seed, step, crop),
        validation_loss=lambda m, device: validation_loss(m, val_corpus, batch_size, device, seed),
        speaker_embeddings=lambda m, device: speaker_embeddings(m, train_corpus, batch_size, device, seed, speakers))
