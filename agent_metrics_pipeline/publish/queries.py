"""The metrics reads: one aggregation per (day, agent), pushed down to ClickHouse, and the
count of each day's calls that sizes the work.

ClickHouse returns one row per agent and day, so the pipeline's memory follows the number of
agents, never the number of calls. Identifiers come from a validated :class:`SourceTable`;
every value (window, timezone, statuses) is bound as a query parameter.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from agent_metrics_pipeline.clickhouse.parameters import utc_literal, window_parameters
from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy, Measurement
from agent_metrics_pipeline.publish.chunking import AgentShard
from agent_metrics_pipeline.publish.metrics import (
    CALLS_PER_COUNTED_STATUS,
    UNCOUNTED_VARIANT_CALLS,
)

# The rows of a counted status behind each call, when each call counts once.
COPIES = "counted_rows_of_call"


def _date_of_call(
    started_at: str, window_start: dt.datetime, window_end: dt.datetime, timezone: str
) -> str:
    """The day a call belongs to, in ``timezone``. A window of exactly one day gives every call
    that day, without converting each row's start: that conversion is a tenth of the metrics
    query's time."""
    local = ZoneInfo(timezone)
    start, end = window_start.astimezone(local), window_end.astimezone(local)
    one_day = (
        start.timetz().replace(tzinfo=None) == dt.time()
        and end.timetz().replace(tzinfo=None) == dt.time()
        and end.date() == start.date() + dt.timedelta(days=1)
    )
    if one_day:
        return "toDate({window_start:DateTime64(3, 'UTC')}, {timezone:String})"
    return f"toDate({started_at}, {{timezone:String}})"


def build_metrics_query(
    measurement: Measurement,
    window_start: dt.datetime,
    window_end: dt.datetime,
    timezone: str,
    shard: AgentShard | None = None,
    final: bool = False,
) -> tuple[str, dict[str, object]]:
    """Per (day, agent) metrics over ``[window_start, window_end)`` plus source-quality counts,
    for the agents of ``shard`` only when one is given, reading the latest row versions only
    when ``final``.

    A call belongs to the day its start falls in, in ``timezone``. The filter is a range
    predicate on the start column so ClickHouse can use the table's primary key.

    Metrics are computed over measurable calls only: an agent (not NULL, not empty) and a
    finite, non-negative duration. The counts of unmeasurable calls, and of measurable calls
    longer than ``max_call_length_sec``, ride along in the same scan, so the checks can decide
    whether the day may be published (their call ids come from :func:`build_samples_query`).
    Calls without an agent form their own group.

    Every source column is qualified with the table alias, so a source column named like an
    output (``date``, say) is never mistaken for it. The average sums whole microseconds as
    integers: exact, so it does not depend on how ClickHouse splits the work between threads,
    and re-running a day yields identical bytes. Adding 0 to the rounded p90 turns the -0.0
    of calls stored with a length of -0.0 into 0.0.

    ``duplicate_calls`` counts the agent's rows that repeat a call id: counted as they are, or
    left out when the measurement counts each call once (see :func:`_calls_counted_once`).

    The scan also reads the calls whose status is spelled like a counted one (see
    :func:`status_spelling`) without being one: they count nowhere but in
    ``uncounted_variant_calls``, so the ``status_spellings`` check needs no scan of its own
    (``sample_queries`` names the variants, only on a day that has any);
    ``calls_per_counted_status`` holds the calls of each counted status, in the measurement's
    order. Filtering on the spelling costs what filtering on the status does on a
    ``LowCardinality`` column (ClickHouse computes it once per distinct status), and about a
    fifth more on a plain ``String`` one.
    """
    source = measurement.source
    started_at, duration = (
        f"src.`{source.column(role)}`" for role in ("started_at", "duration_sec")
    )
    sql = f"""
{classified_calls(measurement)}
SELECT
    {_date_of_call(started_at, window_start, window_end, timezone)} AS date,
    call_agent AS agent_id,
    countIf(measurable) AS total_calls,
    round(
        sumIf(toInt64(round(if(measurable, call_length, 0) * 1000000)), measurable)
            / total_calls / 1000000,
        2
    ) AS avg_call_length_sec,
    round(quantileExactInclusiveIf(0.9)(call_length, measurable), 2) + 0 AS p90_call_length_sec,
    countIf(counted AND call_agent IS NULL) AS null_agent_calls,
    countIf(counted AND call_agent IS NOT NULL AND {duration} IS NULL) AS null_duration_calls,
    countIf(negative) AS negative_duration_calls,
    countIf(non_finite) AS non_finite_duration_calls,
    countIf(overlong) AS overlong_calls,
    {_duplicate_count(measurement)} AS duplicate_calls,
    [{_calls_per_status(measurement)}] AS {CALLS_PER_COUNTED_STATUS},
    countIf(NOT counted) AS {UNCOUNTED_VARIANT_CALLS}
{window_filter(measurement, final, spelled=True)}{_shard_filter(measurement, shard)}
GROUP BY date, agent_id
ORDER BY date, agent_id
"""
    parameters = measurement_parameters(measurement, window_start, window_end, timezone)
    if shard is not None:
        parameters |= {"agent_shard": shard.index, "agent_shards": shard.count}
    return sql, parameters


def _duplicate_count(measurement: Measurement) -> str:
    if measurement.duplicate_calls is DuplicateCallsPolicy.IGNORE:
        return "toUInt64(0)"
    if measurement.counts_each_call_once:
        return f"toUInt64(sumIf(src.{COPIES}, counted) - countIf(counted))"
    return f"countIf(counted) - uniqExactIf(src.`{measurement.source.column('call_id')}`, counted)"


