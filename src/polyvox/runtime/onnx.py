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

Between them, durations are rounded and tokens repeated in NumPy, and the phone positions are
computed in NumPy by :func:`~polyvox.models.variance.phone_positions_numpy` (tested equal to the
function the model trains with) — the same shared-duration ensemble as
:class:`polyvox.runtime.voice.Voice` (mean log-durations, weighted log-mels). The ONNX path covers
conditioning by speaker name (the serving hot path): with the neural vocoder's graph, such a request
runs no PyTorch operation at all (tests/test_onnx.py counts them). PyTorch still loads the bundle
(checkpoints, speaker embeddings) at start-up, and reference audio, images and a teacher
rendering's alignment go through it.

The neural vocoder becomes a third graph, ``vocoder.onnx`` (log-mel (1, n_mels, frames) → waveform
(1, frames * hop)). ``torch.istft`` has no ONNX export, so the graph spells it out in ops that
have one (:class:`_Vocoder`); a voice with the Griffin-Lim vocoder has no such graph and vocodes in
PyTorch. A harmonic-source vocoder's graph also takes the excitation (pitch features, harmonic and
noise spectra as real and imaginary parts), which NumPy builds (:mod:`polyvox.signal.excitation`),
and its pitch tracker is a fourth graph, ``vocoder_pitch.onnx`` (log-mel → octaves, voicing logit);
``vocoder.onnx.json`` beside them holds the vocoder's configuration.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyvox.models.acoustic import MAX_TOKEN_FRAMES, AcousticModel
from polyvox.models.teacher import warp_teacher
from polyvox.models.variance import POSITION_FEATURES, frame_tokens, phone_positions_numpy

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


@contextmanager
def _quiet_export():
    """torch's exporter logs what does not concern these graphs: four lines per export that
    torchvision's ops are skipped (polyvox uses none), and a UserWarning that an axis named "frames"
    shares its constraints with "frames" (the positions and teacher inputs share the frames' Dim on
    purpose). A user's log shows neither; other warnings pass."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


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
        with torch.no_grad(), _quiet_export():
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


class _Vocoder(nn.Module):
    """:class:`~polyvox.models.neural_vocoder.Vocos` with its ``torch.istft(center=True)`` written out:
    the inverse real FFT of each frame, the synthesis window, overlap-add of the ``n_fft / hop``
    shifted blocks, division by the overlap-added squared window, and the centre trim — the same
    sums in the same order of terms, so the graph matches PyTorch to float rounding."""

    def __init__(self, model):
        super().__init__()
        head = model.head
        if head.n_fft % head.hop_length:
            raise ValueError(f"ONNX export of the vocoder needs n_fft ({head.n_fft}) to be a multiple of "
                             f"hop_length ({head.hop_length})")
        self.model, self.n_fft, self.hop = model, head.n_fft, head.hop_length
        left = (head.n_fft - head.win_length) // 2  # torch.istft centres a window shorter than n_fft
        self.register_buffer("window", F.pad(head.window, (left, head.n_fft - head.win_length - left)))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(batch, frames, n_fft) → (batch, (frames + n_fft / hop − 1) * hop): frame t added at t * hop."""
        batch, count, _ = frames.shape
        shifts = self.n_fft // self.hop
        blocks = frames.reshape(batch, count, shifts, self.hop)
        total = sum(F.pad(blocks[:, :, j], (0, 0, j, shifts - 1 - j)) for j in range(shifts))
        return total.reshape(batch, -1)

    def forward(self, mel: torch.Tensor, pitch: torch.Tensor | None = None, harmonic_real: torch.Tensor | None = None,
                harmonic_imag: torch.Tensor | None = None, noise_real: torch.Tensor | None = None,
                noise_imag: torch.Tensor | None = None) -> torch.Tensor:
        if pitch is not None:  # a harmonic source: pitch (1, 2, frames), harmonic and noise spectra
            from polyvox.models.neural_vocoder import Source

            excitation = Source(pitch, torch.complex(harmonic_real, harmonic_imag), torch.complex(noise_real, noise_imag))
            real, imaginary = self.model.head.spectrum(self.model.features(mel, pitch), excitation)
        else:
            real, imaginary = self.model.head.spectrum(self.model.features(mel))
        frames = torch.fft.irfft(torch.complex(real, imaginary), n=self.n_fft, dim=1).transpose(1, 2) * self.window
        count = frames.shape[1]
        wave = self._overlap_add(frames)
        envelope = self._overlap_add(torch.ones_like(frames[:1]) * self.window.square())
        start = self.n_fft // 2
        return (wave / envelope)[:, start:start + count * self.hop].clamp(-1.0, 1.0)


