"""One inference API: ``synthesize(text, speaker=None, reference_audio=None, image=None)``.

A :class:`Synthesizer` loads a trained member folder (``models/<member>/``: ``model.json``,
``best.pt`` or ``last.pt``, ``speakers.pt``) with safe loaders only, and runs the same text
front-end (normalisation + phonemes) that ``clean`` used for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from polyvox.fileio import chosen_checkpoint
from polyvox.models.acoustic import AcousticModel
from polyvox.models.meta import MemberMeta
from polyvox.models.symbols import Vocabulary
from polyvox.signal.griffin_lim import griffin_lim
from polyvox.text.normalize import normalize_text
from polyvox.text.phonemes import phonemize
from polyvox.text.scripts import check_readable


class ConditionedMember:
    """What every kind of member does with its conditioning: a speaker's name, reference audio or an
    image → the keyword arguments of its model's ``condition``. Needs ``audio``, ``device``,
    ``speakers``, ``conditioning`` and ``image_size`` (:meth:`_load_weights` sets the first two)."""

    def _load_weights(self, folder: Path, checkpoint: str, device: str, model: torch.nn.Module) -> None:
        """``model`` with the member's weights (``<checkpoint>.pt``, else best-or-last) on ``device``, in eval
        mode, as ``self.model``; the speakers' mean embeddings (``speakers.pt``) as ``self.speakers``."""
        path = folder / f"{checkpoint}.pt"
        if not path.is_file():
            path = chosen_checkpoint(folder) or path
        self.checkpoint_path = path
        self.device = torch.device(device)
        self.model = model.to(device)
        self.model.load_state_dict(torch.load(path, map_location=device, weights_only=True)["model"])
        self.model.eval()
        speakers_path = folder / "speakers.pt"
        self.speakers: dict[str, torch.Tensor] = (
            torch.load(speakers_path, map_location=device, weights_only=True) if speakers_path.is_file() else {})

    def _reference(self, reference_audio) -> tuple[torch.Tensor, torch.Tensor]:
        import librosa

        from polyvox.signal.mel import log_mel

        if isinstance(reference_audio, (str, Path)):
            signal, rate = sf.read(str(reference_audio), dtype="float32", always_2d=True)
            signal = signal.mean(axis=1)
        else:
            signal, rate = reference_audio
        if rate != self.audio.sample_rate:
            signal = librosa.resample(np.asarray(signal, dtype=np.float32), orig_sr=rate, target_sr=self.audio.sample_rate)
        mel = log_mel(torch.tensor(np.asarray(signal, dtype=np.float32)), self.audio)
        return mel[None].to(self.device), torch.tensor([mel.shape[1]], device=self.device)

    def _image(self, image) -> torch.Tensor:
        from polyvox.frontends.image import image_tensor

        array = image_tensor(Path(image), self.image_size) if isinstance(image, (str, Path)) else np.asarray(image)
        return torch.tensor(array, dtype=torch.float32)[None].to(self.device)

    def conditioning_inputs(self, speaker: str | None = None, reference_audio=None, image=None) -> dict:
        """The keyword arguments of :meth:`AcousticModel.encode` for the given conditioning."""
        embedding = None
        if speaker is not None:
            if speaker not in self.speakers:
                raise ValueError(f"unknown speaker {speaker!r}; known: {sorted(self.speakers)}")
            embedding = self.speakers[speaker][None].to(self.device)
        if image is not None and self.conditioning != "audio+image":
            raise ValueError(f"this member was trained with {self.conditioning} conditioning; it takes no image")
        reference, lengths = self._reference(reference_audio) if reference_audio is not None else (None, None)
        return {"reference_mel": reference, "reference_lengths": lengths, "audio_embedding": embedding,
                "image": self._image(image) if image is not None else None}


