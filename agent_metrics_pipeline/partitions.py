"""Daily partitions: one partition per calendar day in the configured timezone."""

import dagster as dg

from agent_metrics_pipeline.config import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Day ``D`` covers ``[D 00:00, D+1 00:00)`` in ``settings.timezone``.

    The newest partition is yesterday: today's calls are still arriving.
    """
    return dg.DailyPartitionsDefinition(start_date=settings.start_date, timezone=settings.timezone)
