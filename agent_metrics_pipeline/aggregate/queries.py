"""The metrics reads: one aggregation per (day, agent), pushed down to ClickHouse; the count of
each day's calls that sizes the work; and, only on days with something to show, the calls the
metrics could not measure or count by kind, a few of their call ids, and the statuses spelled
like a counted one (reading every call's id costs more than the rest of the aggregation).

ClickHouse returns one row per agent and day, so the pipeline's memory follows the number of
agents, never the number of calls. Identifiers come from a validated :class:`SourceTable`;
values that come from settings (timezone, statuses, limits) are bound as query parameters, and
days and their bounds, made here from dates, are written out (see ``query_parts``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from agent_metrics_pipeline.aggregate.metrics import (
    CALLS_PER_COUNTED_STATUS,
    UNCOUNTED_VARIANT_CALLS,
    UNUSUAL_CALLS,
)
from agent_metrics_pipeline.aggregate.query_parts import (
    COPIES,
    DayWindow,
    by_day,
    classified_calls,
    measurement_parameters,
    window_filter,
    written_window,
)
from agent_metrics_pipeline.clickhouse.syntax import window_parameters
from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy
from agent_metrics_pipeline.core.names import SAMPLE_SIZE

# Conditions on a classified call (see classified_calls).
MEASURABLE = "measurable"
UNMEASURABLE = "NOT measurable"
UNUSUAL = "NOT (measurable AND NOT overlong)"

if TYPE_CHECKING:
    from agent_metrics_pipeline.aggregate.chunking import AgentShard
    from agent_metrics_pipeline.core.measurement import Measurement


def build_metrics_query(
    measurement: Measurement,
    days: Sequence[DayWindow],
    timezone: str,
    shard: AgentShard | None = None,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """Per (day, agent) metrics over ``days``, and the count of calls they leave out, for the
    agents of ``shard`` only when one is given, reading the latest row versions only when
    ``final``.

    Each day is read in its own window (see :func:`by_day`), a range predicate on the start
    column so ClickHouse can use the table's primary key. No call's start is converted to a
    date in ``timezone``, and each day's agents are grouped apart: at 50 k agents a day, a
    seventh less time than grouping ten days' together by each call's date.

    Metrics are computed over measurable calls only: an agent (not NULL, not empty) and a
    finite, non-negative duration. ``unusual_calls`` counts, in the same scan, every call read
    that the checks must look at: unmeasurable, longer than ``max_call_length_sec``, or of a
    status spelled like a counted one (see :func:`status_spelling`) without being one. Almost
    every day has none, and one count costs a tenth of the query less than the five kinds
    apart: only a chunk that has some sends :func:`build_quality_query`, which reads only them.
    Calls without an agent form their own group.

    Every source column is qualified with the table alias, so a source column named like an
    output (``date``, say) is never mistaken for it. The average sums whole microseconds as
    integers: exact, so it does not depend on how ClickHouse splits the work between threads,
    and re-running a day yields identical bytes. Adding 0 to the rounded p90 turns the -0.0
    of calls stored with a length of -0.0 into 0.0.

    ``duplicate_calls`` counts the agent's rows that repeat a call id: counted as they are, or
    left out when the measurement counts each call once (see :func:`_calls_counted_once`).

    ``calls_per_counted_status`` holds the measurable calls of each counted status, in the
    measurement's order (the quality query counts the others). Filtering on the spelling costs what
    filtering on the status does on a ``LowCardinality`` column (ClickHouse computes it once
    per distinct status), and about a fifth more on a plain ``String`` one.
    """

    shard_filter = _shard_filter(measurement, shard)

    def of_day(day: DayWindow) -> str:
        return f"""
{classified_calls(measurement)}
SELECT
    toDate('{day.day.isoformat()}') AS date,
    call_agent AS agent_id,
    countIf(measurable) AS total_calls,
    round(
        sumIf(toInt64(round(if(measurable, call_length, 0) * 1000000)), measurable)
            / total_calls / 1000000,
        2
    ) AS avg_call_length_sec,
    round(quantileExactInclusiveIf(0.9)(call_length, measurable), 2) + 0 AS p90_call_length_sec,
    countIf({UNUSUAL}) AS {UNUSUAL_CALLS},
    {_duplicate_count(measurement)} AS duplicate_calls,
    {_calls_per_status(measurement, MEASURABLE)} AS {CALLS_PER_COUNTED_STATUS}
{window_filter(measurement, final, spelled=True, day=day)}{shard_filter}
GROUP BY agent_id
"""

    sql, parameters = by_day(measurement, days, timezone, of_day)
    if shard is not None:
        parameters |= {"agent_shard": shard.index, "agent_shards": shard.count}
    return sql, parameters


def _duplicate_count(measurement: Measurement) -> str:
    if measurement.duplicate_calls is DuplicateCallsPolicy.IGNORE:
        return "toUInt64(0)"
    if measurement.counts_each_call_once:
        return f"toUInt64(sumIf(src.{COPIES}, counted) - countIf(counted))"
    return f"countIf(counted) - uniqExactIf(src.`{measurement.source.column('call_id')}`, counted)"


def _calls_per_status(measurement: Measurement, among: str) -> str:
    """The calls of each counted status that are ``among`` (a condition on each call), as an
    array in the measurement's order. The measurable calls of the one counted status are the
    agent's counted calls."""
    if among == MEASURABLE and len(measurement.statuses) == 1:
        return "[total_calls]"
    status = f"src.`{measurement.source.column('status')}`"
    counts = ", ".join(
        f"countIf({among} AND {status} = {{statuses:Array(String)}}[{position}])"
        for position in range(1, len(measurement.statuses) + 1)
    )
    return f"[{counts}]"


