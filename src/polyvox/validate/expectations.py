"""The Great Expectations suite over the raw manifest joined with its audio probes.

Each row-level expectation carries the quarantine reason it stands for (``meta.reason``), in
the order reasons are reported: a row's reason is the first expectation it fails. Table-level
expectations are ``meta.critical``: when one fails, the whole stage fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from polyvox.config import ValidateSection
from polyvox.corpus.schema import MANIFEST_COLUMNS

SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SUITE_NAME = "raw_manifest"


@dataclass(frozen=True)
class Check:
    reason: str
    expectation: object  # a great_expectations Expectation
    explain: str  # how to describe a failing row; formatted with the row's values


def checks(cfg: ValidateSection) -> list[Check]:
    import great_expectations.expectations as gxe

    c = cfg
    rows = [
        Check("parse_error", gxe.ExpectColumnValuesToBeNull(column="parse_error"), "{parse_error}"),
        Check("unsafe_id", gxe.ExpectColumnValuesToMatchRegex(column="id", regex=SAFE_ID),
              "id {id!r} is not a safe file name"),
        Check("duplicate_id", gxe.ExpectColumnValuesToBeNull(column="duplicate_of"),
              "id {id!r} already used by row {duplicate_of}"),
        Check("missing_speaker", gxe.ExpectColumnValuesToNotBeNull(column="speaker"), "no speaker"),
        Check("empty_text", gxe.ExpectColumnValuesToNotBeNull(column="text"), "no transcript text"),
        Check("undecodable_text", gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex="\ufffd"),
              "transcript has undecodable characters"),
        Check("text_too_long", gxe.ExpectColumnValueLengthsToBeBetween(column="text", max_value=c.max_text_length),
              f"transcript longer than validate.max_text_length {c.max_text_length}"),
        Check("unknown_sample_rate", gxe.ExpectColumnValuesToNotBeNull(column="sample_rate"),
              "sample rate unknown ({probe_error})"),
        Check("unknown_channels", gxe.ExpectColumnValuesToNotBeNull(column="channels"), "channel count unknown"),
        Check("undecodable_audio", gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
              "audio cannot be decoded: {decode_error}"),
        Check("non_finite_samples", gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
              "audio has NaN or infinite samples"),
        Check("sample_rate_too_low", gxe.ExpectColumnValuesToBeBetween(column="sample_rate", min_value=c.min_sample_rate),
              f"sample rate {{sample_rate}} Hz below validate.min_sample_rate {c.min_sample_rate}"),
        Check("duration_out_of_bounds",
              gxe.ExpectColumnValuesToBeBetween(column="duration", min_value=c.min_duration, max_value=c.max_duration),
              f"duration {{duration:.2f}} s outside [{c.min_duration}, {c.max_duration}]"),
        Check("silent", gxe.ExpectColumnValuesToBeBetween(column="speech_ratio", min_value=c.min_speech_ratio),
              f"speech activity {{speech_ratio:.3f}} below validate.min_speech_ratio {c.min_speech_ratio}"),
        Check("clipped", gxe.ExpectColumnValuesToBeBetween(column="clipping_ratio", max_value=c.max_clipping_ratio),
              f"clipping ratio {{clipping_ratio:.4f}} above validate.max_clipping_ratio {c.max_clipping_ratio}"),
        Check("noisy", gxe.ExpectColumnValuesToBeBetween(column="snr_db", min_value=c.min_snr_db),
              f"SNR estimate {{snr_db:.1f}} dB below validate.min_snr_db {c.min_snr_db}"),
        Check("duplicate_audio", gxe.ExpectColumnValuesToBeNull(column="duplicate_audio_of"),
              "same audio as row {duplicate_audio_of}"),
    ]
    if c.asr_check:
        rows.append(Check("transcript_mismatch", gxe.ExpectColumnValuesToBeBetween(column="cer", max_value=c.max_cer),
                          f"{{asr_judge}} heard {{asr_hypothesis!r}}: CER {{cer:.2f}} above validate.max_cer {c.max_cer}"))
    for check in rows:
        check.expectation.meta = {"reason": check.reason, "critical": False}
    return rows


def critical_expectations(manifest_columns: list[str]) -> list[object]:
    import great_expectations.expectations as gxe

    found = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="speaker", min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, *PROBE_COLUMNS], exact_match=False),
    ]
    for expectation in found:
        expectation.meta = {"critical": True}
    return found


PROBE_COLUMNS = ["decodable", "finite", "clipping_ratio", "snr_db", "speech_ratio", "duplicate_of", "duplicate_audio_of"]


@dataclass
class SuiteRun:
    failing: dict[str, list[int]]  # reason -> rows failing it
    critical_failures: list[str]
    success: bool
    docs: Path | None


def run_suite(table: pd.DataFrame, cfg: ValidateSection, gx_root: Path) -> SuiteRun:
    """Validate ``table`` (index = row number) with a file-backed GX context under ``gx_root``."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx_root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=gx_root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_pandas("polyvox")
    asset = next((a for a in source.assets if a.name == "manifest"), None) or source.add_dataframe_asset("manifest")
    batch = next((b for b in asset.batch_definitions if b.name == "whole"), None) or asset.add_batch_definition_whole_dataframe("whole")

    suite_checks = checks(cfg)
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for check in suite_checks:
        suite.add_expectation(check.expectation)
    for expectation in critical_expectations(list(table.columns)):
        suite.add_expectation(expectation)
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=SUITE_NAME, validation_definitions=[definition], actions=[UpdateDataDocsAction(name="data_docs")],
                      result_format={"result_format": "COMPLETE"})
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": table})
    (result,) = outcome.run_results.values()

    failing: dict[str, list[int]] = {}
    critical: list[str] = []
    for item in result.results:
        meta = item.expectation_config.meta or {}
        if meta.get("critical"):
            if not item.success:
                critical.append(f"{item.expectation_config.type}: {item.result.get('observed_value')}")
            continue
        rows = [int(i) for i in (item.result.get("unexpected_index_list") or [])]
        if item.exception_info and item.exception_info.get("raised_exception"):
            critical.append(f"{item.expectation_config.type} raised: {item.exception_info.get('exception_message')}")
        failing[meta["reason"]] = rows
    docs = gx_root / "gx/uncommitted/data_docs/local_site/index.html"
    return SuiteRun(failing, critical, bool(outcome.success), docs if docs.is_file() else None)
