"""The reads that run only on a day with something to show: a few call ids of each kind of call
the metrics could not measure or count, and the statuses spelled like a counted one.

Reading the call ids of every call costs more than the rest of the aggregation, and almost every
day has nothing to show: the metrics query's counts say when these are worth running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy, Measurement
from agent_metrics_pipeline.publish.metrics import SAMPLE_SIZE
from agent_metrics_pipeline.publish.queries import (
    classified_calls,
    measurement_parameters,
    window_filter,
)


def build_samples_query(
    measurement: Measurement,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """A few call ids of each kind of unmeasurable or overlong call, one row per day that has any.

    Run only when the metrics query counted such calls: reading the call ids of every call costs
    more than the rest of the aggregation, and almost every day has nothing to show.
    """
    source = measurement.source
    call_id, duration, started_at = (
        f"src.`{source.column(role)}`" for role in ("call_id", "duration_sec", "started_at")
    )
    sql = f"""
{classified_calls(measurement)}
SELECT
    toDate({started_at}, {{timezone:String}}) AS date,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), call_agent IS NULL OR {duration} IS NULL)
        AS null_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), negative) AS negative_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), non_finite) AS non_finite_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), overlong) AS overlong_call_ids
{window_filter(measurement, final)}
  AND NOT (measurable AND NOT overlong)
GROUP BY date
ORDER BY date
"""
    return sql, measurement_parameters(measurement, window_start, window_end, timezone)


def build_duplicate_samples_query(
    measurement: Measurement,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """The first few call ids (in sort order) that counted rows of a day repeat, one row per
    day that has any: repeated for the same agent, as the metrics query counts them, or for any
    agent when each call counts once. Run only when the metrics query counted such rows."""
    source = measurement.source
    call_id, agent, started_at = (
        f"src.`{source.column(role)}`" for role in ("call_id", "agent_id", "started_at")
    )
    per_agent = "" if measurement.counts_each_call_once else f", {agent}"
    as_stored = replace(measurement, duplicate_calls=DuplicateCallsPolicy.WARN)
    sql = f"""
SELECT date, groupArraySorted({SAMPLE_SIZE})(repeated_id) AS duplicate_call_ids
FROM (
    SELECT toDate({started_at}, {{timezone:String}}) AS date, toString({call_id}) AS repeated_id
    {window_filter(as_stored, final)}
    GROUP BY date, repeated_id{per_agent}
    HAVING count() > 1
)
GROUP BY date
ORDER BY date
"""
    return sql, measurement_parameters(measurement, window_start, window_end, timezone)


def build_status_variants_query(
    measurement: Measurement,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """Calls per day of each status spelled like a counted one without being one (``answered``
    for ``Answered``), read as the metrics query reads them. Run only when the metrics query
    counted such calls."""
    source = measurement.source
    started_at, status = (f"src.`{source.column(role)}`" for role in ("started_at", "status"))
    sql = f"""
SELECT toDate({started_at}, {{timezone:String}}) AS date, toString({status}) AS status,
    count() AS calls
{window_filter(measurement, final, spelled=True)}
  AND {status} NOT IN {{statuses:Array(String)}}
GROUP BY date, status
ORDER BY date, status
"""
    return sql, measurement_parameters(measurement, window_start, window_end, timezone)
