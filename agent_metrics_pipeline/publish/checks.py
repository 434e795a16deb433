"""Data-quality checks on ``agent_metrics``, computed in-step, before anything is published.

Each check is one small function from what the step holds to a :class:`Finding` (the days that
fail it, and metadata to act on), recorded against each day's partition. ERROR checks block
publication: if one fails on any day, the run records every evaluation and publishes nothing.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import dagster as dg

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy, Measurement
from agent_metrics_pipeline.core.names import SAMPLE_SIZE
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.publish import usual_volume
from agent_metrics_pipeline.publish.findings import (
    ERROR,
    WARN,
    Check,
    Evidence,
    Finding,
    Verdict,
    days_in,
    offending_rows,
    source_counts,
)
from agent_metrics_pipeline.publish.metrics import (
    DUPLICATE_COUNT,
    calls_per_status,
    escaped_formula,
    formula_like,
)
from agent_metrics_pipeline.storage.published_format import METRIC_COLUMNS, dated_outside

NO_NULLS = "no_nulls"
NO_NEGATIVE_VALUES = "no_negative_values"
FINITE_DURATIONS = "finite_durations"
PLAUSIBLE_RANGES = "plausible_ranges"
ONE_ROW_PER_AGENT_PER_DAY = "one_row_per_agent_per_day"
CALLS_PRESENT = "calls_present"
EXCLUDED_SOURCE_ROWS = "excluded_source_rows"
MIN_CALLS_PER_AGENT = "min_calls_per_agent"
STATUS_SPELLINGS = "status_spellings"
NO_DUPLICATE_CALL_IDS = "no_duplicate_call_ids"
SPREADSHEET_SAFE_AGENT_IDS = "spreadsheet_safe_agent_ids"


def _metrics_and_unmeasurable_calls(
    evidence: Evidence,
    offending: pl.DataFrame,
    count_columns: Sequence[str],
    count_key: str,
    sample_name: str,
) -> Finding:
    """Under invalid_rows=fail, unmeasurable source calls fail the check as bad metrics do."""
    calls, days = source_counts(evidence.quality, count_columns)
    blocked = evidence.measurement.fails_on_invalid_rows and calls > 0
    return offending_rows(
        offending,
        source_days=days if blocked else (),
        source_offending_days=keys_of(days),
        sample_call_ids=evidence.quality.sample_ids(sample_name) if blocked else [],
        **{count_key: calls},
    )


def no_nulls(evidence: Evidence) -> Finding:
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(pl.col(METRIC_COLUMNS).is_null())),
        ["null_agent_calls", "null_duration_calls"],
        "source_null_agent_or_duration_calls",
        "null_call_ids",
    )


def no_negative_values(evidence: Evidence) -> Finding:
    lengths_and_count = pl.col("avg_call_length_sec", "p90_call_length_sec", "total_calls")
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(lengths_and_count.fill_null(0) < 0)),
        ["negative_duration_calls"],
        "source_negative_duration_calls",
        "negative_call_ids",
    )


def finite_durations(evidence: Evidence) -> Finding:
    lengths = pl.col("avg_call_length_sec", "p90_call_length_sec")
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(~lengths.fill_null(0).is_finite())),
        ["non_finite_duration_calls"],
        "source_non_finite_duration_calls",
        "non_finite_call_ids",
    )


def plausible_ranges(evidence: Evidence) -> Finding:
    metrics, max_length = evidence.metrics, evidence.measurement.max_call_length_sec
    calls, days = source_counts(evidence.quality, ["overlong_calls"])
    return offending_rows(
        metrics.filter(
            ~pl.col("avg_call_length_sec").is_between(0, max_length)
            | ~pl.col("p90_call_length_sec").is_between(0, max_length)
            | (pl.col("total_calls") < 1)
        ),
        source_days=days,
        max_call_length_sec=max_length,
        source_calls_over_max=calls,
        source_offending_days=keys_of(days),
        sample_call_ids=evidence.quality.sample_ids("overlong_call_ids"),
        longest_p90_call_length_sec=metrics.get_column("p90_call_length_sec").max() or 0.0,
    )


def one_row_per_agent_per_day(evidence: Evidence) -> Finding:
    # Sorted, a repeated (day, agent) is a row equal to a neighbour: a tenth of hashing each.
    def equal_to(step: int) -> pl.Expr:
        return pl.col("date").eq_missing(pl.col("date").shift(step)) & pl.col(
            "agent_id"
        ).eq_missing(pl.col("agent_id").shift(step))

    rows = evidence.metrics.sort("date", "agent_id")
    return offending_rows(rows.filter(equal_to(1) | equal_to(-1) | dated_outside(evidence.days)))


def calls_present(evidence: Evidence) -> Finding:
    days_with_rows = set(days_in(evidence.metrics))
    empty_days = [day for day in evidence.days if day not in days_with_rows]
    return Finding(
        failing_days=empty_days,
        metadata={
            "empty_days": keys_of(empty_days),
            "calls_counted": int(evidence.metrics.get_column("total_calls").sum()),
        },
    )


def excluded_source_rows(evidence: Evidence) -> Finding:
    quality, excluding = evidence.quality, not evidence.measurement.fails_on_invalid_rows
    null_calls, null_days = source_counts(quality, ["null_agent_calls", "null_duration_calls"])
    negative_calls, negative_days = source_counts(quality, ["negative_duration_calls"])
    non_finite_calls, non_finite_days = source_counts(quality, ["non_finite_duration_calls"])
    days = sorted({*null_days, *negative_days, *non_finite_days}) if excluding else []
    samples = [
        *quality.sample_ids("null_call_ids"),
        *quality.sample_ids("negative_call_ids"),
        *quality.sample_ids("non_finite_call_ids"),
    ]
    return Finding(
        failing_days=days,
        metadata={
            "invalid_rows_policy": evidence.measurement.invalid_rows.value,
            "excluded_calls": quality.unmeasurable_calls if excluding else 0,
            "excluded_null_agent_or_duration_calls": null_calls if excluding else 0,
            "excluded_negative_duration_calls": negative_calls if excluding else 0,
            "excluded_non_finite_duration_calls": non_finite_calls if excluding else 0,
            "offending_days": keys_of(days),
            "sample_call_ids": samples[:SAMPLE_SIZE] if excluding else [],
        },
    )


def min_calls_per_agent(evidence: Evidence) -> Finding:
    minimum = evidence.measurement.min_calls_per_agent
    return offending_rows(
        evidence.metrics.filter(pl.col("total_calls") < minimum), min_calls_per_agent=minimum
    )


def status_spellings(evidence: Evidence) -> Finding:
    """A status that differs from a counted one only by letter case or surrounding spaces
    is most likely the same status, mistyped at the source: its calls are not counted."""
    counted = evidence.measurement.statuses
    variants = evidence.statuses.filter(~pl.col("status").is_in(counted))
    return Finding(
        failing_days=days_in(variants),
        metadata={
            "counted_statuses": list(counted),
            "statuses_seen": calls_per_status(evidence.statuses),
            "uncounted_variants": sorted(set(variants.get_column("status"))),
            "uncounted_variant_calls": int(variants.get_column("calls").sum()),
            "offending_days": keys_of(days_in(variants)),
        },
    )


def no_duplicate_call_ids(evidence: Evidence) -> Finding:
    """Rows of a counted status repeating a call id: a duplicated insert, or a row version a
    table has not merged away. Counted once, they are reported but fail nothing."""
    measurement = evidence.measurement
    if measurement.duplicate_calls is DuplicateCallsPolicy.IGNORE:
        return Finding(
            failing_days=[],
            metadata={
                "duplicate_calls_policy": measurement.duplicate_calls.value,
                "note": "Not looked at. AGENT_METRICS_DUPLICATE_CALLS=warn counts repeated "
                "call ids (about 4x the metrics query's time), count_once counts each once.",
            },
        )
    calls, days = source_counts(evidence.quality, [DUPLICATE_COUNT])
    return Finding(
        failing_days=[] if measurement.counts_each_call_once else days,
        metadata={
            "duplicate_calls_policy": measurement.duplicate_calls.value,
            "repeated_rows": calls,
            "repeated_rows_counted": 0 if measurement.counts_each_call_once else calls,
            "offending_days": keys_of(days),
            "sample_call_ids": evidence.quality.sample_ids("duplicate_call_ids"),
        },
    )


def spreadsheet_safe_agent_ids(evidence: Evidence) -> Finding:
    """Agent ids a spreadsheet would run as a formula (CSV injection), unless escaped."""
    agent_id = pl.col("agent_id")
    risky = evidence.metrics.filter(formula_like(agent_id))
    escaped = evidence.metrics.filter(escaped_formula(agent_id))
    return offending_rows(
        risky,
        spreadsheet_safety=evidence.measurement.spreadsheet_safety.value,
        escaped_agent_ids=escaped.height,
    )


def usual_days(evidence: Evidence) -> Finding:
    (day,), held = evidence.days, evidence.calls_held
    return Finding(*usual_volume.judge(day, held, evidence.measurement.usual_volume))


CHECKS = (
    Check(
        NO_NULLS,
        ERROR,
        "No NULL in any published column; under invalid_rows=fail, no counted source call with "
        "a NULL agent or duration.",
        no_nulls,
    ),
    Check(
        NO_NEGATIVE_VALUES,
        ERROR,
        "No negative metric; under invalid_rows=fail, no counted source call with a negative "
        "duration.",
        no_negative_values,
    ),
    Check(
        FINITE_DURATIONS,
        ERROR,
        "No NaN or infinite metric; under invalid_rows=fail, no counted source call with a NaN or "
        "infinite duration.",
        finite_durations,
    ),
    Check(
        PLAUSIBLE_RANGES,
        ERROR,
        "0 <= avg, p90 <= max call length; total_calls >= 1; no counted source call longer than "
        "the max call length.",
        plausible_ranges,
    ),
    Check(
        ONE_ROW_PER_AGENT_PER_DAY,
        ERROR,
        "One row per agent and day, every date one of the run's days.",
        one_row_per_agent_per_day,
    ),
    Check(
        CALLS_PRESENT,
        WARN,
        "Every day of the run has calls (an empty day still gets a header-only file).",
        calls_present,
    ),
    Check(
        EXCLUDED_SOURCE_ROWS,
        WARN,
        "Under invalid_rows=exclude, how many unmeasurable source calls were left out.",
        excluded_source_rows,
    ),
    Check(
        MIN_CALLS_PER_AGENT,
        WARN,
        "Agents with fewer calls on a day than the configured minimum.",
        min_calls_per_agent,
    ),
    Check(
        STATUS_SPELLINGS,
        WARN,
        "No call has a status that differs from a counted one only by case or surrounding "
        "spaces ('answered', 'Answered '): such calls are not counted.",
        status_spellings,
    ),
    Check(
        NO_DUPLICATE_CALL_IDS,
        WARN,
        "No counted call id repeated within an agent's day, looked for when "
        "AGENT_METRICS_DUPLICATE_CALLS is warn, fail (an ERROR check then) or count_once "
        "(within the day, each call counted once); not under the default, ignore.",
        no_duplicate_call_ids,
    ),
    Check(
        SPREADSHEET_SAFE_AGENT_IDS,
        WARN,
        "No published agent id starts with =, +, -, @, a tab or a carriage return, which a "
        "spreadsheet would run as a formula (AGENT_METRICS_SPREADSHEET_SAFETY=escape publishes "
        "them with a leading apostrophe).",
        spreadsheet_safe_agent_ids,
    ),
    Check(usual_volume.USUAL_VOLUME, WARN, usual_volume.DESCRIPTION, usual_days),
)
CHECK_DESCRIPTIONS = {check.name: check.description for check in CHECKS}
# Blocking by default (settings add no_duplicate_call_ids and usual_volume: checks_for).
BLOCKING_CHECKS = tuple(check.name for check in CHECKS if check.severity == ERROR)


def checks_for(measurement: Measurement) -> tuple[Check, ...]:
    """The checks, at the severities ``measurement`` asks for."""
    blocking = set()
    if measurement.duplicate_calls is DuplicateCallsPolicy.FAIL:
        blocking.add(NO_DUPLICATE_CALL_IDS)
    if measurement.usual_volume.hold_back:
        blocking.add(usual_volume.USUAL_VOLUME)
    return tuple(
        dataclasses.replace(check, severity=ERROR) if check.name in blocking else check
        for check in CHECKS
    )


def check_specs(
    asset_name: str, partitions_def: dg.PartitionsDefinition, measurement: Measurement
) -> list[dg.AssetCheckSpec]:
    """One spec per check, per day: each day's status shows on its own in the UI."""
    with warnings.catch_warnings():
        # Per-partition checks are a preview in 1.13 (pinned); the check tests pin them.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [check.spec(asset_name, partitions_def) for check in checks_for(measurement)]


def evaluate_checks(evidence: Evidence) -> list[Verdict]:
    """Every check on every day of the run, day by day, in the order of ``CHECKS``."""
    checks = checks_for(evidence.measurement)
    verdicts = []
    for day in evidence.days:
        day_evidence = evidence.for_day(day)
        verdicts.extend(check.evaluate(day_evidence) for check in checks)
    return verdicts