def _shard_filter(measurement: Measurement, shard: AgentShard | None) -> str:
    """The calls of one agent shard. A missing and an empty agent hash alike, so the calls
    without an agent (one group of the metrics query) fall in one shard together."""
    if shard is None:
        return ""
    agent = f"src.`{measurement.source.column('agent_id')}`"
    agent_hash = f"cityHash64(ifNull(toString({agent}), ''))"
    return f"""
  AND {agent_hash} % {{agent_shards:UInt32}} = {{agent_shard:UInt32}}"""


def build_quality_query(
    measurement: Measurement,
    days: Sequence[DayWindow],
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """Per day that has any, the calls the metrics query counted as unusual: by kind, by
    counted status, and a few call ids of each kind, each day read as the metrics query reads
    it. Run only on a chunk that has unusual calls; reading only those, it costs little more
    than finding them.

    Counts of the unmeasurable calls (no agent, no duration, negative, not finite) are of
    calls with a counted status; ``overlong_calls`` are measurable calls longer than
    ``max_call_length_sec``; ``uncounted_variant_calls`` are of a status spelled like a
    counted one without being one. ``calls_per_counted_status`` holds the unmeasurable calls
    of each counted status: the metrics query counts the measurable ones.
    """
    source = measurement.source
    call_id, duration = (f"src.`{source.column(role)}`" for role in ("call_id", "duration_sec"))
    without_length = f"counted AND (call_agent IS NULL OR {duration} IS NULL)"

    def of_day(day: DayWindow) -> str:
        return f"""
{classified_calls(measurement)}
SELECT
    toDate('{day.day.isoformat()}') AS date,
    countIf(counted AND call_agent IS NULL) AS null_agent_calls,
    countIf(counted AND call_agent IS NOT NULL AND {duration} IS NULL) AS null_duration_calls,
    countIf(negative) AS negative_duration_calls,
    countIf(non_finite) AS non_finite_duration_calls,
    countIf(overlong) AS overlong_calls,
    {_calls_per_status(measurement, UNMEASURABLE)} AS {CALLS_PER_COUNTED_STATUS},
    countIf(NOT counted) AS {UNCOUNTED_VARIANT_CALLS},
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), {without_length}) AS null_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), negative) AS negative_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), non_finite) AS non_finite_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), overlong) AS overlong_call_ids
{window_filter(measurement, final, spelled=True, day=day)}
  AND {UNUSUAL}
GROUP BY date
"""

    return by_day(measurement, days, timezone, of_day, order_by="date")


def build_calls_per_day_query(
    measurement: Measurement,
    days: list[tuple[dt.date, dt.datetime, dt.datetime]],
    timezone: str,
    by_primary_key: bool,
) -> tuple[str, dict[str, object]]:
    """The calls the source holds on each of ``days`` (its date and ``[start, end)`` bounds),
    any status, as stored: what sizes the work, since the engine reads them all.

    ``by_primary_key``, when the table is sorted by the start column, counts each day on its
    own: ClickHouse answers a count over a range of its sorting key from the key's index,
    reading only the granules at the range's ends (a few milliseconds a day, whatever its
    size). Otherwise one pass over the start column of the window dates each call.
    """
    started_at = f"src.`{measurement.source.column('started_at')}`"
    relation = f"{measurement.source.qualified_name} AS src"
    if by_primary_key or len(days) == 1:
        # The days and their bounds are written out, not bound: a hundred days' parameters
        # would make an HTTP request's address longer than proxies take. They are made here,
        # from dates, never from input text.
        branches = []
        for day, start, end in days:
            since, until = written_window(start, end)
            branches.append(
                f"""SELECT toDate('{day.isoformat()}') AS date, count() AS calls FROM {relation}
WHERE {started_at} >= {since}
  AND {started_at} < {until}"""
            )
        return "\nUNION ALL\n".join(branches), {}
    sql = f"""
SELECT toDate({started_at}, {{timezone:String}}) AS date, count() AS calls
FROM {relation}
WHERE {started_at} >= {{window_start:DateTime64(3, 'UTC')}}
  AND {started_at} < {{window_end:DateTime64(3, 'UTC')}}
GROUP BY date
"""
    return sql, window_parameters(days[0][1], days[-1][2], timezone)


def build_duplicate_samples_query(
    measurement: Measurement,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """The first few call ids (in sort order) that counted rows of a day repeat, one row per
    day that has any: repeated for the same agent, as the metrics query counts them, or for any
    agent when each call counts once. Run only when the metrics query counted such rows (as
    stored: a call id repeated across days is no repeat)."""
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
    days: Sequence[DayWindow],
    timezone: str,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """Calls per day of each status spelled like a counted one without being one (``answered``
    for ``Answered``), each day read as the metrics query reads it. Run only when the quality
    query counted such calls."""
    status = f"src.`{measurement.source.column('status')}`"

    def of_day(day: DayWindow) -> str:
        return f"""
SELECT toDate('{day.day.isoformat()}') AS date, toString({status}) AS status, count() AS calls
{window_filter(measurement, final, spelled=True, day=day)}
  AND {status} NOT IN {{statuses:Array(String)}}
GROUP BY status
"""

    return by_day(measurement, days, timezone, of_day, order_by="date, status")
