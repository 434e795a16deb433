"""The calls table as an observable source: one fingerprint per day, computed by ClickHouse.

``agent_metrics`` depends on ``calls``, so Dagster records which fingerprint each published day
was computed from and marks the day stale when its fingerprint changes. An hourly observation
covers the last ``window_days`` days; an automation condition then requests exactly the stale
days of that window. On a table stored in parts, the observation fingerprints again only the
days whose parts changed (``observe.parts``), in one query; a view is fingerprinted whole. Days
older than the window are not observed every hour: a check looks for late calls among them in
the table parts written since its last run.
"""

import datetime as dt
import warnings
from collections.abc import Sequence

import dagster as dg

from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME
from agent_metrics_pipeline.core.partitions import format_days, keys_of
from agent_metrics_pipeline.observe.readings import (
    Readings,
    observation_event,
    observation_window,
    take_readings,
)


def build_calls_source(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    window_days: int,
    group_name: str,
    pool: str | None,
) -> dg.SourceAsset:
    table = measurement.source

    # Observable source assets are beta in Dagster 1.13, and the way to observe a source.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.observable_source_asset(
            name=CALLS_ASSET_NAME,
            partitions_def=partitions_def,
            group_name=group_name,
            # The embedded engine admits one process at a time, runs of agent_metrics included.
            op_tags={"dagster/concurrency_key": pool} if pool else None,
            description=(
                f"Source call records in {table.database}.{table.table}. Each observation "
                f"fingerprints the newest {window_days} days (count and hash of the counted "
                "calls). It is observed, never materialized: its Partitions tab reads every day "
                "as missing; each day's fingerprint is on the Events tab."
            ),
            metadata={"source_table": f"{table.database}.{table.table}"},
        )
        def calls(
            context: dg.AssetExecutionContext, clickhouse: ClickHouseResource
        ) -> dg.DataVersionsByPartition:
            days = observation_window(partitions_def, window_days)
            with no_retry_for_permanent_errors(), clickhouse.session() as session:
                relation = read_relation(session, measurement.source)
                readings = take_readings(
                    session, context.instance, measurement, partitions_def, days, relation
                )
            for day, reading in readings.by_day.items():
                context.log_event(observation_event(day, reading))
            context.log.info(_observation_summary(days, readings))
            # The observations above carry the versions, with metadata this return value cannot.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                return dg.DataVersionsByPartition({})

    return calls


def _observation_summary(days: Sequence[dt.date], readings: Readings) -> str:
    span, changed, plan = format_days(days), readings.fingerprinted, readings.plan
    if plan is None:
        return f"Fingerprinted {len(days)} day(s), {span}: the source has no parts to compare"
    if plan.everything_because:
        return f"Fingerprinted {len(days)} day(s), {span}: {plan.everything_because}"
    kept = len(days) - len(changed)
    return (
        f"Fingerprinted {len(changed)} of {len(days)} day(s), {span}"
        + (f" ({', '.join(keys_of(changed))})" if 0 < len(changed) <= 5 else "")
        + f"; {kept} kept their fingerprints: no part holding their calls changed"
    )
