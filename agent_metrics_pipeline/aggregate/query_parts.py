"""Fragments the metrics reads share: how each call is classified, the window of calls read,
how a status is spelled, the calls counted once, and the bound values of a read.

Identifiers come from a validated :class:`SourceTable`; values from settings are bound as
parameters; days and window bounds are written out, made from dates, never from input text
(a query of many days would otherwise need an address longer than HTTP proxies take).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from agent_metrics_pipeline.clickhouse.syntax import utc_literal, window_parameters

if TYPE_CHECKING:
    from agent_metrics_pipeline.core.measurement import Measurement

# The rows of a counted status behind each call, when each call counts once.
COPIES = "counted_rows_of_call"
# The window's bounds, as bound parameters (see measurement_parameters).
BOUND_WINDOW = ("{window_start:DateTime64(3, 'UTC')}", "{window_end:DateTime64(3, 'UTC')}")


class DayWindow(NamedTuple):
    """A day and its window ``[start, end)``, as its partition has it."""

    day: dt.date
    start: dt.datetime
    end: dt.datetime


def by_day(
    measurement: Measurement,
    days: Sequence[DayWindow],
    timezone: str,
    day_query: Callable[[DayWindow], str],
    order_by: str = "date, agent_id",
) -> tuple[str, dict[str, object]]:
    """The rows of ``day_query`` for each of ``days``, as one query, in ``order_by``'s order,
    and its bound values: each day read in its own window, with its date written out (the same
    choice of rows a run of that day alone makes)."""
    branches = "\nUNION ALL\n".join(f"SELECT * FROM ({day_query(day)})" for day in days)
    sql = f"SELECT * FROM (\n{branches}\n)\nORDER BY {order_by}\n"
    return sql, measurement_parameters(measurement, days[0].start, days[-1].end, timezone)


def written_window(start: dt.datetime, end: dt.datetime) -> tuple[str, str]:
    """A window's bounds written out in the SQL, for a query that reads several windows: made
    here from datetimes, never from input text."""
    return (
        f"toDateTime64('{utc_literal(start)}', 3, 'UTC')",
        f"toDateTime64('{utc_literal(end)}', 3, 'UTC')",
    )


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


def window_filter(
    measurement: Measurement,
    final: bool,
    spelled: bool = False,
    day: DayWindow | None = None,
) -> str:
    """The source's calls of the bound window, or of ``day``'s window written out, with a
    counted status (``spelled``: with a status spelled like a counted one), as ``src``."""
    window = BOUND_WINDOW if day is None else written_window(day.start, day.end)
    source = measurement.source
    started_at, status = (f"src.`{source.column(role)}`" for role in ("started_at", "status"))
    relation = (
        f"{_calls_counted_once(measurement, final, window)} AS src"
        if measurement.counts_each_call_once
        else f"{source.qualified_name} AS src{' FINAL' if final else ''}"
    )
    of_status = (
        f"{status_spelling(status)} IN {{spellings:Array(String)}}"
        if spelled
        else f"{status} IN {{statuses:Array(String)}}"
    )
    return f"""FROM {relation}
WHERE {started_at} >= {window[0]}
  AND {started_at} < {window[1]}
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


def _calls_counted_once(measurement: Measurement, final: bool, window: tuple[str, str]) -> str:
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
        WHERE {started_at} >= {window[0]}
          AND {started_at} < {window[1]}
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
