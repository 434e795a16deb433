"""What a step hands the IO manager, told apart by day: each day's CSV bytes, the days still
running (published as partial), and what to say of a run whose days were published in part."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

import dagster as dg

# Dagster's clock, which its partitions read: a day is today here when it is for them.
from dagster._time import get_current_datetime

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.partitions import refuse_rows_outside, running_days
from agent_metrics_pipeline.storage.published_format import metrics_for_day, to_csv_bytes


class StagedRows(Protocol):
    """Days staged one file each, as a range step hands them over (``StagedDays``)."""

    days: list[dt.date]
    # The days read before they ended, and when: published as partial.
    running: Mapping[dt.date, dt.datetime]

    def csv(self, day: dt.date) -> bytes:
        """The day's rows as :func:`to_csv_bytes` encodes them."""
        ...


def csv_by_day(obj: pl.DataFrame | StagedRows, days: list[dt.date]) -> Callable[[dt.date], bytes]:
    """How to get one day's CSV bytes out of what the step handed over: a frame of every day,
    or days staged one file each."""
    if not isinstance(obj, pl.DataFrame):
        missing = sorted(set(days) - set(obj.days))
        if missing:
            raise dg.DagsterInvariantViolationError(
                f"No rows were staged for {[day.isoformat() for day in missing]}."
            )
        refuse_rows_outside(obj.days, days)
        return obj.csv
    refuse_rows_outside(obj.get_column("date").unique().to_list(), days)
    return lambda day: to_csv_bytes(metrics_for_day(obj, day))


def running_days_of(
    context: dg.OutputContext, obj: pl.DataFrame | StagedRows, days: list[dt.date]
) -> Mapping[dt.date, dt.datetime]:
    """The days to publish as partial: those the step read before they ended, or, for a frame
    handed over as it is, those that have not ended now."""
    if not isinstance(obj, pl.DataFrame):
        return obj.running
    partitions_def = context.asset_partitions_def
    if not isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return {}
    now = get_current_datetime()
    return dict.fromkeys(running_days(partitions_def, days, now), now)


def partly_published(error: Exception, keys: list[str], published: Collection[str]) -> str:
    """The error, and which days of the run are published and which are not.

    Objects cannot be written together, so a run can stop part-way; running the range again
    rewrites every day with the bytes it would have written.
    """
    if len(keys) == 1:
        return str(error)
    done = ", ".join(key for key in keys if key in published) or "none"
    left = ", ".join(key for key in keys if key not in published) or "none"
    return (
        f"{error} Days published: {done}; not published: {left}. "
        "Running the range again rewrites every day."
    )
