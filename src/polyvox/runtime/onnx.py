"""The acoustic model exported to ONNX and run with onnxruntime.

Each member becomes two graphs (``torch.onnx.export`` with the dynamo exporter, dynamic lengths):

    encoder.onnx   tokens (1, tokens) int64, speaker embedding (1, channels)
                   → variance-adapted token states (1, tokens, channels), log-durations (1, tokens)
                   [and, for a member with teacher input, the text encoder's per-token means
                   (1, tokens, n_mels) that align the teacher's rendering]
    decoder.onnx   length-regulated frames (1, frames, channels) [and, for a member with
                   ``phone_positions``, each frame's place in its phone (1, frames, 6); for a member
                   with teacher input, the warped teacher frames (1, frames, n_mels)]
                   → log-mel (1, n_mels, frames)

Between them, durations are rounded and tokens repeated in numpy (the positions, the teacher's
alignment and its warp come from the same functions the model trains with) — the same shared-duration
ensemble as :class:`polyvox.runtime.voice.Voice` (mean log-durations, weighted log-mels). The
ONNX path covers conditioning by speaker name (the serving hot path); reference audio and images
go through PyTorch. The vocoder stays in PyTorch (its iSTFT head has no ONNX export).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polyvox.models.acoustic import MAX_TOKEN_FRAMES, AcousticModel, warp_teacher
from polyvox.models.variance import POSITION_FEATURES, frame_tokens, phone_positions

log = logging.getLogger(__name__)

OPSET_NOTE = "dynamo exporter, opset chosen by torch.onnx"


class _Encoder(nn.Module):
    def __init__(self, model: AcousticModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden, mask = self.model.encode(tokens, audio_embedding=embedding)
        variance = self.model.variance
        adapted = variance.embed(hidden, variance.pitch(hidden, mask), variance.energy(hidden, mask))
        if self.model.teacher is None:
            return adapted, variance.duration(hidden, mask)
        _, mu, _ = self.model.text(tokens, (tokens != 0).sum(dim=1))
        return adapted, variance.duration(hidden, mask), mu


class _Decoder(nn.Module):
    def __init__(self, model: AcousticModel):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, positions: torch.Tensor | None = None,
                teacher: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones(frames.shape[0], frames.shape[1], dtype=torch.bool, device=frames.device)
        if positions is not None:
            frames = frames + self.model.place(positions)
        if teacher is not None:
            frames = frames + self.model.teacher(teacher.transpose(1, 2)).transpose(1, 2)
        _, post = self.model.decoder(frames, mask)
        return self.model.denormalise(post)


def export_member(model: AcousticModel, target: Path) -> None:
    """``encoder.onnx`` and ``decoder.onnx`` of one member into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    channels = model.cfg.channels
    tokens = torch.randint(2, model.cfg.vocab_size, (1, 12))
    embedding = torch.zeros(1, channels)
    frames = torch.randn(1, 40, channels)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX export
    try:
        with torch.no_grad():
            length = torch.export.Dim("tokens", min=2, max=4096)
            outputs = ["adapted", "log_durations"] + (["mu"] if model.teacher is not None else [])
            torch.onnx.export(_Encoder(model).eval(), (tokens, embedding), str(target / "encoder.onnx"), dynamo=True,
                              input_names=["tokens", "embedding"], output_names=outputs,
                              dynamic_shapes={"tokens": {1: length}, "embedding": None}, verbose=False)
            count = torch.export.Dim("frames", min=2, max=65536)
            inputs, names, shapes = (frames,), ["frames"], {"frames": {1: count}}
            if model.positions is not None:
                inputs += (torch.rand(1, frames.shape[1], POSITION_FEATURES),)
                names.append("positions")
                shapes["positions"] = {1: count}
            if model.teacher is not None:
                if model.positions is None:  # the graph's inputs are positional: keep the teacher's slot
                    raise ValueError("ONNX export of a teacher-input member needs model.phone_positions")
                inputs += (torch.randn(1, frames.shape[1], model.cfg.n_mels),)
                names.append("teacher")
                shapes["teacher"] = {1: count}
            torch.onnx.export(_Decoder(model).eval(), inputs, str(target / "decoder.onnx"), dynamo=True,
                              input_names=names, output_names=["mel"], dynamic_shapes=shapes, verbose=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_voice(voice, target: Path) -> Path:
    """Every member of ``voice`` (a :class:`Voice`) into ``target/<member>/``, plus ``onnx.json``."""
    for member in voice.members:
        export_member(member.synthesizer.model, target / member.name)
    (target / "onnx.json").write_text(json.dumps({"members": [m.name for m in voice.members],
                                                  "exporter": OPSET_NOTE, "torch": torch.__version__}, indent=1) + "\n")
    return target


class OnnxAcoustic:
    """The voice's acoustic model in onnxruntime: text + speaker name → log-mel, like ``Voice.mel``."""

    def __init__(self, voice, folder: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no spin-waiting: the vocoder (PyTorch) runs between the graphs on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice = voice
        self.sessions = {}
        for member in voice.members:
            base = folder / member.name
            if not (base / "encoder.onnx").is_file():
                raise FileNotFoundError(f"{base}: no ONNX export of member {member.name!r}")
            self.sessions[member.name] = (
                ort.InferenceSession(str(base / "encoder.onnx"), options, providers=["CPUExecutionProvider"]),
                ort.InferenceSession(str(base / "decoder.onnx"), options, providers=["CPUExecutionProvider"]))
        # members whose decoder graph also takes each frame's place in its phone (model.phone_positions)
        self.placed = {name for name, (_, decoder) in self.sessions.items()
                       if any(i.name == "positions" for i in decoder.get_inputs())}
        # members that read a teacher rendering (model.teacher_input)
        self.taught = {name for name, (_, decoder) in self.sessions.items()
                       if any(i.name == "teacher" for i in decoder.get_inputs())}

    def mel(self, text: str, speaker: str) -> np.ndarray:
        """(n_mels, frames) log-mel on shared durations, weighted as the voice's members are."""
        if speaker not in self.voice.speakers:
            raise ValueError(f"unknown speaker {speaker!r}; known: {self.voice.speakers}")
        tokens = self.voice.members[0].synthesizer.tokens(text).cpu().numpy().astype(np.int64)
        encoded = {}
        for member in self.voice.members:
            embedding = member.synthesizer.speakers[speaker][None].cpu().numpy().astype(np.float32)
            encoded[member.name] = self.sessions[member.name][0].run(None, {"tokens": tokens, "embedding": embedding})
        log_durations = np.mean([outputs[1] for outputs in encoded.values()], axis=0)[0]
        durations = np.clip(np.round(np.exp(log_durations) - 1.0), 1, MAX_TOKEN_FRAMES).astype(np.int64)
        total = sum(m.weight for m in self.voice.members)
        positions = phone_positions(torch.from_numpy(durations)[None]).numpy() if self.placed else None
        mel = None
        for member in self.voice.members:
            feeds = {"frames": np.repeat(encoded[member.name][0][0], durations, axis=0)[None].astype(np.float32)}
            if member.name in self.placed:
                feeds["positions"] = positions
            if member.name in self.taught:
                feeds["teacher"] = self._warped_teacher(member, text, tokens, encoded[member.name][2], durations)
            part = self.sessions[member.name][1].run(None, feeds)[0][0] * (member.weight / total)
            mel = part if mel is None else mel + part
        return mel

    @staticmethod
    def _warped_teacher(member, text: str, tokens: np.ndarray, mu: np.ndarray, durations: np.ndarray) -> np.ndarray:
        """The teacher's rendering aligned by the graph's per-token means and warped onto ``durations``."""
        synthesizer = member.synthesizer
        teacher = synthesizer.teacher_mel(text)
        track = synthesizer.model.align_teacher(torch.from_numpy(mu), torch.tensor([tokens.shape[1]]), teacher,
                                                torch.tensor([teacher.shape[2]]))
        grid = torch.from_numpy(durations)[None]
        return warp_teacher(track, grid, frame_tokens(grid)).numpy().astype(np.float32)

    def synthesize(self, text: str, speaker: str) -> tuple[np.ndarray, int]:
        mel = torch.from_numpy(self.mel(text, speaker))
        return self.voice.vocode(mel), self.voice.sample_rate
