"""Data-quality checks on ``agent_metrics``, computed in-step, before anything is published.

Each check is one small function from what the step holds, a chunk of days, to a
:class:`Finding` on each day (whether the day fails it, and metadata to act on), recorded against
the day's partition. The checks on the metric rows are here, those on the source's counts in
``source_checks``. ERROR checks block publication: if one fails on any day, the run records every
evaluation and publishes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from collections.abc import Sequence

import dagster as dg

from agent_metrics_pipeline.aggregate.metrics import (
    escaped_formula,
    formula_like,
    in_day_and_agent_order,
    may_be_formula,
)
from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy, Measurement
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.quality import usual_volume
from agent_metrics_pipeline.quality.findings import (
    ERROR,
    WARN,
    Check,
    Evidence,
    Finding,
    days_in,
    offending_rows,
)
from agent_metrics_pipeline.quality.source_checks import (
    excluded_source_rows,
    no_duplicate_call_ids,
    status_spellings,
    usual_days,
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
) -> dict[dt.date, Finding]:
    """Under invalid_rows=fail, unmeasurable source calls fail the check as bad metrics do."""
    quality, fails = evidence.quality, evidence.measurement.fails_on_invalid_rows
    findings = {}
    for day, rows in evidence.rows_by_day(offending).items():
        calls = quality.calls(day, count_columns)
        blocked = fails and calls > 0
        findings[day] = offending_rows(
            rows,
            source_days=[day] if blocked else (),
            source_offending_days=keys_of([day] if calls else []),
            sample_call_ids=quality.sample_ids(day, sample_name) if blocked else [],
            **{count_key: calls},
        )
    return findings


def no_nulls(evidence: Evidence) -> dict[dt.date, Finding]:
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(pl.col(METRIC_COLUMNS).is_null())),
        ["null_agent_calls", "null_duration_calls"],
        "source_null_agent_or_duration_calls",
        "null_call_ids",
    )


def no_negative_values(evidence: Evidence) -> dict[dt.date, Finding]:
    lengths_and_count = pl.col("avg_call_length_sec", "p90_call_length_sec", "total_calls")
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(lengths_and_count.fill_null(0) < 0)),
        ["negative_duration_calls"],
        "source_negative_duration_calls",
        "negative_call_ids",
    )


def finite_durations(evidence: Evidence) -> dict[dt.date, Finding]:
    lengths = pl.col("avg_call_length_sec", "p90_call_length_sec")
    return _metrics_and_unmeasurable_calls(
        evidence,
        evidence.metrics.filter(pl.any_horizontal(~lengths.fill_null(0).is_finite())),
        ["non_finite_duration_calls"],
        "source_non_finite_duration_calls",
        "non_finite_call_ids",
    )


def plausible_ranges(evidence: Evidence) -> dict[dt.date, Finding]:
    metrics, max_length = evidence.metrics, evidence.measurement.max_call_length_sec
    offending = metrics.filter(
        ~pl.col("avg_call_length_sec").is_between(0, max_length)
        | ~pl.col("p90_call_length_sec").is_between(0, max_length)
        | (pl.col("total_calls") < 1)
    )
    findings = {}
    for day, rows in evidence.rows_by_day(offending).items():
        calls = evidence.quality.calls(day, ["overlong_calls"])
        findings[day] = offending_rows(
            rows,
            source_days=[day] if calls else (),
            max_call_length_sec=max_length,
            source_calls_over_max=calls,
            source_offending_days=keys_of([day] if calls else []),
            sample_call_ids=evidence.quality.sample_ids(day, "overlong_call_ids"),
            longest_p90_call_length_sec=evidence.day_totals[day].longest_p90_call_length_sec or 0.0,
        )
    return findings


def one_row_per_agent_per_day(evidence: Evidence) -> dict[dt.date, Finding]:
    # Sorted, a repeated (day, agent) is a row equal to a neighbour: a tenth of hashing each.
    # Rows each strictly after the one before, as the step holds them, repeat none unsorted.
    def equal_to(step: int) -> pl.Expr:
        return pl.col("date").eq_missing(pl.col("date").shift(step)) & pl.col(
            "agent_id"
        ).eq_missing(pl.col("agent_id").shift(step))

    rows, outside = evidence.metrics, dated_outside(evidence.days)
    if in_day_and_agent_order(rows, strictly=True):
        offending = rows.filter(outside)
    else:
        rows = rows.sort("date", "agent_id")
        offending = rows.filter(equal_to(1) | equal_to(-1) | outside)
    return {day: offending_rows(found) for day, found in evidence.rows_by_day(offending).items()}


def calls_present(evidence: Evidence) -> dict[dt.date, Finding]:
    days_with_rows = set(days_in(evidence.metrics))
    findings = {}
    for day, totals in evidence.day_totals.items():
        empty = [] if day in days_with_rows else [day]
        findings[day] = Finding(
            failing_days=empty,
            metadata={"empty_days": keys_of(empty), "calls_counted": int(totals.calls)},
        )
    return findings


def min_calls_per_agent(evidence: Evidence) -> dict[dt.date, Finding]:
    minimum = evidence.measurement.min_calls_per_agent
    few = evidence.metrics.filter(pl.col("total_calls") < minimum)
    return {
        day: offending_rows(rows, min_calls_per_agent=minimum)
        for day, rows in evidence.rows_by_day(few).items()
    }


def spreadsheet_safe_agent_ids(evidence: Evidence) -> dict[dt.date, Finding]:
    """Agent ids a spreadsheet would run as a formula (CSV injection), unless escaped."""
    agent_id = pl.col("agent_id")
    candidates = evidence.metrics.filter(may_be_formula(agent_id))
    risky = evidence.rows_by_day(candidates.filter(formula_like(agent_id)))
    escaped = evidence.rows_by_day(candidates.filter(escaped_formula(agent_id)))
    return {
        day: offending_rows(
            risky[day],
            spreadsheet_safety=evidence.measurement.spreadsheet_safety.value,
            escaped_agent_ids=escaped[day].height,
        )
        for day in evidence.days
    }


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