def _calls_per_status(measurement: Measurement) -> str:
    status = f"src.`{measurement.source.column('status')}`"
    return ", ".join(
        f"countIf({status} = {{statuses:Array(String)}}[{position}])"
        for position in range(1, len(measurement.statuses) + 1)
    )


def _shard_filter(measurement: Measurement, shard: AgentShard | None) -> str:
    """The calls of one agent shard. A missing and an empty agent hash alike, so the calls
    without an agent (one group of the metrics query) fall in one shard together."""
    if shard is None:
        return ""
    agent = f"src.`{measurement.source.column('agent_id')}`"
    agent_hash = f"cityHash64(ifNull(toString({agent}), ''))"
    return f"""
  AND {agent_hash} % {{agent_shards:UInt32}} = {{agent_shard:UInt32}}"""


def classified_calls(measurement: Measurement) -> str:
    """How each call is classified, shared by the metrics and the samples queries."""
    source = measurement.source
    agent, duration, status = (
        f"src.`{source.column(role)}`" for role in ("agent_id", "duration_sec", "status")
    )
    return f"""WITH
    {status} IN {{statuses:Array(String)}} AS counted,
    nullIf({agent}, '') AS call_agent,
    assumeNotNull({duration}) AS call_length,
    counted AND call_agent IS NOT NULL AND {duration} IS NOT NULL AS has_length,
    has_length AND NOT isFinite(call_length) AS non_finite,
    has_length AND isFinite(call_length) AND call_length < 0 AS negative,
    has_length AND isFinite(call_length) AND call_length >= 0 AS measurable,
    measurable AND call_length > {{max_call_length_sec:Float64}} AS overlong"""


def window_filter(measurement: Measurement, final: bool, spelled: bool = False) -> str:
    """The source's calls of the window with a counted status (``spelled``: with a status
    spelled like a counted one), as ``src``."""
    source = measurement.source
    started_at, status = (f"src.`{source.column(role)}`" for role in ("started_at", "status"))
    relation = (
        f"{_calls_counted_once(measurement, final)} AS src"
        if measurement.counts_each_call_once
        else f"{source.qualified_name} AS src{' FINAL' if final else ''}"
    )
    of_status = (
        f"{status_spelling(status)} IN {{spellings:Array(String)}}"
        if spelled
        else f"{status} IN {{statuses:Array(String)}}"
    )
    return f"""FROM {relation}
WHERE {started_at} >= {{window_start:DateTime64(3, 'UTC')}}
  AND {started_at} < {{window_end:DateTime64(3, 'UTC')}}
  AND {of_status}"""


def status_spelling(status: str) -> str:
    """How ``status`` (an SQL expression) is spelled: without surrounding spaces, in lower case
    (A to Z only). :func:`spelling` is the same rule in Python, so each counted status always
    matches its own spelling.

    Every ClickHouse version has these two functions, and they cost little even on a plain
    ``String`` column (trimming tabs and line breaks too takes a regular expression, or a
    second argument servers before 25.4 lack, and tripled the filter's cost there); toString
    reads an ``Enum`` status as its name.
    """
    return f"lower(trimBoth(toString({status})))"


def spelling(status: str) -> str:
    """:func:`status_spelling` of a status given as text."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in status.strip(" "))


def _calls_counted_once(measurement: Measurement, final: bool) -> str:
    """One row per call id of the window, with the number of its rows of a counted status.

    Of rows sharing a call id, the one with the smallest hash of its other columns stands for
    the call: the same choice whatever order the rows come in, so a re-run publishes the same
    bytes. A call whose rows start on different sides of the window's bounds is counted in each
    window it has a row in.
    """
    source = measurement.source
    call_id = f"`{source.column('call_id')}`"
    others = [f"`{source.column(role)}`" for role in ("agent_id", "started_at", "duration_sec")]
    status = f"`{source.column('status')}`"
    fields = ", ".join([*others, status])
    unpacked = ", ".join(
        f"tupleElement(picked_row, {position}) AS {column}"
        for position, column in enumerate([*others, status], start=1)
    )
    started_at = others[1]
    return f"""(
    SELECT {call_id}, {unpacked}, {COPIES}
    FROM (
        SELECT
            {call_id},
            argMin(tuple({fields}), cityHash64(tuple({fields}))) AS picked_row,
            countIf({status} IN {{statuses:Array(String)}}) AS {COPIES}
        FROM {source.qualified_name}{" FINAL" if final else ""}
        WHERE {started_at} >= {{window_start:DateTime64(3, 'UTC')}}
          AND {started_at} < {{window_end:DateTime64(3, 'UTC')}}
        GROUP BY {call_id}
    )
)"""


def measurement_parameters(
    measurement: Measurement, window_start: dt.datetime, window_end: dt.datetime, timezone: str
) -> dict[str, object]:
    return {
        **window_parameters(window_start, window_end, timezone),
        "statuses": list(measurement.statuses),
        "spellings": sorted({spelling(status) for status in measurement.statuses}),
        "max_call_length_sec": float(measurement.max_call_length_sec),
    }


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
        sql = "\nUNION ALL\n".join(
            f"""SELECT toDate('{day.isoformat()}') AS date, count() AS calls FROM {relation}
WHERE {started_at} >= toDateTime64('{utc_literal(start)}', 3, 'UTC')
  AND {started_at} < toDateTime64('{utc_literal(end)}', 3, 'UTC')"""
            for day, start, end in days
        )
        return sql, {}
    sql = f"""
SELECT toDate({started_at}, {{timezone:String}}) AS date, count() AS calls
FROM {relation}
WHERE {started_at} >= {{window_start:DateTime64(3, 'UTC')}}
  AND {started_at} < {{window_end:DateTime64(3, 'UTC')}}
GROUP BY date
"""
    return sql, window_parameters(days[0][1], days[-1][2], timezone)
