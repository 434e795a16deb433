"""The SQL the pipeline sends: the metrics query, and the source table's DDL.

The metrics query is one aggregation per (day, agent), pushed down to ClickHouse.

ClickHouse returns one row per agent and day, so the pipeline's memory follows the number of
agents, never the number of calls. Identifiers come from a validated :class:`SourceTable`;
every value (window, timezone, statuses) is bound as a query parameter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import replace
from zoneinfo import ZoneInfo

from agent_metrics_pipeline.chunking import AgentShard
from agent_metrics_pipeline.config import DuplicateCallsPolicy, Measurement, SourceTable
from agent_metrics_pipeline.metrics import (
    CALLS_PER_COUNTED_STATUS,
    SAMPLE_SIZE,
    UNCOUNTED_VARIANT_CALLS,
)

CLICKHOUSE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# The rows of a counted status behind each call, when each call counts once.
COPIES = "counted_rows_of_call"
# What a status's spelling leaves out around it: ASCII whitespace, as Python and SQL write it.


def _utc_literal(moment: dt.datetime) -> str:
    """ClickHouse parses ``DateTime64(3, 'UTC')`` parameters from naive UTC text."""
    if moment.tzinfo is None:
        raise ValueError(f"window bound {moment!r} must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime(CLICKHOUSE_DATETIME_FORMAT)[:-3]


def _window_parameters(
    window_start: dt.datetime, window_end: dt.datetime, timezone: str
) -> dict[str, object]:
    return {
        "timezone": timezone,
        "window_start": _utc_literal(window_start),
        "window_end": _utc_literal(window_end),
    }


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
    (:func:`build_status_variants_query` names the variants, only on a day that has any);
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
{_classified_calls(measurement)}
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
{_window_filter(measurement, final, spelled=True)}{_shard_filter(measurement, shard)}
GROUP BY date, agent_id
ORDER BY date, agent_id
"""
    parameters = _measurement_parameters(measurement, window_start, window_end, timezone)
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
{_classified_calls(measurement)}
SELECT
    toDate({started_at}, {{timezone:String}}) AS date,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), call_agent IS NULL OR {duration} IS NULL)
        AS null_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), negative) AS negative_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), non_finite) AS non_finite_call_ids,
    groupArrayIf({SAMPLE_SIZE})(toString({call_id}), overlong) AS overlong_call_ids
{_window_filter(measurement, final)}
  AND NOT (measurable AND NOT overlong)
GROUP BY date
ORDER BY date
"""
    return sql, _measurement_parameters(measurement, window_start, window_end, timezone)


def _classified_calls(measurement: Measurement) -> str:
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
    {_window_filter(as_stored, final)}
    GROUP BY date, repeated_id{per_agent}
    HAVING count() > 1
)
GROUP BY date
ORDER BY date
"""
    return sql, _measurement_parameters(measurement, window_start, window_end, timezone)


def _window_filter(measurement: Measurement, final: bool, spelled: bool = False) -> str:
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


def _measurement_parameters(
    measurement: Measurement, window_start: dt.datetime, window_end: dt.datetime, timezone: str
) -> dict[str, object]:
    return {
        **_window_parameters(window_start, window_end, timezone),
        "statuses": list(measurement.statuses),
        "spellings": sorted({spelling(status) for status in measurement.statuses}),
        "max_call_length_sec": float(measurement.max_call_length_sec),
    }


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
{_window_filter(measurement, final, spelled=True)}
  AND {status} NOT IN {{statuses:Array(String)}}
GROUP BY date, status
ORDER BY date, status
"""
    return sql, _measurement_parameters(measurement, window_start, window_end, timezone)


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
WHERE {started_at} >= toDateTime64('{_utc_literal(start)}', 3, 'UTC')
  AND {started_at} < toDateTime64('{_utc_literal(end)}', 3, 'UTC')"""
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
    return sql, _window_parameters(days[0][1], days[-1][2], timezone)


