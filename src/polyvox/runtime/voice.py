"""A voice: one or more trained members and a vocoder, saved as one self-contained folder, with the
one synthesis API ``synthesize(text, speaker=None, reference_audio=None, image=None)``.

A single member is the trivial voice (one member, weight 1). Folder layout (``models/candidate/``,
what ``evaluate`` scores and ``promote`` bundles)::

    voice.json        format, mode, members (name + weight), vocoder, how the weights were fitted
    members/<name>/   model.json, the chosen checkpoint (as best.pt) and speakers.pt of each member
    vocoder/          best.pt + vocoder.json of the neural vocoder (absent: Griffin-Lim)
    centroids.npz     rerank only: speaker → resemblyzer centroid of its real training takes

Modes:
- ``weighted``: *shared durations* — the mean of the members' predicted log(1 + frames) per token —
  then every member decodes on those durations and the log-mels are averaged with the weights.
- ``rerank``: every member synthesises with its own durations; the utterance keeps the candidate
  with the lowest ``ASR CER − similarity_weight · speaker similarity`` (similarity to the
  reference audio's embedding, else to the named speaker's centroid, else left out). The ASR is
  the voice's judge (:mod:`polyvox.judges`), recorded in ``voice.json``; a rerank voice saved
  before judges existed has none there and keeps pocketsphinx, the ASR it was fitted with.

Everything loads through safe loaders (``torch.load(weights_only=True)``, ``np.load(allow_pickle=False)``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from polyvox.fingerprint import VOICE_FILE
from polyvox.models.meta import VocoderMeta
from polyvox.models.meta import MemberMeta, member_kind
from polyvox.runtime import VoiceError
from polyvox.fileio import replace_folder
from polyvox.judges import POCKETSPHINX, Judge
from polyvox.models.acoustic import AcousticModel
from polyvox.runtime.synthesizer import Synthesizer


def load_member(folder: Path):
    """The synthesiser of a trained member folder, by the kind its model.json names."""
    if member_kind(folder) == "convert":
        from polyvox.runtime.converter import ConverterSynthesizer

        return ConverterSynthesizer(folder)
    return Synthesizer(folder)

# The range of length_scale a voice accepts: Piper's voices are used from ~0.5 (fast) to ~2 (slow);
# beyond this the durations hit their one-frame floor or MAX_TOKEN_FRAMES ceiling.
LENGTH_SCALE_RANGE = (0.25, 4.0)


def check_length_scale(length_scale: float) -> None:
    low, high = LENGTH_SCALE_RANGE
    if not low <= length_scale <= high:
        raise ValueError(f"length_scale {length_scale:g} is outside {low:g}..{high:g} (1 is the voice's own pace, "
                         "larger is slower)")

FORMAT = 1
Mode = Literal["weighted", "rerank"]


@dataclass
class Member:
    name: str
    weight: float
    synthesizer: Synthesizer
    source: Path  # the member folder it was loaded from (copied on save)


@dataclass
class Voice:
    members: list[Member]
    mode: Mode = "weighted"
    vocoder_folder: Path | None = None
    similarity_weight: float = 0.5
    centroids: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # how it was built (fit, comparison); saved in voice.json
    judge: Judge | None = None  # rerank: the ASR that scores the members (None: pocketsphinx)

    def __post_init__(self) -> None:
        if not self.members:
            raise VoiceError("a voice needs at least one member")
        first = self.members[0].synthesizer
        acoustic = [m for m in self.members if m.synthesizer.kind == "acoustic"]
        for member in acoustic[1:]:
            s, one = member.synthesizer, acoustic[0].synthesizer
            if s.vocab.symbols != one.vocab.symbols or s.text_frontend != one.text_frontend:
                raise VoiceError(f"member {member.name!r} uses another phoneme set or text front-end than "
                                 f"{acoustic[0].name!r}; members must be trained on the same features")
        for member in self.members[1:]:
            if member.synthesizer.audio != first.audio:
                raise VoiceError(f"member {member.name!r} was trained on other audio settings than {self.members[0].name!r}")
        if self.mode == "weighted" and len(self.members) > 1 and len(acoustic) < len(self.members):
            raise VoiceError("a weighted voice averages its members' mels on shared durations, which only text→mel "
                             f"members have; members {[m.name for m in self.members if m not in acoustic]} are "
                             "conversion members: use ensemble.mode: rerank to combine kinds")
        weights = np.array([m.weight for m in self.members], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise VoiceError(f"member weights must be non-negative and not all zero, got {weights.tolist()}")
        self.vocoder = None
        if self.vocoder_folder is not None:
            from polyvox.models.meta import VocoderMeta, load_vocoder
            from polyvox.signal.mel import mel_differences

            differ = mel_differences(first.audio, VocoderMeta.read(Path(self.vocoder_folder)).mel())
            if differ:
                raise VoiceError(f"vocoder {self.vocoder_folder} was trained on another mel than the members: "
                                 f"{', '.join(differ)}")
            self.vocoder = load_vocoder(Path(self.vocoder_folder), "cpu")
        self._scorer = None

    # ---- construction and storage ---------------------------------------------------------------

    @classmethod
    def from_members(cls, folders: dict[str, Path], weights: list[float] | None = None, mode: Mode = "weighted",
                     vocoder: Path | None = None, **kwargs) -> "Voice":
        weights = weights or [1.0 / len(folders)] * len(folders)
        members = []
        for (name, folder), weight in zip(folders.items(), weights, strict=True):
            if not (folder / MemberMeta.FILE).is_file():
                raise VoiceError(f"{folder}: no model.json — train member {name!r} first (polyvox train --member {name})")
            members.append(Member(name, float(weight), load_member(folder), folder))
        return cls(members, mode=mode, vocoder_folder=vocoder, **kwargs)

    @classmethod
    def load(cls, folder: Path) -> "Voice":
        """A voice folder (``voice.json``), or a single trained member's folder (``model.json``)."""
        folder = Path(folder)
        if (folder / MemberMeta.FILE).is_file() and not (folder / VOICE_FILE).is_file():
            return cls.from_members({folder.name: folder})
        path = folder / VOICE_FILE
        if not path.is_file():
            raise VoiceError(f"{folder}: neither voice.json nor model.json — not a voice or member folder")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise VoiceError(f"{path}: format {meta.get('format')!r}, this polyvox reads format {FORMAT}")
        centroids = {}
        if (folder / "centroids.npz").is_file():
            with np.load(folder / "centroids.npz", allow_pickle=False) as data:
                centroids = {name: data[name] for name in data.files}
        try:
            judge = Judge.from_dict(meta["judge"]) if meta.get("judge") else None
        except ValueError as exc:
            raise VoiceError(f"{path}: {exc}") from None
        return cls.from_members({m["name"]: folder / "members" / m["name"] for m in meta["members"]},
                                [m["weight"] for m in meta["members"]], mode=meta["mode"],
                                vocoder=folder / "vocoder" if meta.get("vocoder") else None,
                                similarity_weight=meta.get("similarity_weight", 0.5), centroids=centroids,
                                info=meta.get("info", {}), judge=judge)

    def save(self, folder: Path) -> None:
        """Write the voice as one self-contained folder, atomically (built aside, then renamed into place)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the voice is an ordinary output
        try:
            for member in self.members:
                target = staging / "members" / member.name
                target.mkdir(parents=True)
                # weights only: no optimiser state, so the size on disk is the model's
                torch.save({"model": member.synthesizer.model.state_dict()}, target / "best.pt")
                for name in (MemberMeta.FILE, "speakers.pt"):
                    if (member.source / name).is_file():
                        shutil.copy2(member.source / name, target / name)
            if self.vocoder_folder is not None:
                (staging / "vocoder").mkdir()
                torch.save({"model": self.vocoder.state_dict()}, staging / "vocoder" / "best.pt")
                shutil.copy2(Path(self.vocoder_folder) / VocoderMeta.FILE, staging / "vocoder" / VocoderMeta.FILE)
            if self.centroids:
                np.savez(staging / "centroids.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in self.centroids.items()})
            (staging / VOICE_FILE).write_text(json.dumps(self.describe(), indent=1) + "\n", encoding="utf-8")
            replace_folder(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def describe(self) -> dict:
        described = {"format": FORMAT, "mode": self.mode, "kind": "ensemble" if len(self.members) > 1 else "member",
                     "members": [{"name": m.name, "weight": m.weight, "conditioning": m.synthesizer.conditioning,
                                  "kind": m.synthesizer.kind, **m.synthesizer.needs()} for m in self.members],
                     "vocoder": "vocoder" if self.vocoder_folder is not None else None,
                     "similarity_weight": self.similarity_weight, "info": self.info}
        if self.mode == "rerank" and self.judge is not None:  # the only mode that listens to itself
            described["judge"] = self.judge.to_dict()
        return described

    # ---- facts ----------------------------------------------------------------------------------

    @property
    def audio(self):
        return self.members[0].synthesizer.audio

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    @property
    def speakers(self) -> list[str]:
        """Speakers every member knows by name."""
        names = set(self.members[0].synthesizer.speakers)
        for member in self.members[1:]:
            names &= set(member.synthesizer.speakers)
        return sorted(names)

    @property
    def takes_images(self) -> bool:
        return any(m.synthesizer.conditioning == "audio+image" for m in self.members)

    def parameter_count(self) -> int:
        count = sum(sum(p.numel() for p in m.synthesizer.model.parameters()) for m in self.members)
        if self.vocoder is not None:
            count += sum(p.numel() for p in self.vocoder.parameters())
        return count

    # ---- synthesis ------------------------------------------------------------------------------

    def _encoded(self, text: str, speaker, reference_audio, image) -> list[tuple[Member, torch.Tensor, torch.Tensor]]:
        """Each member that can take this conditioning, with its conditioned token states and mask."""
        if speaker is not None and speaker not in self.speakers:
            raise ValueError(f"unknown speaker {speaker!r}; known: {self.speakers}")
        acoustic = [m for m in self.members if m.synthesizer.kind == "acoustic"]
        if not acoustic:
            return []
        tokens = acoustic[0].synthesizer.tokens(text)
        encoded = []
        for member in acoustic:
            s = member.synthesizer
            member_image = image if s.conditioning == "audio+image" else None
            if image is not None and member_image is None and speaker is None and reference_audio is None:
                continue  # an audio-only member has nothing to go on when the image is all there is
            hidden, mask = s.model.encode(tokens, **s.conditioning_inputs(speaker, reference_audio, member_image))
            encoded.append((member, hidden, mask))
        if not encoded and len(acoustic) == len(self.members):
            raise ValueError("no member of this voice takes image conditioning; give a speaker or reference audio")
        return encoded

    @torch.no_grad()
    def member_mels(self, text: str, speaker: str | None = None, reference_audio=None, image=None,
                    shared_durations: bool = True, length_scale: float = 1.0,
                    contours: dict | None = None) -> dict[str, torch.Tensor]:
        """Each participating member's log-mel (n_mels, frames): on the shared durations (all the same
        length), or each on its own predicted durations; ``length_scale`` stretches every duration
        (Piper's knob: 1.2 speaks 20 % slower). ``contours``, when given, receives the F0 (frames,) in Hz
        of each member that knows the contour its mel carries (a conversion member for a named speaker)."""
        check_length_scale(length_scale)
        encoded = self._encoded(text, speaker, reference_audio, image)
        mels = {}
        for member in self.members:  # a conversion member takes its timing from the teacher's rendering
            if member.synthesizer.kind == "convert":
                mels[member.name], contour = member.synthesizer.render(text, speaker, reference_audio, image,
                                                                       length_scale)
                if contours is not None and contour is not None:
                    contours[member.name] = contour
        if not encoded:
            return mels
        tokens = encoded[0][0].synthesizer.tokens(text)
        if shared_durations:
            mask = encoded[0][2]
            log_durations = torch.stack([m.synthesizer.model.log_durations(h, k) for m, h, k in encoded]).mean(dim=0)
            durations = AcousticModel.durations(log_durations, mask, length_scale)
        for member, hidden, token_mask in encoded:
            model = member.synthesizer.model
            own = durations if shared_durations else model.durations(model.log_durations(hidden, token_mask), token_mask,
                                                                     length_scale)
            teacher = member.synthesizer.teacher_track(text, tokens)
            mel, lengths = model.decode(hidden, token_mask, own, teacher)
            mels[member.name] = mel[0, :, : int(lengths[0])]
        return mels

    def _weights(self, names) -> dict[str, float]:
        chosen = {m.name: m.weight for m in self.members if m.name in names}
        total = sum(chosen.values())
        if total <= 0:
            raise ValueError(f"members {sorted(names)} all have weight 0 in this voice")
        return {name: weight / total for name, weight in chosen.items()}

    @torch.no_grad()
    def mel(self, text: str, speaker: str | None = None, reference_audio=None, image=None,
            length_scale: float = 1.0) -> torch.Tensor:
        """The weighted average of the members' log-mels on shared durations, (n_mels, frames)."""
        return self.rendered(text, speaker, reference_audio, image, length_scale)[0]

    @torch.no_grad()
    def rendered(self, text: str, speaker: str | None = None, reference_audio=None, image=None,
                 length_scale: float = 1.0) -> tuple[torch.Tensor, np.ndarray | None]:
        """:meth:`mel` and its F0 contour in Hz when one member with weight renders it alone and knows
        the contour (:meth:`member_mels`), else None (a harmonic vocoder then reads the mel's pitch)."""
        contours: dict[str, np.ndarray] = {}
        mels = self.member_mels(text, speaker, reference_audio, image, shared_durations=True,
                                length_scale=length_scale, contours=contours)
        weights = self._weights(mels)
        weighted = [name for name, weight in weights.items() if weight > 0]
        contour = contours.get(weighted[0]) if len(weighted) == 1 else None
        return sum(weights[name] * mel for name, mel in mels.items()), contour

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, f0: np.ndarray | None = None) -> np.ndarray:
        """(n_mels, frames) log-mel → waveform (float32), through the neural vocoder when the voice has one.
        ``f0`` ((frames,) Hz, 0 where unvoiced): the contour a harmonic-source vocoder renders; None, or a
        vocoder without a source: the pitch is read from the mel."""
        if self.vocoder is not None:
            wave = self.vocoder.synthesize(mel, f0 if self.vocoder.harmonic else None)
        else:
            from polyvox.signal.griffin_lim import griffin_lim

            wave = griffin_lim(mel.cpu(), self.audio)
        return wave.reshape(-1).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def synthesize(self, text: str, speaker: str | None = None, reference_audio=None,
                   image=None, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
        """Waveform (float32, mono) and its sample rate; arguments as :meth:`Synthesizer.synthesize`,
        ``length_scale`` as :meth:`member_mels`."""
        if not text.strip():
            raise ValueError("the text is empty")
        if self.mode == "rerank" and len(self.members) > 1:
            return self.rerank(text, speaker, reference_audio, image, length_scale)[0], self.sample_rate
        return self.vocode(*self.rendered(text, speaker, reference_audio, image, length_scale)), self.sample_rate

    def synthesize_wav(self, text: str, path, speaker: str | None = None, reference_audio=None, image=None,
                       length_scale: float = 1.0) -> float:
        """:meth:`synthesize` into a 16-bit WAV file at ``path`` (written whole or not at all: a
        temporary file renamed), or into a binary file object; returns the seconds of audio."""
        import soundfile as sf

        from polyvox.fileio import atomic_path

        wave, rate = self.synthesize(text, speaker, reference_audio, image, length_scale)
        if hasattr(path, "write"):
            sf.write(path, wave, rate, format="WAV", subtype="PCM_16")
        else:
            with atomic_path(Path(path)) as tmp:
                sf.write(tmp, wave, rate, format="WAV", subtype="PCM_16")
        return len(wave) / rate

    def _target_embedding(self, speaker, reference_audio) -> np.ndarray | None:
        scorer = self._rerank_scorer()
        if reference_audio is not None:
            import soundfile as sf

            if isinstance(reference_audio, (str, Path)):
                signal, rate = sf.read(str(reference_audio), dtype="float32", always_2d=True)
                return scorer.embed(signal.mean(axis=1), rate)
            return scorer.embed(*reference_audio)
        if speaker is not None and speaker in self.centroids:
            return self.centroids[speaker]
        return None

    def _rerank_scorer(self):
        if self._scorer is None:
            from polyvox.judges.speaker import SpeakerEncoder

            self._scorer = SpeakerEncoder()
        return self._scorer

    def rerank(self, text: str, speaker=None, reference_audio=None, image=None,
               length_scale: float = 1.0) -> tuple[np.ndarray, list[dict]]:
        """Every member's synthesis scored; the best one and every candidate's scores."""
        from polyvox.judges.scores import asr_scores
        from polyvox.judges.speaker import SpeakerEncoder

        contours: dict[str, np.ndarray] = {}
        mels = self.member_mels(text, speaker, reference_audio, image, shared_durations=False,
                                length_scale=length_scale, contours=contours)
        target = self._target_embedding(speaker, reference_audio)
        judge = self.judge or POCKETSPHINX
        scored = []
        for name, mel in mels.items():
            wave = self.vocode(mel, contours.get(name))
            cer = asr_scores(wave, self.sample_rate, text, judge).cer
            similarity = (SpeakerEncoder.similarity(self._rerank_scorer().embed(wave, self.sample_rate), target)
                          if target is not None else None)
            score = cer - self.similarity_weight * (similarity or 0.0)
            scored.append({"member": name, "cer": cer, "similarity": similarity, "score": score, "wave": wave})
        best = min(scored, key=lambda s: s["score"])
        return best["wave"], [{k: v for k, v in s.items() if k != "wave"} for s in scored]
