"""ClickHouse's own spellings: moments as it reads them in bound parameters and literals, and a
sorting key's elements as ``system.tables`` writes them."""

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


def key_elements(sorting_key: str) -> tuple[str, ...]:
    """A sorting key's top-level elements, as ``system.tables`` spells them: a column name
    alone, or an expression (whose commas inside brackets do not split it)."""
    elements, depth, current = [], 0, ""
    for character in sorting_key:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            elements.append(current)
            current = ""
        else:
            current += character
    elements.append(current)
    return tuple(element.strip().strip("`") for element in elements if element.strip())
