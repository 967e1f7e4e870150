"""The ``clean`` stage: accepted rows → clean audio, spoken-form text and phonemes.

Audio and text are content-addressed separately (see :mod:`polyvox.cache`): an audio key is the
source audio's hash + the audio settings + :data:`AUDIO_VERSION`; a text key is the transcript +
the text settings + :data:`TEXT_VERSION`. So a new recording costs one file's work, and a
changed loudness target redoes the audio but not the phonemes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.cache import content_key, load_index, save_index, sharded
from polyvox.clean.audio import CleanAudioTask, clean_audio
from polyvox.config import Params
from polyvox.fileio import atomic_path, remove_unreferenced
from polyvox.parallel import map_items
from polyvox.text.normalize import normalize_text
from polyvox.text.phonemes import phonemize
from polyvox.workspace import Workspace
from polyvox.tracking import tracked

log = logging.getLogger(__name__)

# Bump when the code changes what it produces, so cached outputs are redone.
AUDIO_VERSION = "1"
TEXT_VERSION = "1"

MANIFEST_COLUMNS = ["row", "id", "speaker", "text", "clean_text", "phonemes", "phonemizer", "audio", "audio_key",
                    "clean_duration", "loudness_in", "gain_db", "reference_audio", "reference_key", "image",
                    "image_hash", "source_hash", "text_key"]


@dataclass(frozen=True)
class CleanResult:
    rows: int
    audio_processed: int
    audio_reused: int
    text_processed: int
    text_reused: int
    hours: float
    phonemizer: str

    def summary(self) -> str:
        return (f"{self.rows} rows, {self.hours:.2f} h clean audio; audio {self.audio_processed} processed, "
                f"{self.audio_reused} reused; text {self.text_processed} processed, {self.text_reused} reused "
                f"({self.phonemizer})")


def _audio_settings(params: Params) -> dict:
    c, a = params.clean, params.audio
    return {"sample_rate": a.sample_rate, "trim_top_db": c.trim_top_db, "trim_margin": c.trim_margin,
            "loudness_lufs": c.loudness_lufs, "peak_dbfs": c.peak_dbfs, "frame_length": a.win_length,
            "hop_length": a.hop_length}


@tracked("clean", lambda ws: ws.clean_manifest)
def clean(params: Params, workspace: Workspace) -> CleanResult:
    accepted = pq.read_table(workspace.accepted_manifest).to_pandas()
    out = workspace.clean
    settings = _audio_settings(params)

    # Audio: the rows' own audio and any reference audio, each cleaned once per content key.
    sources: dict[str, str] = {}  # key -> raw path
    audio_keys, reference_keys = [], []
    for _, row in accepted.iterrows():
        key = content_key("audio", AUDIO_VERSION, row["source_hash"], settings)
        sources[key] = str(workspace.raw / row["audio"])
        audio_keys.append(key)
        if isinstance(row.get("reference_audio"), str) and row["reference_audio"]:
            ref_key = content_key("audio", AUDIO_VERSION, row["reference_hash"], settings)
            sources[ref_key] = str(workspace.raw / row["reference_audio"])
            reference_keys.append(ref_key)
        else:
            reference_keys.append(None)
    audio_index_path = out / "audio-index.parquet"
    audio_index = {k: v for k, v in load_index(audio_index_path).items() if k in sources}
    todo = [key for key in sorted(sources) if key not in audio_index or not (out / sharded("audio", key, ".wav")).is_file()]
    tasks = [CleanAudioTask(source=sources[key], target=str(out / sharded("audio", key, ".wav")), **settings) for key in todo]
    for key, facts in zip(todo, map_items(clean_audio, tasks, params.parallel, "clean: audio", log)):
        audio_index[key] = facts
    save_index(audio_index, audio_index_path)

    # Text: spoken form and phonemes, batched (one phonemizer backend for all rows).
    text_settings = {"language": params.clean.language, "phonemizer": params.clean.phonemizer}
    text_keys = [content_key("text", TEXT_VERSION, text, text_settings) for text in accepted["text"]]
    text_index_path = out / "text-index.parquet"
    text_index = {k: v for k, v in load_index(text_index_path).items() if k in set(text_keys)}
    missing = {key: text for key, text in zip(text_keys, accepted["text"]) if key not in text_index}
    if missing:
        spoken = [normalize_text(text) for text in missing.values()]
        phones, backend = phonemize(spoken, params.clean.language, params.clean.phonemizer)
        for key, clean_text, phonemes in zip(missing, spoken, phones):
            text_index[key] = {"clean_text": clean_text, "phonemes": phonemes, "phonemizer": backend}
    save_index(text_index, text_index_path)

    manifest = accepted[["row", "id", "speaker", "text", "image", "image_hash", "reference_audio", "source_hash"]].copy()
    manifest["audio_key"], manifest["reference_key"], manifest["text_key"] = audio_keys, reference_keys, text_keys
    manifest["audio"] = [sharded("audio", key, ".wav") for key in audio_keys]
    manifest["reference_audio"] = [sharded("audio", key, ".wav") if key else None for key in reference_keys]
    for column in ("clean_duration", "loudness_in", "gain_db"):
        manifest[column] = [audio_index[key][column] for key in audio_keys]
    for column in ("clean_text", "phonemes", "phonemizer"):
        manifest[column] = [text_index[key][column] for key in text_keys]
    manifest = manifest[MANIFEST_COLUMNS]
    with atomic_path(workspace.clean_manifest, keep_unchanged=True) as tmp:
        pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), tmp, compression="zstd")
    # Pruned only now: until the new manifest is in place, the old one (and its audio) stays whole.
    remove_unreferenced(out / "audio", set(audio_index), ".wav")

    backends = sorted(set(manifest["phonemizer"])) or [params.clean.phonemizer]
    result = CleanResult(
        rows=len(manifest),
        audio_processed=len(todo),
        audio_reused=len(sources) - len(todo),
        text_processed=len(missing),
        text_reused=len(set(text_keys)) - len(missing),
        hours=float(pd.to_numeric(manifest["clean_duration"]).sum()) / 3600 if len(manifest) else 0.0,
        phonemizer="+".join(backends),
    )
    log.info("clean: %s", result.summary())
    return result
