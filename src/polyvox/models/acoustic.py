"""The multimodal acoustic model: text + optional reference audio + optional image → mel.

Composition: TextEncoder → (conditioning from ReferenceEncoder / ImageEncoder via
ConditioningFusion, added to every token) → VarianceAdaptor (durations from monotonic alignment
search while training, predicted at inference; token-level pitch and energy) → length regulator
→ MelDecoder. Mels are modelled in normalised units (per-bin mean/std from ``features``).

With ``teacher_input``, a teacher voice's log-mel of the same text (:mod:`polyvox.features.teacher`)
enters the decoder beside the text: aligned to the tokens by the same search that aligns the target
(against the text encoder's per-token means), then warped token by token onto the frames of the
target's durations (training) or the predicted ones (synthesis), and added through a projection that
starts at zero, so a base trained without it fine-tunes from exactly its own behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from polyvox.config import ModelSection
from polyvox.models.decoder import MelDecoder
from polyvox.models.encoders import (Conditioned, ConditioningFusion, ImageEncoder, ReferenceEncoder, TextEncoder,
                                     cross_modal_loss)
from polyvox.models.layers import sequence_mask
from polyvox.models.aligner import align
from polyvox.models.teacher import TeacherTrack, stretch_to_tokens, warp_teacher
from polyvox.models.variance import (POSITION_FEATURES, VarianceAdaptor, frame_tokens, phone_positions,
                                     regulate_length, token_average)


class ModelConfig(ModelSection):
    """The acoustic model's hyperparameters: the ``model`` section of params.yaml (one member's, with
    its variant) and what the data fixes. model.json stores it; a synthesiser rebuilds the model from it."""

    vocab_size: int = Field(ge=2)
    n_mels: int = Field(ge=8)
    teacher_input: bool = False  # the decoder also reads a teacher voice's rendering of the text


# No phone of read speech lasts 1.5 s (128 frames at hop 256, 22.05 kHz): a longer predicted
# duration is a broken prediction, and the frames it would add cost the decoder quadratically.
MAX_TOKEN_FRAMES = 128


@dataclass
class Batch:
    """A training batch; frame-level tensors share the mel's frame grid."""

    tokens: torch.Tensor  # (batch, tokens) int
    token_lengths: torch.Tensor  # (batch,)
    mel: torch.Tensor  # (batch, n_mels, frames), log-mel (not normalised)
    mel_lengths: torch.Tensor  # (batch,)
    pitch: torch.Tensor  # (batch, frames) normalised log-F0, 0 where unvoiced
    voiced: torch.Tensor  # (batch, frames) 0/1
    energy: torch.Tensor  # (batch, frames) normalised energy
    speaker: torch.Tensor  # (batch,) int, for the cross-modal loss
    reference_mel: torch.Tensor | None = None  # (batch, n_mels, ref_frames)
    reference_lengths: torch.Tensor | None = None
    image: torch.Tensor | None = None  # (batch, 3, size, size)
    image_present: torch.Tensor | None = None  # (batch,) bool
    teacher_mel: torch.Tensor | None = None  # (batch, n_mels, teacher_frames) log-mel of the teacher voice
    teacher_lengths: torch.Tensor | None = None


