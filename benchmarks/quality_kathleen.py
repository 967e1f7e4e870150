"""Train params.yaml's recipe on kathleen-a for a bounded time, then measure what it says.

    .venv/bin/python benchmarks/quality_kathleen.py [--minutes 60] [--phase all|data|pretrain|train|evaluate]
        [--member NAME] [--init-from MODEL_FOLDER] [--threads N] [-S key=value ...]

The params are ``profiles/kathleen-a.yaml`` (params.yaml with only the corpus and its member
changed): like every voice, kathleen fine-tunes from the base (``train.init_from: base``).
Variants train side by side at equal minutes as members of one workspace, one process each, e.g.
from scratch against a fine-tune of the base that ``make demo`` built, one thread each on 2 cores:

    python benchmarks/quality_kathleen.py --phase data
    python benchmarks/quality_kathleen.py --phase pretrain -S pretrain.source=../demo/models/base
    python benchmarks/quality_kathleen.py --phase train --member scratch --threads 1 --minutes 30 \
        -S train.init_from=null -S train.lr=0.003 &
    python benchmarks/quality_kathleen.py --phase train --member tuned --threads 1 --minutes 30 &
    wait; for m in scratch tuned; do python benchmarks/quality_kathleen.py --phase evaluate --member $m; done

Phases (each resumable; rerunning skips what is done):
1. data: prepare → validate → clean → features of kathleen-a in ``--workspace``;
1b. pretrain: ``models/base`` in the workspace (copied from ``pretrain.source``, or trained there,
   base corpus included: then count its minutes in the budget);
2. train: the default ``params.yaml`` model, member ``kathleen``, bounded by ``--minutes`` of wall
   time (resumes from ``last.pt`` when rerun);
3. copy: copy synthesis, the vocoder's ceiling: each test take's *real* mel (from the features stage)
   through ``--vocoder`` (Griffin-Lim, or a trained vocoder's folder), scored as evaluate scores
   (``--limit``: takes per speaker); any workspace with features, e.g. the demo's teachers:
   ``--workspace <demo project> --params <demo project>/params.yaml --phase copy --vocoder ...``; a
   harmonic-source vocoder renders the take's tracked F0 (``--f0 estimated``: its own tracker's);
4. evaluate: synthesise the test split with ``speaker=kathleen-a`` and score it, next to the real
   recordings of the same sentences, with :mod:`polyvox.evaluate.metrics`: WER/CER by the judge (Whisper, and pocketsphinx beside it),
   resemblyzer speaker similarity, MCD with DTW, log-F0 RMSE, DNSMOS and real-time factor.

Writes ``benchmarks/results/quality_kathleen_<member>.json`` and per-utterance
``quality_kathleen_<member>_<vocoder>.csv`` (copy: ``<workspace folder>_copy_<vocoder>.json`` and ``.csv``);
the synthesised WAVs go to ``models/kathleen/samples-<vocoder>/`` in the workspace.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from pathlib import Path

import torch

from polyvox.config import load_params
from polyvox.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def run_data(params, ws: Workspace) -> None:
    from polyvox.clean.stage import clean
    from polyvox.corpus.prepare import prepare
    from polyvox.features.stage import features
    from polyvox.validate.stage import validate

    for stage in (prepare, validate, clean, features):
        stage(params, ws)


def run_train(params, ws: Workspace, member: str, init_from: Path | None) -> dict:
    from polyvox.train.trainer import train

    result = train(params, ws, member=member, resume=True, init_from=init_from)
    return {"steps": result.steps, "planned_steps": result.planned_steps, "best_val_loss": result.best_val_loss,
            "seconds_per_step": result.seconds_per_step, "device": result.device, "stopped_by": result.stopped_by,
            "precision": result.precision,
            "init_from": str(init_from) if init_from is not None else params.train.init_from}


class CopySynthesis:
    """Stands in for a :class:`~polyvox.runtime.voice.Voice` in ``score_systems``: "synthesising" a
    test sentence vocodes a real take's mel of it, so what is scored is the vocoder alone. Takes of one
    text are handed out in the rows' order, which is the order ``score_systems`` synthesises them in."""

    def __init__(self, vocoder: str, audio, workspace: Workspace, rows, f0: str = "tracked"):
        import itertools

        import numpy as np

        from polyvox.models.meta import load_vocoder

        self.vocoder = None if vocoder == "griffin-lim" else load_vocoder(Path(vocoder))
        # a harmonic-source vocoder renders the take's tracked F0 (as a conversion member hands it one),
        # or with f0="estimated" its own tracker's reading of the mel (as for a text→mel member)
        self.f0 = f0 if self.vocoder is not None and self.vocoder.harmonic else None
        self.audio, self.mode, self.members = audio, "copy", []
        takes: dict[tuple[str, str], list] = {}
        for row in rows.itertuples():
            arrays = np.load(workspace.features / row.features)
            takes.setdefault((row.speaker, row.clean_text), []).append(
                (torch.from_numpy(arrays["mel"]), arrays["f0"][:arrays["mel"].shape[1]]))
        self._next = {key: itertools.cycle(mels) for key, mels in takes.items()}

    @property
    def sample_rate(self) -> int:
        return self.audio.sample_rate

    @torch.no_grad()
    def synthesize(self, text: str, speaker: str | None = None):
        from polyvox.signal.griffin_lim import griffin_lim

        mel, f0 = next(self._next[(speaker, text)])
        if self.vocoder is None:
            wave = griffin_lim(mel, self.audio)
        else:
            wave = self.vocoder.synthesize(mel, f0 if self.f0 == "tracked" else None)
        return wave.reshape(-1).numpy().astype("float32"), self.sample_rate

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.vocoder.parameters()) if self.vocoder is not None else 0

    def describe(self) -> dict:
        return {"kind": "copy synthesis"}


