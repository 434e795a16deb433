"""The calls table as an observable source (one fingerprint per day, computed by ClickHouse),
and the check for late calls on it.

``agent_metrics`` depends on ``calls``, so Dagster records which fingerprint each published day
was computed from and marks the day stale when its fingerprint changes. The observation sensor
(``operations.observation``) covers the last ``window_days`` days and records the days whose
reading changed; an automation condition then requests exactly the stale days of that window.
On a table stored in parts, an observation fingerprints again only the days whose parts changed
(``observe.parts``), in one query; a view is fingerprinted whole. Days older than the window are
not fingerprinted at each observation: the late-calls look (``observe.late_calls``) finds their
calls in the table parts written since it last looked. Observing ``calls`` by hand (the UI's
Observe sources) is a run that does the same.
"""

import datetime as dt
import warnings

import dagster as dg

from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME
from agent_metrics_pipeline.observe.late_calls import (
    LATE_CALLS_CHECK,
    LATE_CALLS_CHECK_KEY,
    look_for_late_calls,
)
from agent_metrics_pipeline.observe.readings import (
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
            for day, reading in readings.to_record().items():
                context.log_event(observation_event(day, reading))
            context.log.info(readings.summary())
            # The observations above carry the versions, with metadata this return value cannot.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                return dg.DataVersionsByPartition({})

    return calls


def build_late_calls_check(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    window_days: int,
    pool: str | None,
) -> dg.AssetChecksDefinition:
    """The check the observation sensor evaluates at each observation; run by hand, it looks
    since its newest recorded result."""

    @dg.asset_check(
        asset=CALLS_ASSET_NAME,
        name=LATE_CALLS_CHECK,
        pool=pool,
        description=(
            f"Warns when calls arrived for a day older than the {window_days}-day observation "
            "window: that day is not republished by itself. Materialize it to republish it."
        ),
    )
    def no_late_calls_outside_window(
        context: dg.AssetCheckExecutionContext, clickhouse: ClickHouseResource
    ) -> dg.AssetCheckResult:
        previous = [
            record
            for record in context.instance.event_log_storage.get_asset_check_execution_history(
                LATE_CALLS_CHECK_KEY, limit=5
            )
            if record.run_id != context.op_execution_context.run_id
            and record.status.value in ("SUCCEEDED", "FAILED")
        ]
        if not previous:
            return dg.AssetCheckResult(
                passed=True, metadata={"note": "first run: later runs look at what arrives"}
            )
        since = dt.datetime.fromtimestamp(previous[0].create_timestamp, dt.UTC)
        with no_retry_for_permanent_errors(), clickhouse.session() as session:
            relation = read_relation(session, measurement.source)
            found = look_for_late_calls(
                session, context.instance, measurement, partitions_def, window_days, relation, since
            )
        for observation in found.observations():
            context.op_execution_context.log_event(observation)
        return dg.AssetCheckResult(
            passed=found.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=found.metadata,
            description=found.description,
        )

    return no_late_calls_outside_window
