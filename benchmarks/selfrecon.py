"""A conversion member's own ceiling: held-out takes decoded from their *own* content features and pitch.

    .venv/bin/python benchmarks/selfrecon.py --workspace benchmarks/work/kconv \\
        --params profiles/kathleen-a-convert.yaml --member convert --member convert_wide [--limit 40]

For each take of the test split (prompts no training take reads), the member decodes the content
features and pitch the features stage cached for that take — no teacher, no speaker mismatch — and
Griffin-Lim renders the mel; the take's real mel through Griffin-Lim is the target. Both judges hear
every clip (Whisper base, the project's judge, and Whisper tiny.en), with resemblyzer similarity to
the speaker's training takes and DNSMOS P.835 overall. What the decoder loses here it loses on every
teacher rendering too: the teacher path (``benchmarks/heldout.py``) cannot do better than this.

Writes ``benchmarks/results/selfrecon_<workspace folder>.json`` and ``.csv``; paired bootstrap of each
member's WER against the real mels (2000 draws, 95 %).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    from polyvox.config import load_params
    from polyvox.evaluate.scoring import paired_bootstrap
    from polyvox.fileio import load_arrays
    from polyvox.frontends.content import CONTENT_MODELS, on_grid
    from polyvox.judges import Judge
    from polyvox.judges.dnsmos import dnsmos
    from polyvox.judges.scores import asr_scores
    from polyvox.judges.speaker import SpeakerEncoder
    from polyvox.runtime.converter import ConverterSynthesizer
    from polyvox.signal.griffin_lim import griffin_lim
    from polyvox.signal.pitch import normalised_log_f0
    from polyvox.workspace import Workspace

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--member", action="append", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--centroid-takes", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    ws = Workspace(args.workspace)
    index = pd.read_parquet(ws.features_index)
    index = index.merge(pd.read_parquet(ws.clean_manifest)[["id", "audio"]], on="id", how="left")
    stats = json.loads((ws.features / "stats.json").read_text())
    test = index[index["split"] == "test"].head(args.limit)
    judges = {"": Judge("whisper"), "_2": Judge("whisper", str(CONTENT_MODELS["whisper-tiny.en"].folder()))}
    encoder = SpeakerEncoder()
    train = index[index["split"] == "train"].head(args.centroid_takes)
    centroid = encoder.centroid([encoder.embed(*sf.read(ws.clean / a, dtype="float32")) for a in train["audio"]])
    members = {name: ConverterSynthesizer(ws.models / name) for name in args.member}
    rows = []
    for row in test.itertuples():
        arrays = load_arrays(ws.features / row.features)
        s = stats["speakers"].get(row.speaker, stats["global"])
        pitch, voiced = normalised_log_f0(arrays["f0"], s["log_f0_mean"], s["log_f0_std"])
        frames = arrays["mel"].shape[1]
        content = on_grid(np.load(ws.features / row.content_features).astype(np.float32), frames, params.audio)
        mels = {"real": torch.from_numpy(arrays["mel"])}
        for name, member in members.items():
            as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
            mels[name] = member.model.infer(as_tensor(content), as_tensor(pitch), as_tensor(voiced),
                                            audio_embedding=member.speakers[row.speaker][None])[0]
        for system, mel in mels.items():
            wave = griffin_lim(mel, params.audio).reshape(-1).numpy()
            record = {"system": system, "id": row.id, "text": row.clean_text,
                      "similarity": encoder.similarity(encoder.embed(wave, params.audio.sample_rate), centroid),
                      "mos_ovrl": dnsmos(wave, params.audio.sample_rate)["mos_ovrl"]}
            for suffix, judge in judges.items():
                score = asr_scores(wave, params.audio.sample_rate, row.clean_text, judge)
                record.update({f"hypothesis{suffix}": score.hypothesis, f"word_errors{suffix}": score.word_errors,
                               "words": score.words})
            rows.append(record)
        print(row.id, " ".join(f"{r['system']} {r['word_errors']}/{r['words']}" for r in rows[-len(mels):]), flush=True)
    table = pd.DataFrame(rows)
    summary = {"workspace": str(ws.root), "takes": len(test), "judges": [j.name for j in judges.values()],
               "machine": f"{platform.machine()} {platform.processor()}".strip(), "systems": {}, "vs_real": {}}
    real = table[table["system"] == "real"].set_index("id")
    for system, part in table.groupby("system", sort=False):
        summary["systems"][system] = {
            "wer": part["word_errors"].sum() / part["words"].sum(),
            "wer_second_judge": part["word_errors_2"].sum() / part["words"].sum(),
            "similarity": float(part["similarity"].mean()), "mos_ovrl": float(part["mos_ovrl"].mean())}
        if system != "real":
            x = part.set_index("id").loc[real.index]
            summary["vs_real"][system] = {
                suffix or "judge": paired_bootstrap(x[f"word_errors{suffix}"], x["words"], real[f"word_errors{suffix}"],
                                                    real["words"], 2000, 0.95, 0) for suffix in judges}
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / f"selfrecon_{ws.root.name}.csv", index=False)
    (RESULTS / f"selfrecon_{ws.root.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for system, figures in summary["systems"].items():
        print(f"{system:>14}: " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
