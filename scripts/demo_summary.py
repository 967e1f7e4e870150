"""What `make demo` ends with: the report, the gate decision, the champion's intelligibility next to
the teacher voices' (by the judge, and by pocketsphinx when it was a second opinion), and how to
serve and browse it. Reads the files the pipeline wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: Path = Path(".")) -> int:
    metrics = json.loads((root / "reports/evaluate/metrics.json").read_text(encoding="utf-8"))
    decision = json.loads((root / "reports/promote.json").read_text(encoding="utf-8"))
    systems = metrics["systems"]
    candidate, real = systems["candidate"], systems["real"]
    print(f"Report:    {root / 'reports/evaluate/report.html'} (candidate vs champion vs the real recordings, with audio)")
    if decision["promoted"]:
        print(f"Champion:  version {decision['version']}, promoted to models/champion/")
    else:
        failed = [f"{r['rule']} {r['value']} (needs {r['op']} {r['threshold']})" for r in decision["rules"] if not r["passed"]]
        print(f"Champion:  version {decision['version']} refused by the gate: {'; '.join(failed)}")
    judges = [(metrics.get("asr", "pocketsphinx"), "wer", "cer")]
    if "wer_pocketsphinx" in candidate:
        judges.append((f"{metrics.get('asr_second_opinion') or 'pocketsphinx'}, second opinion", "wer_pocketsphinx",
                       "cer_pocketsphinx"))
    print(f"Intelligibility on {metrics['utterances']} held-out demo prompts; speaker similarity "
          f"{candidate['speaker_similarity']:.3f}")
    for name, wer, cer in judges:
        print(f"  {name}: candidate WER {candidate[wer]:.3f} / CER {candidate[cer]:.3f}; the teacher voices' own "
              f"recordings WER {real[wer]:.3f} / CER {real[cer]:.3f}; ratio {candidate[wer] / max(real[wer], 1e-9):.2f}")
    print("Serve it:  .venv/bin/polyvox serve        → http://127.0.0.1:8000 (POST /synthesize, GET /voices)")
    print("Dashboard: .venv/bin/polyvox dashboard    → http://127.0.0.1:8050")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")))
