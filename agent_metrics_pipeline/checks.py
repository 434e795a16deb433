"""Data-quality checks on ``agent_metrics``, computed in-step, before anything is published.

ERROR checks block publication: if one fails, the asset records every check result and then
fails the run without handing the frame to the IO manager, so no file of that run is written.
WARN checks publish but flag. A range run yields one result per check for the whole range;
the offending days are named in its metadata.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import polars as pl

from agent_metrics_pipeline.config import InvalidRowsPolicy
from agent_metrics_pipeline.metrics import METRIC_COLUMNS, SAMPLE_SIZE, SourceQuality

NO_NULLS = "no_nulls"
NO_NEGATIVE_VALUES = "no_negative_values"
PLAUSIBLE_RANGES = "plausible_ranges"
ONE_ROW_PER_AGENT_PER_DAY = "one_row_per_agent_per_day"
CALLS_PRESENT = "calls_present"
EXCLUDED_SOURCE_ROWS = "excluded_source_rows"
MIN_CALLS_PER_AGENT = "min_calls_per_agent"

CHECK_DESCRIPTIONS = {
    NO_NULLS: "No NULL in any published column; under invalid_rows=fail, no counted source "
    "call with a NULL agent or duration.",
    NO_NEGATIVE_VALUES: "No negative metric; under invalid_rows=fail, no counted source call "
    "with a negative duration.",
    PLAUSIBLE_RANGES: "0 <= avg, p90 <= max call length; total_calls >= 1; no counted source "
    "call longer than the max call length.",
    ONE_ROW_PER_AGENT_PER_DAY: "One row per agent and day, every date one of the run's days.",
    CALLS_PRESENT: "Every day of the run has calls (an empty day still gets a header-only file).",
    EXCLUDED_SOURCE_ROWS: "Under invalid_rows=exclude, how many unmeasurable source calls were "
    "left out.",
    MIN_CALLS_PER_AGENT: "Agents with fewer calls on a day than the configured minimum.",
}
BLOCKING_CHECKS = (NO_NULLS, NO_NEGATIVE_VALUES, PLAUSIBLE_RANGES, ONE_ROW_PER_AGENT_PER_DAY)


def check_specs(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            name, asset=asset_name, description=description, blocking=name in BLOCKING_CHECKS
        )
        for name, description in CHECK_DESCRIPTIONS.items()
    ]


@dataclass(frozen=True)
class CheckThresholds:
    invalid_rows: InvalidRowsPolicy
    max_call_length_sec: float
    min_calls_per_agent: int


def _days(frame: pl.DataFrame) -> list[str]:
    if frame.is_empty():
        return []
    return sorted({str(day) for day in frame.get_column("date").to_list()})


def _agents(frame: pl.DataFrame) -> list[str]:
    return [str(agent) for agent in frame.get_column("agent_id").head(SAMPLE_SIZE).to_list()]


def _result(
    name: str,
    offending: pl.DataFrame,
    severity: dg.AssetCheckSeverity,
    source_failed: bool = False,
    **metadata: dg.RawMetadataValue,
) -> dg.AssetCheckResult:
    """A check over offending metric rows (and, optionally, source counts): passes when clean."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=offending.is_empty() and not source_failed,
        severity=severity,
        metadata={
            "offending_rows": offending.height,
            "offending_days": _days(offending),
            "sample_agent_ids": _agents(offending),
            **metadata,
        },
    )


def _source_counts(quality: SourceQuality, columns: Sequence[str]) -> tuple[int, list[str]]:
    per_day = quality.per_day.select("date", pl.sum_horizontal(columns).alias("calls"))
    offending = per_day.filter(pl.col("calls") > 0)
    return int(per_day.get_column("calls").sum()), _days(offending)


