"""Late calls outside the observation window: days older than the window are not observed every
hour, so a check looks for calls among them in the table parts written since its last run."""

import datetime as dt

import dagster as dg

from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.observe.queries import build_recently_written_days_query
from agent_metrics_pipeline.observe.readings import (
    fingerprints,
    last_readings,
    observation_event,
    observation_window,
)

LATE_CALLS_CHECK = "no_late_calls_outside_window"
# Part modification times have second resolution and the engine's clock is not Dagster's.
PARTS_CLOCK_MARGIN = dt.timedelta(minutes=5)


def build_late_calls_check(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    window_days: int,
    pool: str | None,
) -> dg.AssetChecksDefinition:
    check_key = dg.AssetCheckKey(dg.AssetKey(CALLS_ASSET_NAME), LATE_CALLS_CHECK)

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
        instance = context.instance
        window_start = partitions_def.time_window_for_partition_key(
            observation_window(partitions_def, window_days)[0].isoformat()
        ).start
        previous = [
            record
            for record in instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=5
            )
            if record.run_id != context.op_execution_context.run_id
            and record.status.value in ("SUCCEEDED", "FAILED")
        ]
        if not previous:
            return dg.AssetCheckResult(
                passed=True, metadata={"note": "first run: later runs look at what arrives"}
            )
        with no_retry_for_permanent_errors(), clickhouse.session() as session:
            relation = read_relation(session, measurement.source)
            if not relation.has_parts:
                return dg.AssetCheckResult(
                    passed=True,
                    metadata={
                        "source_engine": relation.engine or "unknown",
                        "note": (
                            f"Not looked at: the source is a {relation.engine or 'relation'} "
                            "without storage parts of its own, so what was written since the last "
                            "run cannot be told apart. Days older than the observation window are "
                            "not republished by themselves: materialize a day whose calls changed, "
                            "or widen AGENT_METRICS_OBSERVE_WINDOW_DAYS."
                        ),
                    },
                )
            since = dt.datetime.fromtimestamp(previous[0].create_timestamp, dt.UTC)
            written = session.query_polars(
                *build_recently_written_days_query(
                    measurement, window_start, since - PARTS_CLOCK_MARGIN, partitions_def.timezone
                )
            )
            first_key = partitions_def.get_first_partition_key()
            candidates = [
                date
                for date in written.get_column("date")
                if first_key is not None and date >= dt.date.fromisoformat(first_key)
            ]
            changed = []
            if candidates:
                current = fingerprints(session, measurement, partitions_def, candidates, relation)
                recorded = last_readings(instance, candidates)
                for day, reading in current.items():
                    # A merge rewrites parts without changing rows: the fingerprint tells.
                    if day in recorded and recorded[day].fingerprint != reading.fingerprint:
                        context.op_execution_context.log_event(observation_event(day, reading))
                        changed.append(day)
        return dg.AssetCheckResult(
            passed=not changed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "late_days": keys_of(changed),
                "window_starts": window_start.date().isoformat(),
                "days_looked_at": keys_of(candidates),
            },
            description=(
                f"Calls arrived late for {', '.join(keys_of(changed))}, older than the observation "
                "window: materialize these days to republish them."
                if changed
                else None
            ),
        )

    return no_late_calls_outside_window
