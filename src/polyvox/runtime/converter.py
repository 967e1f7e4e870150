"""Synthesis by a conversion member (``kind: convert``): text → the teacher voice's rendering (Piper
joe by default, ``length_scale`` honoured) → content features + the teacher's pitch contour moved into
the speaker's range → the member's decoder → log-mel (then the voice's vocoder).

The pitch contour is the teacher's own log-F0 z-scored over its voiced frames: the decoder was trained
on each take's log-F0 z-scored with its speaker's statistics, so the teacher's intonation comes out at
the speaker's register and range. Each step runs the function training ran on the takes (pyin on
the mel grid, :mod:`polyvox.signal.pitch`; the content encoder, :mod:`polyvox.frontends.content`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from polyvox.frontends.content import ContentSettings, content_model, encode, on_grid
from polyvox.frontends.teacher import TeacherSettings, teacher_audio
from polyvox.models.converter import ConverterModel
from polyvox.models.meta import ConverterMeta
from polyvox.runtime.synthesizer import ConditionedMember
from polyvox.signal.pitch import f0, normalised_log_f0, own_statistics
from polyvox.text.normalize import normalize_text
from polyvox.text.scripts import check_readable


class ConverterSynthesizer(ConditionedMember):
    """A trained conversion member's folder (``model.json`` of kind convert, ``best.pt`` or ``last.pt``,
    ``speakers.pt``), loaded with safe loaders; refuses at once, naming the package, when the teacher
    voice or the content model it needs is not installed here."""

    kind = "convert"

    def __init__(self, folder: Path, checkpoint: str = "best", device: str = "cpu"):
        from polyvox.engines import resolve_voices

        meta = ConverterMeta.read(folder)
        self.meta = meta
        self.audio = meta.audio
        self.text_frontend = meta.text.model_dump()
        self.image_size = meta.image_size
        self.conditioning = meta.conditioning
        self.content = ContentSettings.from_dict(meta.content)
        self.teacher = TeacherSettings.from_dict(meta.teacher)
        resolve_voices([self.teacher.voice])  # installed here, or an error naming the package
        model = content_model(self.content.model)
        if model.sha256 != meta.content_model.get("sha256"):
            raise ValueError(f"{folder}: trained on content model {meta.content_model}, but this polyvox's "
                             f"{model.name} is sha256 {model.sha256}")
        model.folder()  # installed and intact here, or an error naming the package
        cfg = meta.model
        self._load_weights(folder, checkpoint, device, ConverterModel(cfg, torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels)))
        self.timings: dict[str, float] = {}  # seconds of the last mel(), per component

    def needs(self) -> dict:
        """What synthesis needs installed besides polyvox: the teacher voice and the content model (by
        package, version and sha256), as the bundle records them."""
        from polyvox.engines import CATALOG

        voice = CATALOG[self.teacher.voice]
        return {"teacher": self.teacher.voice, "teacher_package": voice.package,
                "content_model": dict(self.meta.content_model)}

    def tokens(self, text: str) -> np.ndarray:
        """(1, symbols): the phonemes the teacher will say for ``text`` (espeak-ng IPA code points; a
        Piper teacher's input ids), to bound a request before it renders; a ValueError if there is nothing
        to say, an UnreadableText for a script the voice's language does not use."""
        from polyvox.text.phonemes import espeak_ipa

        check_readable(text, self.text_frontend["language"])
        phonemes = [symbol for symbol in espeak_ipa(normalize_text(text), self.text_frontend["language"])
                    if not symbol.isspace()]
        if not phonemes:
            raise ValueError(f"nothing to say in {text!r}")
        return np.asarray([[ord(symbol) for symbol in phonemes]], dtype=np.int64)

    def tempo(self, speaker: str | None) -> float:
        """The teacher's length_scale at ``speaker``'s own pace (``model.json``'s ``tempo``); 1 (the
        teacher's pace) for a reference or an image, or a member trained before tempo was measured."""
        if speaker is None or not self.meta.tempo:
            return 1.0
        return float(self.meta.tempo.get(speaker, 1.0))

    def inputs(self, text: str, length_scale: float = 1.0,
               speaker: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The decoder's inputs for ``text`` spoken at ``speaker``'s pace × ``length_scale``: content
        (width, frames), pitch (frames,), voiced (frames,)."""
        check_readable(text, self.text_frontend["language"])
        spoken = normalize_text(text)
        if not spoken.strip():
            raise ValueError(f"nothing to say in {text!r}")
        clock = time.perf_counter()
        audio = teacher_audio(spoken, self.teacher, repr(text[:60]), length_scale * self.tempo(speaker))
        frames = 1 + audio.size // self.audio.hop_length
        teacher_done = time.perf_counter()
        track = f0(audio, self.audio)[:frames]
        pitch, voiced = normalised_log_f0(track, *own_statistics(track))
        pitch_done = time.perf_counter()
        content = on_grid(encode(audio, self.audio.sample_rate, self.content), frames, self.audio)
        self.timings = {"teacher": teacher_done - clock, "pitch": pitch_done - teacher_done,
                        "content": time.perf_counter() - pitch_done}
        return content, pitch, voiced

    @torch.no_grad()
    def mel(self, text: str, speaker: str | None = None, reference_audio=None, image=None,
            length_scale: float = 1.0) -> torch.Tensor:
        """The member's log-mel (n_mels, frames) for ``text`` under the given conditioning."""
        return self.render(text, speaker, reference_audio, image, length_scale)[0]

    @torch.no_grad()
    def render(self, text: str, speaker: str | None = None, reference_audio=None, image=None,
               length_scale: float = 1.0) -> tuple[torch.Tensor, np.ndarray | None]:
        """:meth:`mel` and the F0 contour (frames,) in Hz it was rendered at (:meth:`contour`)."""
        named = speaker if reference_audio is None and image is None else None
        content, pitch, voiced = self.inputs(text, length_scale, named)
        clock = time.perf_counter()
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None].to(self.device)  # noqa: E731
        mel = self.model.infer(as_tensor(content), as_tensor(pitch), as_tensor(voiced),
                               **self.conditioning_inputs(speaker, reference_audio, image))
        self.timings["decoder"] = time.perf_counter() - clock
        return mel[0], self.contour(pitch, voiced, named)

    def contour(self, pitch: np.ndarray, voiced: np.ndarray, speaker: str | None) -> np.ndarray | None:
        """What a harmonic vocoder is handed: where ``model.json``'s ``vocoder_pitch`` is ``given``, the
        decoder's pitch input in Hz (0 where unvoiced) at ``speaker``'s register, the contour its mel
        carries. None — the vocoder then tracks the pitch in the mel — where it is ``tracked`` (the
        default) or the register is unknown (a reference or an image instead of a named speaker, or a
        member trained before the statistics were kept)."""
        if self.meta.vocoder_pitch != "given":
            return None
        if speaker is None or not self.meta.pitch or speaker not in self.meta.pitch:
            return None
        mean, std = self.meta.pitch[speaker]
        return np.where(voiced > 0, np.exp(mean + std * pitch.astype(np.float64)), 0.0).astype(np.float32)