def evaluate_checks(
    metrics: pl.DataFrame,
    quality: SourceQuality,
    partition_keys: Sequence[str],
    thresholds: CheckThresholds,
) -> list[dg.AssetCheckResult]:
    """Every check of ``CHECK_DESCRIPTIONS``, in that order, from what the step already holds."""
    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    fail_on_invalid = thresholds.invalid_rows is InvalidRowsPolicy.FAIL
    null_ids = list(quality.samples["null_call_ids"])
    negative_ids = list(quality.samples["negative_call_ids"])

    null_rows = metrics.filter(pl.any_horizontal(pl.col(METRIC_COLUMNS).is_null()))
    null_calls, null_days = _source_counts(quality, ["null_agent_calls", "null_duration_calls"])
    negative_rows = metrics.filter(
        pl.any_horizontal(
            pl.col("avg_call_length_sec", "p90_call_length_sec", "total_calls").fill_null(0) < 0
        )
    )
    negative_calls, negative_days = _source_counts(quality, ["negative_duration_calls"])
    results = []

    # Under invalid_rows=fail, unmeasurable source calls fail these checks as well.
    for name, offending_rows, count_key, source_calls, source_days, sample_ids in (
        (
            NO_NULLS,
            null_rows,
            "source_null_agent_or_duration_calls",
            null_calls,
            null_days,
            null_ids,
        ),
        (
            NO_NEGATIVE_VALUES,
            negative_rows,
            "source_negative_duration_calls",
            negative_calls,
            negative_days,
            negative_ids,
        ),
    ):
        source_failed = fail_on_invalid and source_calls > 0
        results.append(
            _result(
                name,
                offending_rows,
                error,
                source_failed=source_failed,
                source_offending_days=source_days,
                sample_call_ids=sample_ids if source_failed else [],
                **{count_key: source_calls},
            )
        )

    max_length = thresholds.max_call_length_sec
    overlong_calls, overlong_days = _source_counts(quality, ["overlong_calls"])
    results.append(
        _result(
            PLAUSIBLE_RANGES,
            metrics.filter(
                ~pl.col("avg_call_length_sec").is_between(0, max_length)
                | ~pl.col("p90_call_length_sec").is_between(0, max_length)
                | (pl.col("total_calls") < 1)
            ),
            error,
            source_failed=overlong_calls > 0,
            max_call_length_sec=max_length,
            source_calls_over_max=overlong_calls,
            source_offending_days=overlong_days,
            sample_call_ids=list(quality.samples["overlong_call_ids"]),
            longest_p90_call_length_sec=metrics.get_column("p90_call_length_sec").max() or 0.0,
        )
    )

    run_days = [dt.date.fromisoformat(key) for key in partition_keys]
    results.append(
        _result(
            ONE_ROW_PER_AGENT_PER_DAY,
            metrics.filter(
                pl.struct("agent_id", "date").is_duplicated() | ~pl.col("date").is_in(run_days)
            ),
            error,
        )
    )

    days_with_rows = set(_days(metrics))
    empty_days = [key for key in partition_keys if key not in days_with_rows]
    results.append(
        dg.AssetCheckResult(
            check_name=CALLS_PRESENT,
            passed=not empty_days,
            severity=warn,
            metadata={"empty_days": empty_days, "days_in_run": len(partition_keys)},
        )
    )

    excluded = 0 if fail_on_invalid else quality.unmeasurable_calls
    results.append(
        dg.AssetCheckResult(
            check_name=EXCLUDED_SOURCE_ROWS,
            passed=excluded == 0,
            severity=warn,
            metadata={
                "invalid_rows_policy": thresholds.invalid_rows.value,
                "excluded_calls": excluded,
                "excluded_null_agent_or_duration_calls": 0 if fail_on_invalid else null_calls,
                "excluded_negative_duration_calls": 0 if fail_on_invalid else negative_calls,
                "offending_days": [] if fail_on_invalid else sorted({*null_days, *negative_days}),
                "sample_call_ids": []
                if fail_on_invalid
                else (null_ids + negative_ids)[:SAMPLE_SIZE],
            },
        )
    )

    results.append(
        _result(
            MIN_CALLS_PER_AGENT,
            metrics.filter(pl.col("total_calls") < thresholds.min_calls_per_agent),
            warn,
            min_calls_per_agent=thresholds.min_calls_per_agent,
        )
    )
    return results


def failed_blocking_checks(results: Sequence[dg.AssetCheckResult]) -> list[dg.AssetCheckResult]:
    return [
        result
        for result in results
        if not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    ]


def describe_failures(failures: Sequence[dg.AssetCheckResult]) -> str:
    """One line per failed check, naming the days involved, for the run's failure message."""
    lines = []
    for failure in failures:
        days = set()
        for key in ("offending_days", "source_offending_days"):
            value = failure.metadata.get(key)
            days.update(getattr(value, "value", value) or [])
        lines.append(f"{failure.check_name} (days: {', '.join(sorted(days)) or 'n/a'})")
    return "; ".join(lines)


FRESHNESS_TIMEZONE = "UTC"


def build_freshness_checks(
    asset: dg.AssetsDefinition, deadline_hour: int
) -> tuple[Sequence[dg.AssetChecksDefinition], dg.SensorDefinition]:
    """A check that fails when yesterday's partition is not materialized by ``deadline_hour``
    UTC, and the sensor that evaluates it.

    At the deadline, "yesterday" is the newest day that has ended in the partitions' timezone:
    the same day the 02:00 UTC schedule materialized an hour before, whatever that timezone.
    Dagster 1.13 prefers ``FreshnessPolicy``, but a policy only looks at the latest
    materialization of any partition: a backfill of old days would pass it. This check looks
    for the expected partition itself.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        checks = dg.build_time_partition_freshness_checks(
            assets=[asset],
            deadline_cron=f"0 {deadline_hour} * * *",
            timezone=FRESHNESS_TIMEZONE,
        )
        # Running by default: it only evaluates the check, it never launches a materialization.
        sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=checks, default_status=dg.DefaultSensorStatus.RUNNING
        )
    return checks, sensor
