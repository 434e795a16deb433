"""An independent model of the metric definitions, written with NumPy over raw rows.

It shares no code with the pipeline: the day of a call comes from ``zoneinfo``, the mean from
``numpy.mean``, the 90th percentile from ``numpy.percentile`` (linear interpolation).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

HEADER = ["agent_id", "avg_call_length_sec", "p90_call_length_sec", "total_calls", "date"]


@dataclass(frozen=True)
class Call:
    call_id: str
    agent_id: str | None
    started_at: dt.datetime  # timezone-aware
    duration_sec: float | None
    status: str


@dataclass(frozen=True)
class ExpectedRow:
    agent_id: str
    avg: float  # unrounded
    p90: float  # unrounded
    total_calls: int
    date: dt.date


def expected_metrics(
    calls: Iterable[Call],
    timezone: str = "UTC",
    statuses: Sequence[str] = ("Answered",),
) -> dict[dt.date, list[ExpectedRow]]:
    """Rows per day, sorted by agent; only measurable calls of the counted statuses.

    A call is measurable when it has an agent (not NULL, not empty) and a finite duration >= 0.
    """
    zone = zoneinfo.ZoneInfo(timezone)
    durations: dict[tuple[dt.date, str], list[float]] = defaultdict(list)
    for call in calls:
        if call.status not in statuses or not call.agent_id:
            continue
        if call.duration_sec is None or not math.isfinite(call.duration_sec):
            continue
        if call.duration_sec < 0:
            continue
        day = call.started_at.astimezone(zone).date()
        durations[(day, call.agent_id)].append(call.duration_sec)
    per_day: dict[dt.date, list[ExpectedRow]] = defaultdict(list)
    for (day, agent), values in sorted(
        durations.items(), key=lambda item: (item[0][0], item[0][1].encode("utf-8"))
    ):
        array = np.asarray(values, dtype=np.float64)
        per_day[day].append(
            ExpectedRow(
                agent_id=agent,
                avg=float(np.mean(array)),
                p90=float(np.percentile(array, 90, method="linear")),
                total_calls=len(values),
                date=day,
            )
        )
    return dict(per_day)


def statuses_seen(calls: Iterable[Call], statuses: Sequence[str] = ("Answered",)) -> dict[str, int]:
    """Calls per status among the counted statuses and those differing from one only by letter
    case or surrounding spaces."""
    spellings = {status.strip(" ").lower() for status in statuses}
    seen: dict[str, int] = defaultdict(int)
    for call in calls:
        if call.status.strip(" ").lower() in spellings:
            seen[call.status] += 1
    return dict(seen)


def parse_csv(data: bytes) -> list[dict[str, str]]:
    """Parse a published file with the standard library, checking the header on the way."""
    text = data.decode("utf-8")
    assert "\r" not in text, "line ends must be \\n"
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = list(reader)
    assert rows, "the file must at least hold a header"
    assert rows[0] == HEADER
    return [dict(zip(HEADER, row, strict=True)) for row in rows[1:]]


def assert_rounded_to_cents(actual: float, exact: float, what: str) -> None:
    """``actual`` must be ``exact`` rounded to 2 decimals (either neighbour on an exact tie)."""
    assert abs(actual * 100 - round(actual * 100)) < 1e-6, f"{what}={actual} has >2 decimals"
    assert abs(actual - exact) <= 0.005 + 1e-9, f"{what}={actual}, expected {exact:.6f} rounded"


def assert_csv_matches(data: bytes, expected: Sequence[ExpectedRow], day: dt.date) -> None:
    rows = parse_csv(data)
    assert [row["agent_id"] for row in rows] == [row.agent_id for row in expected]
    for row, want in zip(rows, expected, strict=True):
        assert row["date"] == day.isoformat()
        assert row["total_calls"] == str(want.total_calls), "integers are written without .0"
        assert_rounded_to_cents(float(row["avg_call_length_sec"]), want.avg, "avg")
        assert_rounded_to_cents(float(row["p90_call_length_sec"]), want.p90, "p90")