SOURCE_INPUTS = ("pitch", "harmonic_real", "harmonic_imag", "noise_real", "noise_imag")


class _Pitch(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.pitch = model.pitch

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pitch(mel)


def export_vocoder(model, target: Path) -> Path:
    """``target`` (a ``.onnx`` path) ← the trained vocoder ``model`` (a Vocos), dynamic frame count; with
    a harmonic source also its pitch tracker (``vocoder_pitch.onnx``) and ``<target>.json``."""
    from dataclasses import asdict

    target.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    mel = torch.randn(1, cfg.n_mels, 40) - 5.0
    inputs, names = (mel,), ["mel"]
    frames = torch.export.Dim("frames", min=2, max=65536)
    shapes = {"mel": {2: frames}}
    if model.harmonic:
        source = model.excitation(np.full((1, 40), 150.0))
        inputs += (source.pitch, source.harmonic.real.contiguous(), source.harmonic.imag.contiguous(),
                   source.noise.real.contiguous(), source.noise.imag.contiguous())
        names += SOURCE_INPUTS
        shapes.update({name: {2: frames} for name in SOURCE_INPUTS})
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(_Vocoder(model.eval()).eval(), inputs, str(target), dynamo=True, input_names=names,
                          output_names=["wave"], dynamic_shapes=shapes, verbose=False)
        if model.harmonic:
            torch.onnx.export(_Pitch(model).eval(), (mel,), str(target.with_name("vocoder_pitch.onnx")), dynamo=True,
                              input_names=["mel"], output_names=["octaves", "voicing"],
                              dynamic_shapes={"mel": {2: torch.export.Dim("frames", min=2, max=65536)}}, verbose=False)
    target.with_name(target.name + ".json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    return target


class OnnxVocoder:
    """``vocoder.onnx`` in onnxruntime: (n_mels, frames) log-mel → (frames * hop,) float32 waveform; a
    harmonic-source vocoder renders the F0 it is given (or its pitch graph's reading of the mel)."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.harmonic = any(i.name == "pitch" for i in self.session.get_inputs())
        self.pitch = None
        if self.harmonic:
            described = path.with_name(path.name + ".json")
            if not described.is_file() or not path.with_name("vocoder_pitch.onnx").is_file():
                raise FileNotFoundError(f"{path}: a harmonic-source vocoder graph needs {described.name} and "
                                        "vocoder_pitch.onnx beside it; export the voice again")
            self.cfg = json.loads(described.read_text())
            self.pitch = ort.InferenceSession(str(path.with_name("vocoder_pitch.onnx")), options,
                                              providers=["CPUExecutionProvider"])

    def synthesize(self, mel: np.ndarray, f0: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """As :meth:`polyvox.models.neural_vocoder.Vocos.synthesize`, in onnxruntime and NumPy."""
        mel = np.ascontiguousarray(mel[None], dtype=np.float32)
        feeds = {"mel": mel}
        if self.harmonic:
            from polyvox.signal.excitation import PITCH_CENTRE_HZ, excitation

            if f0 is None:
                octaves, voicing = self.pitch.run(None, {"mel": mel})
                f0 = np.where(voicing > 0, PITCH_CENTRE_HZ * np.exp2(octaves), 0.0)
            cfg = self.cfg
            source = excitation(np.asarray(f0, dtype=np.float64).reshape(1, -1), cfg["sample_rate"], cfg["hop_length"],
                                cfg["n_fft"], cfg["win_length"], np.random.default_rng(seed))
            feeds.update({"pitch": source.pitch, "harmonic_real": source.harmonic.real.copy(),
                          "harmonic_imag": source.harmonic.imag.copy(), "noise_real": source.noise.real.copy(),
                          "noise_imag": source.noise.imag.copy()})
        return self.session.run(None, feeds)[0][0]


class _Converter(nn.Module):
    """A conversion member's decoder for a request by name: the speaker's mean reference embedding is
    fused as :class:`~polyvox.models.encoders.ConditioningFusion` fuses a present audio embedding in
    evaluation, then the decoder renders the log-mel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, content: torch.Tensor, pitch: torch.Tensor, voiced: torch.Tensor,
                embedding: torch.Tensor) -> torch.Tensor:
        fused = self.model.fusion.out(embedding)
        mask = torch.ones_like(pitch)[:, None]
        return self.model.denormalise(self.model.decode(content, pitch, voiced, fused, mask))


def export_converter(model, target: Path) -> None:
    """``converter.onnx`` of one conversion member into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    cfg = model.eval().cfg
    frames = 40
    inputs = (torch.randn(1, cfg.content_width, frames), torch.randn(1, frames), torch.ones(1, frames),
              torch.zeros(1, cfg.channels))
    count = torch.export.Dim("frames", min=2, max=65536)
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(_Converter(model).eval(), inputs, str(target / "converter.onnx"), dynamo=True,
                          input_names=["content", "pitch", "voiced", "embedding"], output_names=["mel"],
                          dynamic_shapes={"content": {2: count}, "pitch": {1: count}, "voiced": {1: count},
                                          "embedding": None}, verbose=False)


def export_voice(voice, target: Path) -> Path:
    """Every member of ``voice`` (a :class:`Voice`) into ``target/<member>/``, its neural vocoder (if
    it has one) into ``target/vocoder.onnx``, plus ``onnx.json``."""
    for member in voice.members:
        if member.synthesizer.kind == "convert":
            export_converter(member.synthesizer.model, target / member.name)
        else:
            export_member(member.synthesizer.model, target / member.name)
    vocoder = None
    if voice.vocoder is not None:
        vocoder = export_vocoder(voice.vocoder, target / "vocoder.onnx").name
    (target / "onnx.json").write_text(json.dumps({"members": [m.name for m in voice.members], "vocoder": vocoder,
                                                  "exporter": OPSET_NOTE, "torch": torch.__version__}, indent=1) + "\n")
    return target


class OnnxAcoustic:
    """The voice's acoustic model in onnxruntime: text + speaker name → log-mel, like ``Voice.mel``."""

    def __init__(self, voice, folder: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no spin-waiting: NumPy runs between the graphs, on cores the server shares with other requests
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice = voice
        self.sessions = {}
        # each member's speaker embeddings as arrays, so that a request by name needs no PyTorch
        self.embeddings = {member.name: {name: vector[None].cpu().numpy().astype(np.float32)
                                         for name, vector in member.synthesizer.speakers.items()}
                           for member in voice.members}
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
        self.vocoder = None
        if voice.vocoder is not None:
            if not (folder / "vocoder.onnx").is_file():  # a bundle exported before the vocoder had a graph
                log.warning("%s: no vocoder.onnx; the neural vocoder runs in PyTorch", folder)
            else:
                self.vocoder = OnnxVocoder(folder / "vocoder.onnx", threads)

    def mel(self, text: str, speaker: str, length_scale: float = 1.0) -> np.ndarray:
        """(n_mels, frames) log-mel on shared durations, weighted as the voice's members are: onnxruntime
        and NumPy only, unless a member reads a teacher rendering (its alignment runs in PyTorch)."""
        if speaker not in self.voice.speakers:
            raise ValueError(f"unknown speaker {speaker!r}; known: {self.voice.speakers}")
        tokens = np.asarray([self.voice.members[0].synthesizer.token_ids(text)], dtype=np.int64)
        encoded = {}
        for member in self.voice.members:
            embedding = self.embeddings[member.name][speaker]
            encoded[member.name] = self.sessions[member.name][0].run(None, {"tokens": tokens, "embedding": embedding})
        log_durations = np.mean([outputs[1] for outputs in encoded.values()], axis=0)[0]
        durations = np.clip(np.round((np.exp(log_durations) - 1.0) * length_scale), 1, MAX_TOKEN_FRAMES).astype(np.int64)
        total = sum(m.weight for m in self.voice.members)
        positions = phone_positions_numpy(durations) if self.placed else None
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

    def synthesize(self, text: str, speaker: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
        mel = self.mel(text, speaker, length_scale)
        if self.vocoder is not None:
            return self.vocoder.synthesize(mel), self.voice.sample_rate
        return self.voice.vocode(torch.from_numpy(mel)), self.voice.sample_rate


class OnnxConverter:
    """A voice of one conversion member in onnxruntime: text + speaker name → log-mel, like ``Voice.mel``.
    The teacher (Piper's ONNX graph) runs in onnxruntime, its content features in CTranslate2 and its
    pitch in librosa, so a request by name runs no PyTorch."""

    def __init__(self, voice, folder: Path, threads: int = 1):
        import onnxruntime as ort

        if len(voice.members) != 1 or voice.members[0].synthesizer.kind != "convert":
            raise ValueError("OnnxConverter serves a voice of one conversion member")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice = voice
        self.member = voice.members[0]
        path = folder / self.member.name / "converter.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no ONNX export of member {self.member.name!r}")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.embeddings = {name: vector[None].cpu().numpy().astype(np.float32)
                           for name, vector in self.member.synthesizer.speakers.items()}
        self.vocoder = OnnxVocoder(folder / "vocoder.onnx", threads) if (folder / "vocoder.onnx").is_file() else None

    def mel(self, text: str, speaker: str, length_scale: float = 1.0) -> np.ndarray:
        return self.render(text, speaker, length_scale)[0]

    def render(self, text: str, speaker: str, length_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
        """The log-mel and the F0 contour in Hz it carries (``ConverterSynthesizer.contour``)."""
        if speaker not in self.embeddings:
            raise ValueError(f"unknown speaker {speaker!r}; known: {sorted(self.embeddings)}")
        synthesizer = self.member.synthesizer
        content, pitch, voiced = synthesizer.inputs(text, length_scale, speaker)
        mel = self.session.run(None, {"content": content[None], "pitch": pitch[None], "voiced": voiced[None],
                                      "embedding": self.embeddings[speaker]})[0][0]
        return mel, synthesizer.contour(pitch, voiced, speaker)

    def synthesize(self, text: str, speaker: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
        mel, f0 = self.render(text, speaker, length_scale)
        if self.vocoder is not None:
            return self.vocoder.synthesize(mel, f0), self.voice.sample_rate
        return self.voice.vocode(torch.from_numpy(mel), f0), self.voice.sample_rate


def onnx_runtime(voice, folder: Path, threads: int = 1):
    """The onnxruntime path of a bundle's voice for requests by name: :class:`OnnxConverter` for a voice
    of one conversion member, :class:`OnnxAcoustic` for text→mel members; None for a voice that mixes
    kinds (it is served by PyTorch)."""
    kinds = {m.synthesizer.kind for m in voice.members}
    if kinds == {"convert"} and len(voice.members) == 1:
        return OnnxConverter(voice, folder, threads)
    if kinds == {"acoustic"}:
        return OnnxAcoustic(voice, folder, threads)
    return None