class Synthesizer(ConditionedMember):
    """``vocoder``: None for Griffin-Lim, or a trained neural vocoder's folder (``polyvox train-vocoder``)."""

    kind = "acoustic"

    def needs(self) -> dict:
        """What synthesis needs installed besides polyvox (a teacher engine, for teacher input)."""
        return {"teacher": self.teacher.voice} if self.teacher is not None else {}

    def __init__(self, folder: Path, checkpoint: str = "best", device: str = "cpu", vocoder: Path | str | None = None):
        meta = MemberMeta.read(folder)
        self.audio = meta.audio
        self.vocab = Vocabulary(meta.symbols)
        self.text_frontend = meta.text.model_dump()
        self.image_size = meta.image_size
        self.conditioning = meta.conditioning
        self.teacher = None  # the teacher voice that reads each text for a model with teacher input
        if meta.teacher:
            from polyvox.engines import resolve_voices
            from polyvox.frontends.teacher import TeacherSettings

            self.teacher = TeacherSettings.from_dict(meta.teacher)
            resolve_voices([self.teacher.voice])  # its engine is installed here, or an error that names the package
        cfg = meta.model
        self._load_weights(folder, checkpoint, device, AcousticModel(cfg, torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels)))
        self.vocoder = None
        if vocoder is not None:
            from polyvox.models.meta import VocoderMeta, load_vocoder
            from polyvox.signal.mel import mel_differences

            differ = mel_differences(self.audio, VocoderMeta.read(Path(vocoder)).mel())
            if differ:
                raise ValueError(f"vocoder {vocoder} was trained on another mel than the model in {folder}: "
                                 f"{', '.join(differ)}")
            self.vocoder = load_vocoder(Path(vocoder), device)

    def token_ids(self, text: str) -> list[int]:
        """The text front-end that ``clean`` ran for training: normalised text → phonemes → symbol ids."""
        check_readable(text, self.text_frontend["language"])
        phones, _ = phonemize([normalize_text(text)], self.text_frontend["language"], self.text_frontend["phonemizer"])
        ids = self.vocab.encode(phones[0])
        if not ids:
            raise ValueError(f"nothing to say in {text!r}")
        return ids

    def tokens(self, text: str) -> torch.Tensor:
        return torch.tensor([self.token_ids(text)], device=self.device)

    def teacher_mel(self, text: str) -> torch.Tensor | None:
        """(1, n_mels, frames): the teacher voice reading ``text`` as the features stage rendered it for
        training; None for a model without teacher input."""
        if self.teacher is None:
            return None
        from polyvox.frontends.teacher import teacher_mel

        return torch.from_numpy(teacher_mel(normalize_text(text), self.teacher, repr(text[:60])))[None].to(self.device)

    @torch.no_grad()
    def teacher_track(self, text: str, tokens: torch.Tensor):
        """What :meth:`AcousticModel.decode` takes as ``teacher`` for this text (None without teacher input)."""
        teacher = self.teacher_mel(text)
        return None if teacher is None else self.model.teacher_track(tokens, teacher)

    @torch.no_grad()
    def mel(self, text: str, speaker: str | None = None, reference_audio=None, image=None) -> torch.Tensor:
        """The acoustic model's log-mel (n_mels, frames) for ``text`` under the given conditioning."""
        mel, lengths = self.model.infer(self.tokens(text), **self.conditioning_inputs(speaker, reference_audio, image),
                                        teacher_mel=self.teacher_mel(text))
        return mel[0, :, : int(lengths[0])]

    @torch.no_grad()
    def synthesize(self, text: str, speaker: str | None = None, reference_audio=None, image=None) -> tuple[np.ndarray, int]:
        """Waveform (float32, mono) and its sample rate. ``reference_audio``: a path or (samples, rate);
        ``image``: a path or a (3, size, size) array in [0, 1]; ``speaker``: a training speaker's name."""
        mel = self.mel(text, speaker=speaker, reference_audio=reference_audio, image=image)
        return self.vocode(mel), self.audio.sample_rate

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> np.ndarray:
        """(n_mels, frames) log-mel → waveform, through the neural vocoder when one is loaded."""
        wave = self.vocoder.synthesize(mel) if self.vocoder is not None else griffin_lim(mel.cpu(), self.audio)
        return wave.reshape(-1).cpu().numpy().astype(np.float32)


def synthesize(text: str, speaker: str | None = None, reference_audio=None, image=None,
               model: Path | str = "models/base", vocoder: Path | str | None = None) -> tuple[np.ndarray, int]:
    """Convenience wrapper: load ``model`` (a trained member folder) and synthesise once."""
    return Synthesizer(Path(model), vocoder=vocoder).synthesize(text, speaker=speaker, reference_audio=reference_audio,
                                                                image=image)
