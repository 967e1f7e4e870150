"""The conversion decoder (``kind: convert``): content features + pitch + speaker → the speaker's log-mel.

Trained by self-reconstruction of the speaker's own takes (content features of a take → that take's
mel), so it learns no language, no alignment and no durations: the words come from the content
features, which at synthesis a natural teacher voice's rendering of the text provides
(:mod:`polyvox.frontends.content`), and the voice from the decoder's weights and its speaker conditioning.

Composition: the content features (batch, width, frames), optionally squeezed through a bottleneck
(a 1×1 convolution to ``bottleneck`` channels, meant to pass the words and less of the teacher's
timbre; at 64 it bought neither WER nor similarity on kathleen-a, benchmarks/README.md), joined with the speaker-normalised log-F0 and the voiced flag, and run through residual dilated
convolutions, each told the speaker (the fused reference-audio / image embedding, as the acoustic
model fuses them, :class:`~polyvox.models.encoders.ConditioningFusion`); a 1×1 convolution gives the
normalised log-mel. Every layer works frame by frame or over a short window (no normalisation over
time), so a 1.5-s training crop and a whole sentence at synthesis see the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from polyvox.models.encoders import Conditioned, ConditioningFusion, ImageEncoder, ReferenceEncoder, cross_modal_loss
from polyvox.models.layers import sequence_mask

LOSS_NAMES = ("total", "mel", "cross_modal")


class ConverterConfig(BaseModel):
    """The converter's architecture: the ``converter`` section's model keys and what the data fixes."""

    model_config = ConfigDict(frozen=True)

    content_width: int = Field(ge=1)
    n_mels: int = Field(ge=8)
    channels: int = Field(ge=8)
    blocks: int = Field(ge=1)
    kernel_size: int = Field(ge=1)
    dilations: tuple[int, ...]
    bottleneck: int | None = Field(default=None, ge=4)  # None: the content read whole
    dropout: float = Field(ge=0, lt=1)
    modality_dropout: float = Field(ge=0, lt=1)
    contrastive_temperature: float = Field(gt=0)


@dataclass
class ConversionBatch:
    """Frame-level tensors share the mel's frame grid."""

    content: torch.Tensor  # (batch, width, frames) content features on the mel grid
    pitch: torch.Tensor  # (batch, frames) speaker-normalised log-F0, 0 where unvoiced
    voiced: torch.Tensor  # (batch, frames) 0/1
    mel: torch.Tensor  # (batch, n_mels, frames) log-mel (not normalised)
    mel_lengths: torch.Tensor  # (batch,) real frames
    speaker: torch.Tensor  # (batch,) int, for the cross-modal loss
    reference_mel: torch.Tensor  # (batch, n_mels, reference frames): another take of the speaker
    reference_lengths: torch.Tensor
    image: torch.Tensor | None = None  # (batch, 3, size, size)
    image_present: torch.Tensor | None = None  # (batch,) bool


class ChannelNorm(nn.Module):
    """LayerNorm over channels of each frame, (batch, channels, frames)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """x + conv1x1(GELU(dilated conv(norm(x) + speaker))), zero on padded frames."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.speaker = nn.Linear(channels, channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2)
        self.out = nn.Conv1d(channels, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, speaker: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x) + self.speaker(speaker)[..., None]
        h = self.out(self.dropout(nn.functional.gelu(self.conv(h * mask))))
        return (x + h) * mask


class ConverterModel(Conditioned, nn.Module):
    def __init__(self, cfg: ConverterConfig, mel_mean: torch.Tensor, mel_std: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        c = cfg
        self.register_buffer("mel_mean", mel_mean.float().reshape(1, -1, 1))
        self.register_buffer("mel_std", mel_std.float().reshape(1, -1, 1))
        self.reference = ReferenceEncoder(c.n_mels, c.channels, c.dropout)
        self.image = ImageEncoder(c.channels, c.dropout)
        self.fusion = ConditioningFusion(c.channels, c.modality_dropout)
        self.bottleneck = nn.Conv1d(c.content_width, c.bottleneck, 1) if c.bottleneck else nn.Identity()
        self.inp = nn.Conv1d((c.bottleneck or c.content_width) + 2, c.channels, 1)  # + log-F0 + voiced
        self.blocks = nn.ModuleList(ResidualBlock(c.channels, c.kernel_size, c.dilations[i % len(c.dilations)], c.dropout)
                                    for i in range(c.blocks))
        self.norm = ChannelNorm(c.channels)
        self.out = nn.Conv1d(c.channels, c.n_mels, 1)

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalise(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.mel_std + self.mel_mean

    def decode(self, content: torch.Tensor, pitch: torch.Tensor, voiced: torch.Tensor, speaker: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor:
        """(batch, width, frames) content, (batch, frames) pitch and voiced, (batch, channels) fused speaker,
        (batch, 1, frames) mask → normalised log-mel (batch, n_mels, frames)."""
        x = self.inp(torch.cat([self.bottleneck(content), pitch[:, None], voiced[:, None]], dim=1)) * mask
        for block in self.blocks:
            x = block(x, speaker, mask)
        return self.out(self.norm(x)) * mask

    def forward(self, batch: ConversionBatch) -> dict[str, torch.Tensor]:
        """Losses for one batch: L1 of the normalised log-mel over real frames, and the cross-modal loss."""
        b = batch
        mask = sequence_mask(b.mel_lengths, b.mel.shape[2])[:, None].to(b.content.dtype)
        audio, visual, image_present, fused = self.condition(b.mel.shape[0], b.reference_mel, b.reference_lengths,
                                                             b.image, b.image_present)
        predicted = self.decode(b.content, b.pitch, b.voiced, fused, mask)
        target = self.normalise(b.mel) * mask
        mel_loss = ((predicted - target).abs() * mask).sum() / (mask.sum() * target.shape[1])
        losses = {"mel": mel_loss, "cross_modal": cross_modal_loss(audio, visual, image_present, b.speaker,
                                                                   self.cfg.contrastive_temperature, mel_loss.new_zeros(()))}
        losses["total"] = losses["mel"] + losses["cross_modal"]
        return losses

    @torch.no_grad()
    def infer(self, content: torch.Tensor, pitch: torch.Tensor, voiced: torch.Tensor, reference_mel=None,
              reference_lengths=None, image=None, audio_embedding=None) -> torch.Tensor:
        """One utterance's inputs (batch 1, no padding) → log-mel (batch, n_mels, frames)."""
        _, _, _, fused = self.condition(content.shape[0], reference_mel, reference_lengths, image,
                                        audio_embedding=audio_embedding)
        mask = torch.ones(content.shape[0], 1, content.shape[2], dtype=content.dtype, device=content.device)
        return self.denormalise(self.decode(content, pitch, voiced, fused, mask))
