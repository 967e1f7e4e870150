"""Modality encoders: text (phonemes), reference audio (mel) and image, into one embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyvox.models.layers import FFTStack, sequence_mask


class TextEncoder(nn.Module):
    """tokens (batch, tokens) → hidden (batch, tokens, channels) and the alignment prior's means
    ``mu`` (batch, tokens, n_mels), in normalised mel units."""

    def __init__(self, vocab_size: int, channels: int, layers: int, heads: int, kernel_size: int, dropout: float, n_mels: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, channels, padding_idx=0)
        self.stack = FFTStack(channels, layers, heads, kernel_size, dropout)
        self.mu = nn.Linear(channels, n_mels)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = sequence_mask(lengths, tokens.shape[1])
        hidden = self.stack(self.embedding(tokens), mask)
        return hidden, self.mu(hidden), mask


class ReferenceEncoder(nn.Module):
    """A reference utterance's mel (batch, n_mels, frames) → voice/style embedding (batch, channels).

    Convolutions then mean and standard-deviation pooling over real frames: a length-independent
    summary of timbre and speaking style.
    """

    def __init__(self, n_mels: int, channels: int, dropout: float):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 5, padding=2), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(channels, channels, 5, padding=2), nn.ReLU(),
        )
        self.project = nn.Linear(2 * channels, channels)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = sequence_mask(lengths, mel.shape[2])[:, None, :].float()
        hidden = self.convs(mel) * mask
        count = mask.sum(dim=2).clamp(min=1)
        mean = hidden.sum(dim=2) / count
        std = (((hidden - mean[..., None]) ** 2 * mask).sum(dim=2) / count).clamp(min=1e-6).sqrt()
        return self.project(torch.cat([mean, std], dim=1))


class ImageEncoder(nn.Module):
    """An image (batch, 3, size, size) in [0, 1] → embedding (batch, channels), in the reference
    encoder's space (a cross-modal loss pulls the two together)."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        widths = [3, 32, 64, 96, 128]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            # GroupNorm, not BatchNorm: no running statistics that depend on batch size or DDP rank.
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.project(self.convs(image * 2 - 1).mean(dim=(2, 3)))


class ConditioningFusion(nn.Module):
    """Fuse whichever of (reference-audio, image) embeddings are present into one conditioning
    vector (batch, channels); a learned vector stands in when neither is (text-only synthesis).

    During training each modality is dropped with probability ``modality_dropout``, so every
    subset of conditioning is seen and works at inference.
    """

    def __init__(self, channels: int, modality_dropout: float):
        super().__init__()
        self.modality_dropout = modality_dropout
        self.none = nn.Parameter(torch.zeros(channels))
        self.out = nn.Sequential(nn.Linear(channels, channels), nn.Tanh())

    def forward(self, audio: torch.Tensor | None, audio_present: torch.Tensor | None,
                image: torch.Tensor | None, image_present: torch.Tensor | None, batch: int) -> torch.Tensor:
        total = self.none.new_zeros(batch, self.none.shape[0])
        count = self.none.new_zeros(batch, 1)
        for embedding, present in ((audio, audio_present), (image, image_present)):
            if embedding is None or present is None:
                continue
            keep = present.float()[:, None]
            if self.training and self.modality_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.modality_dropout).float()
            total = total + embedding * keep
            count = count + keep
        fused = torch.where(count > 0, total / count.clamp(min=1), self.none.expand(batch, -1))
        return self.out(fused)


def cross_modal_loss(audio: torch.Tensor | None, visual: torch.Tensor | None, image_present: torch.Tensor | None,
                     speaker: torch.Tensor, temperature: float, zero: torch.Tensor) -> torch.Tensor:
    """InfoNCE between image and audio embeddings (batch, channels): an image's positives are the audio
    embeddings of the same speaker in the batch. ``zero`` when the batch has no image (or no audio)."""
    if audio is None or visual is None or image_present is None or not bool(image_present.any()):
        return zero
    images = F.normalize(visual[image_present], dim=1)
    audios = F.normalize(audio, dim=1)
    logits = images @ audios.T / temperature
    positive = (speaker[image_present][:, None] == speaker[None, :]).float()
    log_prob = logits.log_softmax(dim=1)
    return -(torch.logsumexp(log_prob.masked_fill(positive == 0, -1e9), dim=1)).mean()


class Conditioned:
    """What every member's model does with its conditioning (a mixin of an ``nn.Module`` that has
    ``reference``, ``image``, ``fusion`` and ``normalise``)."""

    def condition(self, batch_size: int, reference_mel=None, reference_lengths=None, image=None, image_present=None,
                  audio_embedding=None):
        """Embeddings of the given modalities and their fusion, (batch, channels) each.

        ``audio_embedding`` stands in for a reference encoding (e.g. a speaker's mean embedding)."""
        audio = audio_embedding
        if reference_mel is not None:
            audio = self.reference(self.normalise(reference_mel), reference_lengths)
        audio_present = None if audio is None else torch.ones(batch_size, dtype=torch.bool, device=audio.device)
        visual = self.image(image) if image is not None else None
        if visual is not None and image_present is None:
            image_present = torch.ones(batch_size, dtype=torch.bool, device=visual.device)
        fused = self.fusion(audio, audio_present, visual, image_present, batch_size)
        return audio, visual, image_present, fused

