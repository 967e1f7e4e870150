"""Teacher voices for the demo corpus: offline synthesisers installed from Debian.

The catalogue records facts about each voice (engine, gender, accent); ``params.yaml`` chooses
which of them the demo corpus uses (``demo.voices``). flite and festival voices are preferred by
default because an offline ASR understands them (WER 14-22 % measured here); the espeak-ng
formant voices are available but hard for the ASR (WER about 86 %).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from polyvox.fileio import atomic_path

Engine = Literal["flite", "festival", "espeak-ng"]

# Which Debian package provides each engine's program, for error messages.
ENGINE_PACKAGES: dict[Engine, str] = {"flite": "flite", "festival": "festival", "espeak-ng": "espeak-ng"}
ENGINE_PROGRAMS: dict[Engine, str] = {"flite": "flite", "festival": "text2wave", "espeak-ng": "espeak-ng"}


@dataclass(frozen=True)
class TeacherVoice:
    name: str  # the speaker name in the corpus
    engine: Engine
    voice: str  # the engine's own voice name
    gender: Literal["female", "male"]
    accent: Literal["us", "scottish", "british"]
    package: str  # Debian package that ships the voice data

    def command(self, text_file: Path, out_wav: Path) -> list[str]:
        if self.engine == "flite":
            return ["flite", "-voice", self.voice, "-f", str(text_file), "-o", str(out_wav)]
        if self.engine == "festival":
            return ["text2wave", "-eval", f"(voice_{self.voice})", str(text_file), "-o", str(out_wav)]
        return ["espeak-ng", "-v", self.voice, "-f", str(text_file), "-w", str(out_wav)]


CATALOG: dict[str, TeacherVoice] = {
    v.name: v
    for v in (
        TeacherVoice("flite_awb", "flite", "awb", "male", "scottish", "flite"),
        TeacherVoice("flite_rms", "flite", "rms", "male", "us", "flite"),
        TeacherVoice("flite_slt", "flite", "slt", "female", "us", "flite"),
        TeacherVoice("flite_kal16", "flite", "kal16", "male", "us", "flite"),
        TeacherVoice("festival_ked", "festival", "ked_diphone", "male", "us", "festvox-kdlpc16k"),
        TeacherVoice("festival_kal", "festival", "kal_diphone", "male", "us", "festvox-kallpc16k"),
        TeacherVoice("festival_slt_hts", "festival", "cmu_us_slt_arctic_hts", "female", "us", "festvox-us-slt-hts"),
        TeacherVoice("espeak_us_female", "espeak-ng", "en-us+f3", "female", "us", "espeak-ng"),
        TeacherVoice("espeak_gb_male", "espeak-ng", "en-gb+m3", "male", "british", "espeak-ng"),
    )
}


class SynthesisError(RuntimeError):
    pass


def resolve_voices(names: list[str]) -> list[TeacherVoice]:
    unknown = [name for name in names if name not in CATALOG]
    if unknown:
        raise SynthesisError(f"demo.voices: unknown voice(s) {unknown}; known voices: {sorted(CATALOG)}")
    voices = [CATALOG[name] for name in names]
    for engine in sorted({v.engine for v in voices}):
        if shutil.which(ENGINE_PROGRAMS[engine]) is None:
            raise SynthesisError(
                f"{ENGINE_PROGRAMS[engine]} not found: install the Debian package {ENGINE_PACKAGES[engine]} "
                f"(`make demo` installs it), or drop the {engine} voices from demo.voices"
            )
    return voices


def synthesize(voice: TeacherVoice, text: str, out_wav: Path, label: str) -> None:
    """Speak ``text`` with ``voice`` into ``out_wav`` (atomically). ``label`` names the prompt in errors."""
    with tempfile.TemporaryDirectory(prefix="polyvox-tts-") as scratch, atomic_path(out_wav) as tmp_wav:
        text_file = Path(scratch) / "prompt.txt"
        text_file.write_text(text + "\n", encoding="utf-8")
        done = subprocess.run(voice.command(text_file, tmp_wav), capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not tmp_wav.is_file() or tmp_wav.stat().st_size <= 44:
            raise SynthesisError(
                f"{voice.name} ({voice.engine} {voice.voice}) failed on {label} with exit code {done.returncode}: "
                f"{done.stderr.strip()[-400:] or 'no output'} (is the Debian package {voice.package} installed?)"
            )