def _fingerprint_select(measurement: Measurement, final: bool, with_parts: bool = False) -> str:
    """Per day, the number of counted calls and an order-independent hash of them.

    It covers exactly the rows the metrics read (counted statuses, day in the partitions'
    timezone) and every column that feeds them, so any insert, delete or update that could
    change a day's metrics changes its fingerprint. Call ids feed no metric and are the widest
    column, so they stay out (a quarter of the scan). Summing the row hashes (wrapping) keeps
    duplicate rows from cancelling out, as XOR would; hashing the row as one tuple lets a row
    with a NULL column count in the hash too. ``with_parts`` also names the table parts that
    hold each day's counted calls, for sources stored in parts (see ``source_parts``).
    """
    source = measurement.source
    agent, started_at, duration, status = (
        f"src.`{source.column(role)}`"
        for role in ("agent_id", "started_at", "duration_sec", "status")
    )
    parts = ",\n    arraySort(groupUniqArray(toString(src._part))) AS parts" if with_parts else ""
    return f"""
SELECT
    toDate({started_at}, {{timezone:String}}) AS date,
    count() AS calls,
    lower(hex(sumWithOverflow(cityHash64(tuple({agent}, {started_at}, {duration})))))
        AS row_hash{parts}
FROM {source.qualified_name} AS src{" FINAL" if final else ""}
WHERE ({{day_ranges}})
  AND {status} IN {{statuses:Array(String)}}
GROUP BY date
ORDER BY date
"""


def _day_ranges(
    measurement: Measurement, days: list[tuple[dt.datetime, dt.datetime]]
) -> tuple[str, dict[str, object]]:
    """A predicate on the start column for the days whose ``[start, end)`` bounds are given.

    Adjacent days merge into one range, so a window of days reads one contiguous slice of the
    table's primary key.
    """
    ranges: list[tuple[dt.datetime, dt.datetime]] = []
    for start, end in sorted(days):
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    started_at = f"src.`{measurement.source.column('started_at')}`"
    predicate = " OR ".join(
        f"({started_at} >= {{start_{i}:DateTime64(3, 'UTC')}} "
        f"AND {started_at} < {{end_{i}:DateTime64(3, 'UTC')}})"
        for i in range(len(ranges))
    )
    parameters: dict[str, object] = {}
    for i, (start, end) in enumerate(ranges):
        parameters[f"start_{i}"] = _utc_literal(start)
        parameters[f"end_{i}"] = _utc_literal(end)
    return predicate or "0", parameters


def build_fingerprint_query(
    measurement: Measurement,
    days: list[tuple[dt.datetime, dt.datetime]],
    timezone: str,
    final: bool = False,
    with_parts: bool = False,
) -> tuple[str, dict[str, object]]:
    """Fingerprints of the days whose ``[start, end)`` bounds are given, in one scan."""
    predicate, parameters = _day_ranges(measurement, days)
    sql = _fingerprint_select(measurement, final, with_parts).replace("{day_ranges}", predicate)
    return sql, {"timezone": timezone, "statuses": list(measurement.statuses), **parameters}


