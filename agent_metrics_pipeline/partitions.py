"""Daily partitions: one partition per calendar day in the configured timezone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import dagster as dg

from agent_metrics_pipeline.config import Settings

if TYPE_CHECKING:
    from dagster._core.definitions.partitions.context import PartitionLoadingContext


class InvalidPartitionKeyError(click.ClickException):
    """A key that is not one of the days. A ClickException, so the Dagster CLI prints the
    message alone (it replaces Dagster's own unknown-partition error with a vaguer one)."""


class DailyPartitions(dg.DailyPartitionsDefinition):
    """Dagster's daily partitions, whose refusal of a key says what a valid one looks like."""

    def validate_partition_key(self, partition_key: str, context: PartitionLoadingContext) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError:
            raise InvalidPartitionKeyError(
                f"Invalid partition key `{partition_key}`: expected a day as YYYY-MM-DD from "
                f"{self.get_first_partition_key()} to {self.get_last_partition_key()} in "
                f"{self.timezone} (the newest is yesterday: today's calls are still arriving)."
            ) from None


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Day ``D`` covers ``[D 00:00, D+1 00:00)`` in ``settings.timezone``.

    The newest partition is yesterday: today's calls are still arriving.
    """
    return DailyPartitions(start_date=settings.start_date, timezone=settings.timezone)
