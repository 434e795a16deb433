"""Moments as ClickHouse reads them in bound query parameters and in literals."""

from __future__ import annotations

import datetime as dt

CLICKHOUSE_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def utc_literal(moment: dt.datetime) -> str:
    """ClickHouse parses ``DateTime64(3, 'UTC')`` parameters from naive UTC text."""
    if moment.tzinfo is None:
        raise ValueError(f"window bound {moment!r} must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime(CLICKHOUSE_DATETIME_FORMAT)[:-3]


def window_parameters(
    window_start: dt.datetime, window_end: dt.datetime, timezone: str
) -> dict[str, object]:
    """The bounds of ``[window_start, window_end)`` and the timezone days are counted in."""
    return {
        "timezone": timezone,
        "window_start": utc_literal(window_start),
        "window_end": utc_literal(window_end),
    }