def fingerprint_basis(measurement: Measurement, timezone: str, final: bool) -> str:
    """A digest of what a fingerprint covers: the query (table, columns, FINAL), the counted
    statuses and the timezone. A fingerprint recorded on another basis is not comparable."""
    text = "\n".join(
        (_fingerprint_select(measurement, final), timezone, *sorted(measurement.statuses))
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PARTS_QUERY = """
SELECT
    groupArray(name) AS parts,
    groupArray(toUnixTimestamp(modification_time)) AS modified,
    toUnixTimestamp(now()) AS read_at,
    (
        SELECT count() FROM system.mutations
        WHERE database = {database:String} AND table = {table:String} AND NOT is_done
    ) AS pending_mutations,
    (
        SELECT toString(uuid) FROM system.tables
        WHERE database = {database:String} AND name = {table:String}
    ) AS table_uuid,
    (
        SELECT sorting_key FROM system.tables
        WHERE database = {database:String} AND name = {table:String}
    ) AS sorting_key
FROM system.parts
WHERE database = {database:String} AND table = {table:String} AND active
"""


def build_parts_of_days_query(
    measurement: Measurement, days: list[tuple[dt.datetime, dt.datetime]], timezone: str
) -> tuple[str, dict[str, object]]:
    """The parts holding any row of each of the days given, whatever its status or version:
    for a table read with FINAL, where a row of one part can hide a row of another."""
    predicate, parameters = _day_ranges(measurement, days)
    started_at = f"src.`{measurement.source.column('started_at')}`"
    sql = f"""
SELECT toDate({started_at}, {{timezone:String}}) AS date,
    arraySort(groupUniqArray(toString(src._part))) AS parts
FROM {measurement.source.qualified_name} AS src
WHERE ({predicate})
GROUP BY date
"""
    return sql, {"timezone": timezone, **parameters}


ACTIVE_PARTS_QUERY = """
SELECT count() AS still_active
FROM system.parts
WHERE database = {database:String} AND table = {table:String} AND active
  AND name IN {parts:Array(String)}
"""


def build_days_in_parts_query(
    measurement: Measurement,
    parts: list[str],
    days: list[tuple[dt.datetime, dt.datetime]],
    timezone: str,
    any_status: bool = False,
) -> tuple[str, dict[str, object]]:
    """Which of the named table parts hold counted calls (calls of any status, with
    ``any_status``) of which of the days given.

    The engine skips every other part without reading it, and the day ranges prune the
    granules of these.
    """
    source = measurement.source
    predicate, parameters = _day_ranges(measurement, days)
    started_at, status = (f"src.`{source.column(role)}`" for role in ("started_at", "status"))
    counted = "" if any_status else f"\n  AND {status} IN {{statuses:Array(String)}}"
    sql = f"""
SELECT DISTINCT toDate({started_at}, {{timezone:String}}) AS date, toString(src._part) AS part
FROM {source.qualified_name} AS src
WHERE src._part IN {{parts:Array(String)}}
  AND ({predicate}){counted}
"""
    return sql, {
        "timezone": timezone,
        "statuses": list(measurement.statuses),
        "parts": parts,
        **parameters,
    }


def build_recently_written_days_query(
    measurement: Measurement, before: dt.datetime, since: dt.datetime, timezone: str
) -> tuple[str, dict[str, object]]:
    """Days before ``before`` holding counted calls in table parts written since ``since``.

    Only the parts written since then are read: inserts create parts, so a late call lands in
    one. Merges rewrite parts too, so a day found here is a candidate, to be confirmed by its
    fingerprint.
    """
    source = measurement.source
    started_at, status = (f"src.`{source.column(role)}`" for role in ("started_at", "status"))
    sql = f"""
SELECT DISTINCT toDate({started_at}, {{timezone:String}}) AS date
FROM {source.qualified_name} AS src
WHERE src._part IN (
        SELECT name FROM system.parts
        WHERE database = {{database:String}} AND table = {{table:String}}
          AND active AND modification_time >= {{since:DateTime('UTC')}}
    )
  AND {started_at} < {{before:DateTime64(3, 'UTC')}}
  AND {status} IN {{statuses:Array(String)}}
ORDER BY date
"""
    return sql, {
        "timezone": timezone,
        "database": source.database,
        "table": source.table,
        "since": since.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "before": _utc_literal(before),
        "statuses": list(measurement.statuses),
    }


def source_table_ddl(source: SourceTable) -> tuple[str, str]:
    """The source table of the contract, and its database: ordered by start time so day windows
    prune parts. For the demo, the tests and the benchmarks; production tables are the user's."""
    call_id, agent, started_at, duration, status = source.column_names
    return (
        f"CREATE DATABASE IF NOT EXISTS `{source.database}`",
        f"""
CREATE TABLE IF NOT EXISTS {source.qualified_name} (
    `{call_id}` String,
    `{agent}` Nullable(String),
    `{started_at}` DateTime64(3, 'UTC'),
    `{duration}` Nullable(Float64),
    `{status}` LowCardinality(String)
) ENGINE = MergeTree ORDER BY `{started_at}`
""",
    )
