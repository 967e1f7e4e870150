"""A teacher voice's rendering of the text as the decoder reads it (``model.teacher_input``): its
frames per token (aligned by :func:`polyvox.models.aligner.align` under the text encoder's means,
in :meth:`polyvox.models.acoustic.AcousticModel.align_teacher`), warped token by token onto the
output's frame grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polyvox.models.variance import token_spans


@dataclass
class TeacherTrack:
    """A teacher rendering ready to be warped: its normalised frames and each token's share of them."""

    frames: torch.Tensor  # (batch, teacher_frames, n_mels), normalised and centred per bin, 0 on padding
    durations: torch.Tensor  # (batch, tokens) teacher frames per token


def stretch_to_tokens(mel: torch.Tensor, lengths: torch.Tensor, token_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment gives every token at least one frame; a rendering with fewer frames than tokens
    (very fast speech, or a short text) is repeated frame by frame until it has enough."""
    factor = int(torch.ceil((token_lengths.float() / lengths.clamp(min=1).float()).max()).item())
    if factor <= 1:
        return mel, lengths
    return mel.repeat_interleave(factor, dim=2), lengths * factor


def warp_teacher(teacher: TeacherTrack, durations: torch.Tensor,
                 tokens: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The teacher's frames on the output frame grid, (batch, frames, n_mels): a frame at relative
    position r inside token i (of ``durations``) reads the teacher at r of the way through token i's
    teacher frames, interpolating linearly between the two nearest of them (never a neighbour's).
    0 past each sequence's end."""
    index, valid = tokens
    start, own = token_spans(durations, index)
    relative = (torch.arange(index.shape[1], device=index.device)[None, :].float() - start + 0.5) / own
    their_start, theirs = token_spans(teacher.durations, index)
    last = their_start + theirs - 1  # a frame reads only its own token's teacher frames
    source = torch.minimum(torch.maximum(their_start + relative * theirs - 0.5, their_start), last)
    low = source.floor().long()
    high = torch.minimum(low + 1, last.long())
    weight = (source - low.float())[..., None]
    channels = teacher.frames.shape[2]
    pick = lambda at: torch.gather(teacher.frames, 1, at[..., None].expand(-1, -1, channels))  # noqa: E731
    return (pick(low) * (1 - weight) + pick(high) * weight) * valid[..., None]
