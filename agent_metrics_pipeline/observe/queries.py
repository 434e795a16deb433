"""The observation's reads: each day's fingerprint, the table's parts, and which parts hold
which days' calls.

Identifiers come from a validated :class:`SourceTable`; every value is bound as a query
parameter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING

from agent_metrics_pipeline.clickhouse.syntax import utc_literal

if TYPE_CHECKING:
    from agent_metrics_pipeline.core.measurement import Measurement, SourceTable


def _fingerprint_select(measurement: Measurement, final: bool, with_parts: bool = False) -> str:
    """Per day, the number of counted calls and an order-independent hash of them.

    It covers exactly the rows the metrics read (counted statuses, day in the partitions'
    timezone) and every column that feeds them, so any insert, delete or update that could
    change a day's metrics changes its fingerprint. Call ids feed no metric and are the widest
    column, so they stay out (a quarter of the scan). Summing the row hashes (wrapping) keeps
    duplicate rows from cancelling out, as XOR would; hashing the row as one tuple lets a row
    with a NULL column count in the hash too. ``with_parts`` also names the table parts that
    hold each day's counted calls, for sources stored in parts (see ``observe.parts``).
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
        parameters[f"start_{i}"] = utc_literal(start)
        parameters[f"end_{i}"] = utc_literal(end)
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


_PARTS_QUERY = """
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


def build_parts_query(source: SourceTable) -> tuple[str, dict[str, object]]:
    """The table's active parts, their modification times and the server's clock, with its
    pending mutations, its UUID and its sorting key: what a reading of the table's parts holds
    (see ``observe.parts``)."""
    return _PARTS_QUERY, {"database": source.database, "table": source.table}


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


_ACTIVE_PARTS_QUERY = """
SELECT count() AS still_active
FROM system.parts
WHERE database = {database:String} AND table = {table:String} AND active
  AND name IN {parts:Array(String)}
"""


def build_active_parts_query(
    source: SourceTable, parts: list[str]
) -> tuple[str, dict[str, object]]:
    """How many of the named parts are still active (``still_active``)."""
    return _ACTIVE_PARTS_QUERY, {"database": source.database, "table": source.table, "parts": parts}


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
        "before": utc_literal(before),
        "statuses": list(measurement.statuses),
    }
