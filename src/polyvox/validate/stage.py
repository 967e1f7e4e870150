"""The ``validate`` stage: every raw row ends in exactly one of accepted / quarantined.

Audio probes run per file (in parallel); Great Expectations then judges the manifest joined with
the probes, and each failing row is quarantined with its first failing check as the reason and
all failing checks beside it. Outputs, in ``data/validated``:

- ``accepted.parquet``: raw manifest rows that passed, with their probe values;
- ``quarantine.parquet``: the others, with ``reason``, ``reasons`` and ``detail``;
- ``summary.json`` / ``summary.md``: counts per reason, self-contained, for reports;
- ``gx/``: the GX project: suite, validation results and Data Docs.

The stage raises :class:`ValidationFailed` (after writing all of that) when the accepted share
is below ``validate.min_accepted_share`` or a critical expectation fails.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.cache import content_key, load_index, save_index
from polyvox.config import Params
from polyvox.corpus.schema import read_manifest
from polyvox.fileio import atomic_path, atomic_write_text
from polyvox.fingerprint import current_stamp, file_digest, fingerprint
from polyvox.judges import Judge
from polyvox.parallel import map_items
from polyvox.stages import STAGES
from polyvox.validate.errors import ValidationFailed
from polyvox.validate.expectations import checks, run_suite
from polyvox.validate.probes import FIELDS as PROBE_FIELDS
from polyvox.validate.probes import ProbeTask, probe
from polyvox.workspace import Workspace
from polyvox.tracking import tracked

log = logging.getLogger(__name__)

# Bump when a probe's definition changes, so stored probe values are recomputed.
PROBE_VERSION = "1"


@dataclass(frozen=True)
class ValidateResult:
    rows: int
    accepted: int
    quarantined: int
    accepted_share: float
    reasons: dict[str, int]
    data_docs: str | None
    probed: int  # files whose probes were computed in this run (the others were reused)

    def summary(self) -> str:
        top = ", ".join(f"{reason} {count}" for reason, count in self.reasons.items()) or "none"
        return f"{self.accepted}/{self.rows} rows accepted ({self.accepted_share:.1%}); quarantined: {top}"


def _first_index_of_duplicates(values: pd.Series) -> pd.Series:
    """For each later occurrence of a value, the row of its first occurrence; else None."""
    first = values.dropna().reset_index().drop_duplicates(subset=values.name, keep="first").set_index(values.name)["index"]
    mapped = values.map(first)
    mapped[~values.duplicated(keep="first") | values.isna()] = None
    return mapped.astype("Int64")


def _checks_table(raw: pd.DataFrame, probes: list[dict[str, Any]]) -> pd.DataFrame:
    table = raw.copy()
    probe_frame = pd.DataFrame(probes, columns=list(PROBE_FIELDS)).set_index("row")
    table = table.join(probe_frame)
    for column in ("speaker", "text"):
        table[column] = table[column].where(table[column].fillna("").str.strip() != "", None)
    # Decoded length when the audio decodes; the header's otherwise.
    table["duration"] = table["decoded_duration"].fillna(table["duration"])
    table["duplicate_of"] = _first_index_of_duplicates(table["id"])
    table["duplicate_audio_of"] = _first_index_of_duplicates(table["source_hash"])
    return table


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


_FIELD = re.compile(r"\{(\w+)(!r)?(?::([^}]*))?\}")


def _describe(template: str, row: pd.Series) -> str:
    """Fill ``{name:spec}`` fields from the row; a missing value reads '-'."""

    def value(match: re.Match) -> str:
        v = row.get(match.group(1))
        if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
            return "-"
        if match.group(2):
            return repr(v)
        try:
            return format(v, match.group(3) or "")
        except (ValueError, TypeError):
            return str(v)

    return _FIELD.sub(value, template)


def _summary_markdown(result: ValidateResult, thresholds: dict[str, Any]) -> str:
    lines = ["# Validation summary", "", f"{result.summary()}", "", "| reason | rows |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in result.reasons.items()] or ["| (none) | 0 |"]
    lines += ["", "Thresholds (params.yaml `validate`):", ""] + [f"- `{k}`: {v}" for k, v in thresholds.items()]
    return "\n".join(lines) + "\n"


def _probe_all(
    tasks: list[ProbeTask], hashes: list[str | None], params: Params, index_path: Path
) -> tuple[list[dict], int]:
    """Probe values per row, computed once per audio content (a rerun probes only new files, and a
    transcript check by another judge checks again)."""
    judges = {t.judge for t in tasks if t.judge is not None}
    heard_by = {judge: judge.identity() for judge in judges}
    keys = [content_key("probe", PROBE_VERSION, h, heard_by.get(t.judge, False), t.text if t.judge else None)
            if isinstance(h, str) else None for t, h in zip(tasks, hashes)]
    index = load_index(index_path)
    todo = [i for i, key in enumerate(keys) if key is None or key not in index]
    computed = map_items(probe, [tasks[i] for i in todo], params.parallel, "validate: audio probes", log)
    fresh = dict(zip(todo, computed))
    for i, values in fresh.items():
        if keys[i] is not None:
            index[keys[i]] = {k: v for k, v in values.items() if k != "row"}
    save_index({k: v for k, v in index.items() if k in set(keys)}, index_path)
    probed = sum(keys[i] is not None for i in todo)  # rows without audio cost nothing to "probe"
    log.info("validate: %d files probed, %d reused", probed, sum(k is not None for k in keys) - probed)
    return [fresh[i] if i in fresh else {"row": tasks[i].row, **index[keys[i]]} for i in range(len(tasks))], probed


@tracked("validate", lambda ws: ws.accepted_manifest)
def validate(params: Params, workspace: Workspace) -> ValidateResult:
    cfg = params.validate_
    manifest = read_manifest(workspace.raw_manifest)
    out = workspace.validated
    # The manifest holds every take's content hash: the same manifest and settings validate the same.
    inputs = fingerprint(file_digest(workspace.raw_manifest), STAGES["validate"].identity(params))
    previous = current_stamp(out / "summary.json", [workspace.accepted_manifest, out / "quarantine.parquet"], inputs)
    if previous is not None:
        result = ValidateResult(**{f.name: previous[f.name] for f in fields(ValidateResult)} | {"probed": 0})
        log.info("validate: manifest and settings unchanged; %s stands (%s)", out, result.summary())
        _judge(result, previous["critical_failures"], cfg, out)
        return result
    raw = manifest.to_pandas()
    judge = Judge.from_params(params) if cfg.asr_check else None
    tasks = [
        ProbeTask(row=i, audio=str(workspace.raw / r["audio"]) if r["audio"] else None, text=r["text"], judge=judge)
        for i, r in enumerate(manifest.select(["audio", "text"]).to_pylist())
    ]
    probes, probed = _probe_all(tasks, list(raw["source_hash"]), params, out / "probe-index.parquet")
    table = _checks_table(raw, probes)

    suite = run_suite(table, cfg, out)
    order = [check.reason for check in checks(cfg)]
    explain = {check.reason: check.explain for check in checks(cfg)}
    reasons_per_row: dict[int, list[str]] = {}
    for reason in order:
        for row in suite.failing.get(reason, []):
            reasons_per_row.setdefault(row, []).append(reason)

    quarantined_rows = sorted(reasons_per_row)
    accepted = table.drop(index=quarantined_rows)
    quarantine = table.loc[quarantined_rows].copy()
    quarantine["reason"] = [reasons_per_row[r][0] for r in quarantined_rows]
    quarantine["reasons"] = [";".join(reasons_per_row[r]) for r in quarantined_rows]
    quarantine["detail"] = [_describe(explain[reasons_per_row[r][0]], table.loc[r]) for r in quarantined_rows]
    for frame in (accepted, quarantine):
        frame.insert(0, "row", frame.index.astype("int64"))
    _write_parquet(accepted, workspace.accepted_manifest)
    _write_parquet(quarantine, out / "quarantine.parquet")

    counts = quarantine["reason"].value_counts()
    result = ValidateResult(
        rows=len(table),
        accepted=len(accepted),
        quarantined=len(quarantine),
        accepted_share=len(accepted) / len(table) if len(table) else 0.0,
        reasons={reason: int(counts[reason]) for reason in order if reason in counts},
        data_docs=str(suite.docs) if suite.docs else None,
        probed=probed,
    )
    thresholds = cfg.model_dump()
    atomic_write_text(out / "summary.md", _summary_markdown(result, thresholds))
    # last: the stamp of a whole validation (a rerun of the same inputs reads it and does nothing)
    atomic_write_text(out / "summary.json", json.dumps({**asdict(result), "thresholds": thresholds, "critical_failures":
                                                        list(suite.critical_failures), "inputs": inputs}, indent=2) + "\n")
    log.info("validate: %s", result.summary())
    _judge(result, suite.critical_failures, cfg, out)
    return result


def _judge(result: ValidateResult, critical_failures: list[str], cfg, out: Path) -> None:
    """Fail the stage (ValidationFailed) on a critical expectation or too small an accepted share."""
    if critical_failures:
        raise ValidationFailed("critical expectation failed: " + "; ".join(critical_failures))
    if result.accepted_share < cfg.min_accepted_share:
        raise ValidationFailed(
            f"accepted share {result.accepted_share:.3f} ({result.accepted}/{result.rows}) is below "
            f"validate.min_accepted_share {cfg.min_accepted_share}; see {out / 'quarantine.parquet'}"
        )
