"""Side-by-side table of vocoders scored on the same test takes, with paired bootstrap intervals.

    .venv/bin/python benchmarks/compare_vocoders.py BASELINE.csv VARIANT.csv [VARIANT.csv ...]
        [--system copy|candidate] [--resamples 2000]

Each CSV is a per-utterance table that ``benchmarks/quality_kathleen.py`` wrote (``--phase copy``:
``<workspace>_copy_<vocoder>.csv``; ``--phase evaluate``: ``quality_kathleen_<member>_<vocoder>.csv``).
Rows of the synthesised system (``--system``) are paired with the baseline's by utterance id; the real
takes (``system == real``) of the baseline file are the first row. Printed: corpus WER (Whisper and
pocketsphinx), mean DNSMOS overall / signal / background, speaker similarity, MCD and log-F0 RMSE,
and for WER and DNSMOS the variant − baseline difference with its 95 % paired bootstrap interval
(:func:`polyvox.evaluate.scoring.paired_bootstrap`, the one ``polyvox evaluate`` reports).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from polyvox.evaluate.scoring import paired_bootstrap

MEANS = ("mos_ovrl", "mos_sig", "mos_bak", "speaker_similarity", "mcd_db", "log_f0_rmse_cents")


def summarise(rows: pd.DataFrame) -> dict[str, float]:
    out = {"utterances": len(rows), "wer": rows.word_errors.sum() / rows.words.sum(),
           "wer_pocketsphinx": rows.ps_word_errors.sum() / rows.ps_words.sum()}
    out.update({name: float(rows[name].mean()) if name in rows and rows[name].notna().any() else float("nan")
                for name in MEANS})
    return out


def interval(variant: pd.DataFrame, baseline: pd.DataFrame, num: str, den: str | None, resamples: int) -> str:
    ones_a = np.ones(len(variant)) if den is None else variant[den].to_numpy()
    ones_b = np.ones(len(baseline)) if den is None else baseline[den].to_numpy()
    result = paired_bootstrap(variant[num].to_numpy(), ones_a, baseline[num].to_numpy(), ones_b,
                              resamples=resamples, confidence=0.95, seed=0)
    return f"{result['difference']:+.3f} ({result['low']:+.3f} … {result['high']:+.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("variants", type=Path, nargs="+")
    parser.add_argument("--system", default=None, help="the synthesised system's rows (default: the non-real one)")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    missing = [str(path) for path in (args.baseline, *args.variants) if not path.is_file()]
    if missing:
        raise SystemExit(f"no such per-utterance table: {', '.join(missing)}")

    def synthesised(path: Path) -> pd.DataFrame:
        table = pd.read_csv(path)
        systems = sorted(set(table.system) - {"real"}) if args.system is None else [args.system]
        if len(systems) != 1:
            raise SystemExit(f"{path}: systems {sorted(set(table.system))}; name one with --system")
        rows = table[table.system == systems[0]].set_index("id")
        if rows.empty:
            raise SystemExit(f"{path}: no rows of system {systems[0]!r}")
        return rows

    base_table = pd.read_csv(args.baseline)
    real = base_table[base_table.system == "real"].set_index("id")
    baseline = synthesised(args.baseline)
    header = "| system | utterances | Whisper WER | Δ WER vs baseline (95 % CI) | pocketsphinx WER | DNSMOS ovrl | " \
             "Δ DNSMOS (95 % CI) | sig | bak | similarity | MCD dB | log-F0 RMSE (cents) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    entries = [("real takes", real, None)] + [(args.baseline.stem + " (baseline)", baseline, None)]
    for path in args.variants:
        entries.append((path.stem, synthesised(path), True))
    for name, rows, compare in entries:
        s = summarise(rows)
        if compare:
            common = rows.index.intersection(baseline.index)
            v, b = rows.loc[common], baseline.loc[common]
            dwer, dmos = interval(v, b, "word_errors", "words", args.resamples), interval(v, b, "mos_ovrl", None,
                                                                                           args.resamples)
        else:
            dwer = dmos = ""
        mcd, f0 = (("—" if np.isnan(s[k]) else f"{s[k]:{spec}}") for k, spec in (("mcd_db", ".2f"),
                                                                                 ("log_f0_rmse_cents", ".0f")))
        print(f"| {name} | {s['utterances']} | {s['wer']:.3f} | {dwer} | {s['wer_pocketsphinx']:.3f} | "
              f"{s['mos_ovrl']:.2f} | {dmos} | {s['mos_sig']:.2f} | {s['mos_bak']:.2f} | "
              f"{s['speaker_similarity']:.3f} | {mcd} | {f0} |")


if __name__ == "__main__":
    main()