class AcousticModel(Conditioned, nn.Module):
    def __init__(self, cfg: ModelConfig, mel_mean: torch.Tensor, mel_std: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        c = cfg
        self.register_buffer("mel_mean", mel_mean.float().reshape(1, -1, 1))
        self.register_buffer("mel_std", mel_std.float().reshape(1, -1, 1))
        token_dropout = c.dropout if c.token_dropout is None else c.token_dropout
        self.text = TextEncoder(c.vocab_size, c.channels, c.text_layers, c.heads, c.kernel_size, token_dropout, c.n_mels)
        self.reference = ReferenceEncoder(c.n_mels, c.channels, c.dropout)
        self.image = ImageEncoder(c.channels, c.dropout)
        self.fusion = ConditioningFusion(c.channels, c.modality_dropout)
        self.variance = VarianceAdaptor(c.channels, c.variance_kernel_size, token_dropout)
        self.decoder = MelDecoder(c.channels, c.decoder_layers, c.heads, c.kernel_size, c.dropout, c.n_mels,
                                  c.postnet_layers)
        self.positions = nn.Linear(POSITION_FEATURES, c.channels) if c.phone_positions else None
        self.teacher = None
        if c.teacher_input:
            self.teacher = nn.Conv1d(c.n_mels, c.channels, 3, padding=1)
            nn.init.zeros_(self.teacher.weight)
            nn.init.zeros_(self.teacher.bias)

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalise(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.mel_std + self.mel_mean

    def expand(self, adapted: torch.Tensor, durations: torch.Tensor, frames: int | None = None,
               teacher: "TeacherTrack | None" = None) -> torch.Tensor:
        """Token states (batch, tokens, ch) → the decoder's frame input (batch, frames, ch)."""
        tokens = frame_tokens(durations, frames)  # shared by the expansion, the positions and the teacher
        expanded = regulate_length(adapted, durations, tokens=tokens)
        if self.positions is not None:
            expanded = expanded + self.place(phone_positions(durations, tokens=tokens))
        if self.teacher is not None:
            if teacher is None:
                raise ValueError("this model reads a teacher rendering of the text (model.teacher_input); none was given")
            warped = warp_teacher(teacher, durations, tokens)  # (batch, frames, n_mels)
            expanded = expanded + self.teacher(warped.transpose(1, 2)).transpose(1, 2) * tokens[1][..., None]
        return expanded

    def align_teacher(self, mu: torch.Tensor, token_lengths: torch.Tensor, teacher_mel: torch.Tensor,
                      teacher_lengths: torch.Tensor) -> "TeacherTrack":
        """The teacher's frames per token: the monotonic alignment of its (normalised) frames under the
        text encoder's per-token means ``mu`` (batch, tokens, n_mels), as the target is aligned."""
        teacher_mel, teacher_lengths = stretch_to_tokens(teacher_mel, teacher_lengths, token_lengths)
        frames = teacher_mel.shape[2]
        mask = sequence_mask(teacher_lengths, frames)
        normalised = self.normalise(teacher_mel) * mask[:, None]
        # Each mel bin of the rendering centred on its own mean: the teacher's spectrum sits ~1 log unit
        # off the corpus's, and centred frames align better under the corpus-trained means (per-token
        # duration correlation with the target's alignment 0.2-0.7 against 0.0-0.4 uncentred, kathleen-a).
        normalised = (normalised - normalised.sum(dim=2, keepdim=True) / teacher_lengths[:, None, None]) * mask[:, None]
        durations = align(mu, normalised, token_lengths, teacher_lengths, self.cfg.alignment_prior).sum(dim=2)
        return TeacherTrack(normalised.transpose(1, 2), durations)

    def place(self, positions: torch.Tensor) -> torch.Tensor:
        """(batch, frames, POSITION_FEATURES) from :func:`phone_positions` → (batch, frames, ch), 0 on padding."""
        return self.positions(positions) * (positions.abs().sum(dim=2, keepdim=True) > 0)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses for one batch (teacher-forced durations, pitch and energy)."""
        b = batch
        size = b.tokens.shape[0]
        hidden, mu, token_mask = self.text(b.tokens, b.token_lengths)
        frame_mask = sequence_mask(b.mel_lengths, b.mel.shape[2])
        target = self.normalise(b.mel) * frame_mask[:, None]

        alignment = align(mu, target, b.token_lengths, b.mel_lengths, self.cfg.alignment_prior)
        durations = alignment.sum(dim=2)
        aligned_mu = torch.einsum("btf,btm->bmf", alignment, mu)
        frames_total = frame_mask.sum() * target.shape[1]
        prior_loss = 0.5 * (((aligned_mu - target) ** 2) * frame_mask[:, None]).sum() / frames_total

        audio, visual, image_present, fused = self.condition(size, b.reference_mel, b.reference_lengths, b.image,
                                                             b.image_present)
        hidden = (hidden + fused[:, None, :]) * token_mask[..., None]

        pitch_target = token_average(b.pitch, alignment, b.voiced)
        energy_target = token_average(b.energy, alignment)
        tokens_total = token_mask.sum()
        duration_loss = (((self.variance.duration(hidden.detach(), token_mask) - torch.log1p(durations)) ** 2)
                         * token_mask).sum() / tokens_total
        pitch_loss = (((self.variance.pitch(hidden, token_mask) - pitch_target) ** 2) * token_mask).sum() / tokens_total
        energy_loss = (((self.variance.energy(hidden, token_mask) - energy_target) ** 2) * token_mask).sum() / tokens_total

        teacher = None
        if self.teacher is not None:
            if b.teacher_mel is None:
                raise ValueError("model.teacher_input: the batch has no teacher rendering (features.teacher_voice)")
            teacher = self.align_teacher(mu, b.token_lengths, b.teacher_mel, b.teacher_lengths)
        adapted = self.variance.embed(hidden, pitch_target, energy_target)
        frames = self.expand(adapted, durations, b.mel.shape[2], teacher)
        mel, post = self.decoder(frames, frame_mask)
        mel_loss = ((mel - target).abs() + (post - target).abs()).sum(dim=1)[frame_mask].sum() / frames_total

        losses = {"mel": mel_loss, "prior": prior_loss, "duration": duration_loss, "pitch": pitch_loss,
                  "energy": energy_loss, "cross_modal": self.cross_modal_loss(audio, visual, image_present, b.speaker)}
        losses["total"] = sum(losses.values())
        return losses

    def cross_modal_loss(self, audio, visual, image_present, speaker) -> torch.Tensor:
        return cross_modal_loss(audio, visual, image_present, speaker, self.cfg.contrastive_temperature,
                                self.fusion.none.new_zeros(()))

    @torch.no_grad()
    def teacher_track(self, tokens: torch.Tensor, teacher_mel: torch.Tensor) -> "TeacherTrack | None":
        """For synthesis: a teacher log-mel (batch, n_mels, frames) of the text → its track (None for a
        model without teacher input)."""
        if self.teacher is None:
            return None
        lengths = (tokens != 0).sum(dim=1)
        _, mu, _ = self.text(tokens, lengths)
        teacher_lengths = torch.full((tokens.shape[0],), teacher_mel.shape[2], dtype=torch.long, device=tokens.device)
        return self.align_teacher(mu, lengths, teacher_mel, teacher_lengths)

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor, reference_mel=None, reference_lengths=None, image=None,
               audio_embedding=None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (batch, tokens) → conditioned token states (batch, tokens, channels) and token mask."""
        lengths = (tokens != 0).sum(dim=1)
        hidden, _, token_mask = self.text(tokens, lengths)
        _, _, _, fused = self.condition(tokens.shape[0], reference_mel, reference_lengths, image,
                                        audio_embedding=audio_embedding)
        return (hidden + fused[:, None, :]) * token_mask[..., None], token_mask

    @torch.no_grad()
    def log_durations(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Predicted log(1 + frames) per token, (batch, tokens)."""
        return self.variance.duration(hidden, token_mask)

    @staticmethod
    def durations(log_durations: torch.Tensor, token_mask: torch.Tensor, duration_scale: float = 1.0) -> torch.Tensor:
        """Whole frames per token (one to :data:`MAX_TOKEN_FRAMES`), (batch, tokens); 0 on padding."""
        frames = torch.round((torch.exp(log_durations) - 1) * duration_scale)
        return torch.clamp(frames, min=1, max=MAX_TOKEN_FRAMES) * token_mask

    @torch.no_grad()
    def decode(self, hidden: torch.Tensor, token_mask: torch.Tensor, durations: torch.Tensor,
               teacher: "TeacherTrack | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states + given durations → log-mel (batch, n_mels, frames) and frame lengths (batch,)."""
        pitch = self.variance.pitch(hidden, token_mask)
        energy = self.variance.energy(hidden, token_mask)
        frames = self.expand(self.variance.embed(hidden, pitch, energy), durations, teacher=teacher)
        frame_lengths = durations.sum(dim=1).long()
        frame_mask = sequence_mask(frame_lengths, frames.shape[1])
        _, post = self.decoder(frames, frame_mask)
        return self.denormalise(post) * frame_mask[:, None], frame_lengths

    @torch.no_grad()
    def infer(self, tokens: torch.Tensor, reference_mel=None, reference_lengths=None, image=None,
              audio_embedding=None, duration_scale: float = 1.0,
              teacher_mel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (batch, tokens) → log-mel (batch, n_mels, frames) and frame lengths (batch,).
        ``teacher_mel``: the teacher's log-mel of the text, for a model with teacher input."""
        hidden, token_mask = self.encode(tokens, reference_mel, reference_lengths, image, audio_embedding)
        durations = self.durations(self.log_durations(hidden, token_mask), token_mask, duration_scale)
        teacher = self.teacher_track(tokens, teacher_mel) if teacher_mel is not None else None
        return self.decode(hidden, token_mask, durations, teacher)
