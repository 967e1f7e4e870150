"""Build the demo corpus: teacher voices reading the project's own prompts, plus avatars.

The result is an ordinary manifest-format corpus (``manifest.csv`` + ``audio/`` + ``images/``
+ ``speakers.csv``) that ``prepare`` ingests through the same reader as any user corpus. It is
deterministic (same seed and params, same bytes) and resumable: audio already synthesised for
the same (voice, text) is kept, so an interrupted build picks up where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from polyvox.config import DemoSection
from polyvox.corpus.demo.avatars import draw_avatar, measure_voice
from polyvox.engines import CatalogVoice, render_identity, resolve_voices, synthesize
from polyvox.fileio import atomic_write_bytes, atomic_write_text
from polyvox.progress import track

log = logging.getLogger(__name__)

# Bump when the way audio is produced changes, so cached audio is redone.
SYNTH_VERSION = "1"
# How many of a speaker's utterances are measured to draw its avatar.
PROFILE_UTTERANCES = 12


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts() -> list[Prompt]:
    text = resources.files("polyvox.corpus.demo").joinpath("prompts.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    return [Prompt(f"p{number:04d}", line) for number, line in enumerate(lines, start=1)]


def choose_prompts(prompts: list[Prompt], speaker: str, count: int, seed: int) -> list[Prompt]:
    """A seeded choice of ``count`` prompts for one speaker, stable when other voices change."""
    if count > len(prompts):
        raise ValueError(f"demo.utterances_per_speaker is {count} but only {len(prompts)} demo prompts exist")
    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
    picked = np.sort(rng.choice(len(prompts), size=count, replace=False))
    return [prompts[i] for i in picked]


def _synth_key(voice: CatalogVoice, text: str) -> str:
    return hashlib.sha256(json.dumps([SYNTH_VERSION, voice.engine, voice.voice, text, *render_identity(voice)]).encode()).hexdigest()


def _csv_bytes(header: list[str], rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def build_demo_corpus(cfg: DemoSection, seed: int, out_dir: Path) -> Path:
    """Synthesise the demo corpus into ``out_dir``; returns the path of its ``manifest.csv``."""
    voices = resolve_voices(cfg.voices)
    prompts = load_prompts()
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "synth-index.json"
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.is_file() else {}

    plan: list[tuple[CatalogVoice, Prompt, str]] = []
    for voice in voices:
        for prompt in choose_prompts(prompts, voice.name, cfg.utterances_per_speaker, seed):
            plan.append((voice, prompt, f"audio/{voice.name}/{voice.name}_{prompt.id}.wav"))
    todo = [(v, p, rel) for v, p, rel in plan if index.get(rel) != _synth_key(v, p.text) or not (out_dir / rel).is_file()]
    log.info("demo corpus: %d voices x %d prompts; %d to synthesise, %d cached",
             len(voices), cfg.utterances_per_speaker, len(todo), len(plan) - len(todo))

    def one(job: tuple[CatalogVoice, Prompt, str]) -> tuple[str, str]:
        voice, prompt, rel = job
        synthesize(voice, prompt.text, out_dir / rel, label=f"prompt {prompt.id} ({prompt.text!r})")
        return rel, _synth_key(voice, prompt.text)

    try:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            for rel, key in track(pool.map(one, todo), len(todo), "demo: synthesise", log):
                index[rel] = key
    finally:  # keep what was done, so a rerun after a failure or a kill resumes
        atomic_write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")

    planned = {rel for _, _, rel in plan}
    for stale in sorted((out_dir / "audio").rglob("*.wav")):
        if stale.relative_to(out_dir).as_posix() not in planned:
            stale.unlink()

    speaker_rows, manifest_rows = [], []
    for voice in voices:
        mine = [(p, rel) for v, p, rel in plan if v is voice]
        sample = mine[:PROFILE_UTTERANCES]
        profile = measure_voice([out_dir / rel for _, rel in sample], [p.text for p, _ in sample])
        image_rel = f"images/{voice.name}.png"
        atomic_write_bytes(out_dir / image_rel, draw_avatar(voice, profile, cfg.image_size))
        speaker_rows.append([voice.name, voice.engine, voice.voice, voice.gender, voice.accent,
                             *asdict(profile).values(), image_rel])
        manifest_rows.extend([f"{voice.name}_{p.id}", voice.name, p.text, rel, image_rel] for p, rel in mine)

    atomic_write_bytes(
        out_dir / "speakers.csv",
        _csv_bytes(["speaker", "engine", "voice", "gender", "accent", "median_f0_hz", "f0_iqr_semitones",
                    "speaking_rate", "spectral_centroid_hz", "image"], speaker_rows),
    )
    manifest = out_dir / "manifest.csv"
    atomic_write_bytes(manifest, _csv_bytes(["id", "speaker", "text", "audio", "image"], manifest_rows))
    return manifest
