"""The metrics query: one aggregation per (day, agent), pushed down to ClickHouse.

ClickHouse returns one row per agent and day, so the pipeline's memory follows the number of
agents, never the number of calls. Identifiers come from a validated :class:`SourceTable`;
every value (window, timezone, statuses) is bound as a query parameter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from agent_metrics_pipeline.config import SourceTable

CLICKHOUSE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def _utc_literal(moment: dt.datetime) -> str:
    """ClickHouse parses ``DateTime64(3, 'UTC')`` parameters from naive UTC text."""
    if moment.tzinfo is None:
        raise ValueError(f"window bound {moment!r} must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime(CLICKHOUSE_DATETIME_FORMAT)[:-3]


def build_metrics_query(
    source: SourceTable,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    statuses: Sequence[str],
    max_call_length_sec: float,
) -> tuple[str, dict[str, object]]:
    """Per (day, agent) metrics over ``[window_start, window_end)`` plus source-quality counts.

    A call belongs to the day its start falls in, in ``timezone``. The filter is a range
    predicate on the start column so ClickHouse can use the table's primary key.

    Metrics are computed over measurable calls only (an agent and a non-negative duration).
    The counts of unmeasurable calls ride along in the same scan so the checks can decide
    whether the day may be published; calls with a NULL agent form their own group. Calls
    longer than ``max_call_length_sec`` are counted too: they are implausible, not invalid.

    The average is taken over ``Decimal128(6)`` so the sum is exact and does not depend on how
    ClickHouse splits the work between threads: re-running a day yields identical bytes.
    """
    if not statuses:
        raise ValueError("at least one call status must be counted")
    call_id = f"`{source.column('call_id')}`"
    agent = f"`{source.column('agent_id')}`"
    started_at = f"`{source.column('started_at')}`"
    duration = f"`{source.column('duration_sec')}`"
    status = f"`{source.column('status')}`"
    sql = f"""
WITH {agent} IS NOT NULL AND {duration} IS NOT NULL AND {duration} >= 0 AS measurable
SELECT
    toDate({started_at}, {{timezone:String}}) AS date,
    {agent} AS agent_id,
    count() AS source_calls,
    countIf(measurable) AS total_calls,
    round(avgIf(toDecimal128(assumeNotNull({duration}), 6), measurable), 2) AS avg_call_length_sec,
    round(quantileExactInclusiveIf(0.9)(assumeNotNull({duration}), measurable), 2)
        AS p90_call_length_sec,
    countIf({duration} IS NULL) AS null_duration_calls,
    countIf({duration} < 0) AS negative_duration_calls,
    groupArrayIf(5)(toString({call_id}), NOT measurable) AS unmeasurable_call_ids,
    countIf({duration} > {{max_call_length_sec:Float64}}) AS overlong_calls,
    groupArrayIf(5)(toString({call_id}), {duration} > {{max_call_length_sec:Float64}})
        AS overlong_call_ids
FROM `{source.database}`.`{source.table}`
WHERE {started_at} >= {{window_start:DateTime64(3, 'UTC')}}
  AND {started_at} < {{window_end:DateTime64(3, 'UTC')}}
  AND {status} IN {{statuses:Array(String)}}
GROUP BY date, agent_id
ORDER BY date, agent_id
"""
    parameters: dict[str, object] = {
        "timezone": timezone,
        "window_start": _utc_literal(window_start),
        "window_end": _utc_literal(window_end),
        "statuses": list(statuses),
        "max_call_length_sec": float(max_call_length_sec),
    }
    return sql, parameters
