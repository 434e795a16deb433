"""Daily partitions: one partition per calendar day in the configured timezone, and the days
they stand for.

Inside the package a day is a ``dt.date``; its partition key (``YYYY-MM-DD``) is only what
Dagster is told and tells.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import click
import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.partitions.context import PartitionLoadingContext

    from agent_metrics_pipeline.core.settings import Settings


class InvalidPartitionKeyError(click.ClickException):
    """A key that is not one of the days. A ClickException, so the Dagster CLI prints the
    message alone (it replaces Dagster's own unknown-partition error with a vaguer one)."""


class DailyPartitions(dg.DailyPartitionsDefinition):
    """Dagster's daily partitions, whose refusal of a key says what a valid one looks like."""

    def validate_partition_key(self, partition_key: str, context: PartitionLoadingContext) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError:
            newest = (
                "today, published as running figures (AGENT_METRICS_PUBLISH_TODAY)"
                if self.end_offset
                else "yesterday: today's calls are still arriving"
            )
            raise InvalidPartitionKeyError(
                f"Invalid partition key `{partition_key}`: expected a day as YYYY-MM-DD from "
                f"{self.get_first_partition_key()} to {self.get_last_partition_key()} in "
                f"{self.timezone} (the newest is {newest})."
            ) from None


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Day ``D`` covers ``[D 00:00, D+1 00:00)`` in ``settings.timezone``.

    The newest partition is yesterday: today's calls are still arriving. With
    ``settings.publish_today`` today is one too, published as partial until it ends.
    """
    return DailyPartitions(
        start_date=settings.start_date,
        timezone=settings.timezone,
        end_offset=1 if settings.publish_today else 0,
    )


def ended_day_keys(
    partitions_def: dg.DailyPartitionsDefinition, current_time: dt.datetime | None = None
) -> list[str]:
    """The keys of the days that have ended at ``current_time`` (now): every partition but
    today, when today is one. The schedule, the late-day alert and the observation count back
    from the newest of them, whether or not today is published."""
    keys = partitions_def.get_partition_keys(current_time=current_time)
    return keys[: len(keys) - partitions_def.end_offset] if partitions_def.end_offset else keys


def running_days(
    partitions_def: dg.DailyPartitionsDefinition, days: Iterable[dt.date], now: dt.datetime
) -> list[dt.date]:
    """Those of ``days`` that had not ended at ``now``: their calls are still arriving."""
    return [
        day
        for day in days
        if partitions_def.time_window_for_partition_key(day.isoformat()).end > now
    ]


def days_of(partition_keys: Iterable[str]) -> list[dt.date]:
    """The days that partition keys name."""
    return [dt.date.fromisoformat(key) for key in partition_keys]


def keys_of(days: Iterable[dt.date]) -> list[str]:
    """The partition keys of days."""
    return [day.isoformat() for day in days]


def format_days(days: Sequence[dt.date] | Sequence[str]) -> str:
    """A day as itself, several as FIRST...LAST (as the CLI's --partition-range writes them)."""
    first, last = str(days[0]), str(days[-1])
    return first if len(days) == 1 else f"{first}...{last}"


def refuse_rows_outside(held_days: Collection[dt.date], days: Sequence[dt.date]) -> None:
    """Rows of a day outside ``days`` (the days a run reads or publishes) have nowhere to be
    published: they are refused, never dropped."""
    stray = sorted(set(held_days) - set(days))
    if stray:
        raise dg.DagsterInvariantViolationError(
            f"Rows dated {keys_of(stray)} are outside the run's days "
            f"{format_days(sorted(days))}; refusing to drop them."
        )