def run_copy(params, ws: Workspace, vocoder: str, tag: str, limit: int | None, f0: str = "tracked") -> dict:
    """Real mels of the test takes (``limit`` per speaker) → the vocoder, scored next to the real takes."""
    import shutil
    import tempfile

    from polyvox.evaluate.stage import score_systems, test_rows
    from polyvox.judges import Judge

    rows = test_rows(params.model_copy(update={"evaluate": params.evaluate.model_copy(
        update={"max_utterances": None})}), ws)
    rows = rows.groupby("speaker").head(limit) if limit else rows
    empty = Path(tempfile.mkdtemp(prefix="copy-"))  # the "voice folder" whose size is reported: nothing
    try:
        table, summary = score_systems(params, ws, {"copy": (CopySynthesis(vocoder, params.audio, ws, rows, f0), empty)},
                                       rows, {"copy": ws.models / f"copy-{tag}"})
    finally:
        shutil.rmtree(empty)
    table.to_csv(RESULTS / f"{ws.root.name}_copy_{tag}.csv", index=False)
    judge = Judge.from_params(params)
    return {"vocoder": vocoder, "utterances": len(rows), "speakers": sorted(rows["speaker"].unique()),
            "asr": judge.name, **summary, "wer_ratio": summary["copy"]["wer"] / max(summary["real"]["wer"], 1e-9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/kathleen-a")
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks/work/quality_kathleen")
    parser.add_argument("--params", type=Path, default=REPO / "profiles/kathleen-a.yaml")
    parser.add_argument("--minutes", type=float, default=60.0, help="training wall-time bound")
    parser.add_argument("--init-from", type=Path, default=None, help="warm start: a trained member's folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (one per side-by-side run)")
    parser.add_argument("--phase", choices=("all", "data", "pretrain", "train", "copy", "evaluate"), default="all")
    parser.add_argument("--member", default="kathleen")
    parser.add_argument("--vocoder", default="griffin-lim", help="griffin-lim, or a trained vocoder's folder")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test sentences")
    parser.add_argument("--f0", choices=("tracked", "estimated"), default="tracked",
                        help="copy phase, harmonic-source vocoder: the take's tracked F0, or the vocoder's own estimate")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="params override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    ws = Workspace(args.workspace)
    params = load_params(args.params, [f"prepare.corpus={args.corpus.resolve()}",
                                       f"train.max_minutes={args.minutes}", *args.overrides])
    RESULTS.mkdir(parents=True, exist_ok=True)
    report_path = RESULTS / f"quality_kathleen_{args.member}.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if args.phase in ("all", "data"):
        run_data(params, ws)
    if args.phase in ("all", "pretrain") and params.train.init_from == "base":
        from polyvox.pretrain.stage import pretrain

        built = pretrain(params, ws)
        print(built.summary())
    if args.phase in ("all", "train"):
        report["train"] = {**run_train(params, ws, args.member, args.init_from), "machine": machine,
                           "minutes": args.minutes}
        report_path.write_text(json.dumps(report, indent=1) + "\n")
    if args.phase == "copy":
        tag = "griffin-lim" if args.vocoder == "griffin-lim" else Path(args.vocoder).name
        tag += "" if args.f0 == "tracked" else f"_{args.f0}"
        copy = run_copy(params, ws, args.vocoder, tag, args.limit, args.f0)
        copy_path = RESULTS / f"{ws.root.name}_copy_{tag}.json"
        copy_path.write_text(json.dumps({"machine": machine, **copy}, indent=1) + "\n")
        print(json.dumps(copy, indent=1))
    if args.phase in ("all", "evaluate"):
        from polyvox.evaluate.quality import evaluate_member

        tag = "griffin-lim" if args.vocoder == "griffin-lim" else Path(args.vocoder).name
        report[f"evaluate_{tag}"] = {"machine": machine, **evaluate_member(params, ws, args.member, vocoder=args.vocoder,
                                                    per_utterance_csv=RESULTS / f"quality_kathleen_{args.member}_{tag}.csv",
                                                    samples=ws.models / args.member / f"samples-{tag}", limit=args.limit)}
        report_path.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report[f"evaluate_{tag}"], indent=1))


if __name__ == "__main__":
    main()
