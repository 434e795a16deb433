"""The calls table as an observable source: one fingerprint per day, computed by ClickHouse.

``agent_metrics`` depends on ``calls``, so Dagster records which fingerprint each published day
was computed from and marks the day stale when its fingerprint changes. An hourly observation
covers the last ``window_days`` days; an automation condition then requests exactly the stale
days of that window. On a table stored in parts, the observation fingerprints again only the
days whose parts changed (``source_parts``), in one query; a view is fingerprinted whole. Days
older than the window are not observed every hour: a check looks for late calls among them in
the table parts written since its last run.
"""

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import replace

import dagster as dg

# The resolver behind the UI's stale badge; Dagster has no public equivalent in 1.13 (pinned).
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory

from agent_metrics_pipeline.assets import ASSET_NAME
from agent_metrics_pipeline.clickhouse import ClickHouseQueryError, ClickHouseResource, QueryRunner
from agent_metrics_pipeline.config import Measurement
from agent_metrics_pipeline.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.orphaned_steps import stop_with_run_process
from agent_metrics_pipeline.source_parts import (
    DayReading,
    ObservationPlan,
    PartsSnapshot,
    plan_observation,
    read_parts,
)
from agent_metrics_pipeline.source_relation import SourceRelation, describe_source
from agent_metrics_pipeline.sql import (
    ACTIVE_PARTS_QUERY,
    build_days_in_parts_query,
    build_fingerprint_query,
    build_parts_of_days_query,
    build_recently_written_days_query,
    fingerprint_basis,
)

CALLS_ASSET_NAME = "calls"
LATE_CALLS_CHECK = "no_late_calls_outside_window"
OBSERVE_JOB_NAME = "observe_calls"
OBSERVE_SCHEDULE_NAME = "observe_calls_hourly"
REPUBLISH_SENSOR_NAME = "agent_metrics_republish_changed_days"
REPUBLISH_INTERVAL_SEC = 300
DATA_VERSION_TAG = "dagster/data_version"
EMPTY_DAY_FINGERPRINT = "0:0"
# Part modification times have second resolution and the engine's clock is not Dagster's.
PARTS_CLOCK_MARGIN = dt.timedelta(minutes=5)


def observed_days(partitions_def: dg.DailyPartitionsDefinition, window_days: int) -> list[str]:
    """The newest ``window_days`` days that have ended."""
    return partitions_def.get_partition_keys()[-window_days:]


def _bounds(
    partitions_def: dg.DailyPartitionsDefinition, days: Sequence[str]
) -> list[tuple[dt.datetime, dt.datetime]]:
    windows = [partitions_def.time_window_for_partition_key(day) for day in days]
    return [(window.start, window.end) for window in windows]


def fingerprints(
    clickhouse: QueryRunner,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[str],
    relation: SourceRelation,
    snapshot: PartsSnapshot | None = None,
) -> dict[str, DayReading]:
    """Calls counted and fingerprint of each day, from one query, of the rows as the metrics
    read them (the latest versions only, when they read FINAL). With the table's parts
    ``snapshot``, taken before this query, each day also records the parts holding its calls."""
    if snapshot is not None and not snapshot.vouches_for_days:
        snapshot = None  # its lists would not tell the next observation what it needs to know
    final = relation.reads_final(measurement.read_final)
    bounds = _bounds(partitions_def, days)
    with no_retry_for_permanent_errors():
        rows = clickhouse.query_polars(
            *build_fingerprint_query(
                measurement,
                bounds,
                partitions_def.timezone,
                final=final,
                with_parts=snapshot is not None and not final,
            )
        )
        # Read with FINAL, a day depends on every part holding a row of it, of any status or
        # version: a newer version in one part hides an older one in another.
        parts_rows = (
            clickhouse.query_polars(
                *build_parts_of_days_query(measurement, bounds, partitions_def.timezone)
            )
            if snapshot is not None and final
            else rows
        )
    parts_of = dict.fromkeys(days, ())
    if snapshot is not None:
        for date, parts in parts_rows.select("date", "parts").iter_rows():
            parts_of[date.isoformat()] = snapshot.listed(parts)
    found = {
        date.isoformat(): (calls, f"{calls}:{row_hash}")
        for date, calls, row_hash in rows.select("date", "calls", "row_hash").iter_rows()
    }
    basis = fingerprint_basis(measurement, partitions_def.timezone, final)
    readings = {}
    for day in days:
        calls, fingerprint = found.get(day, (0, EMPTY_DAY_FINGERPRINT))
        readings[day] = (
            DayReading(calls, fingerprint)
            if snapshot is None
            else DayReading(
                calls,
                fingerprint,
                parts=parts_of[day],
                read_at=snapshot.read_at,
                table_uuid=snapshot.table_uuid,
                basis=basis,
            )
        )
    return readings


def observe_days(
    clickhouse: QueryRunner,
    instance: dg.DagsterInstance,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[str],
    relation: SourceRelation,
) -> tuple[dict[str, DayReading], list[str], ObservationPlan | None]:
    """Each day's reading, the days fingerprinted again, and the plan that kept the others.

    A source without parts of its own (a view) is fingerprinted whole every time.
    """
    if not relation.has_parts:
        return (
            fingerprints(clickhouse, measurement, partitions_def, days, relation),
            list(days),
            None,
        )
    try:
        snapshot = read_parts(clickhouse, measurement.source)
    except ClickHouseQueryError as error:
        # A server that requires grants on system tables may refuse them to a reader.
        return (
            fingerprints(clickhouse, measurement, partitions_def, days, relation),
            list(days),
            ObservationPlan(
                frozenset(),
                (),
                everything_because="the server refused to list the table's parts (grant the "
                f"reader SELECT on system.parts, system.mutations and system.tables): {error}",
            ),
        )
    final = relation.reads_final(measurement.read_final)
    previous = last_readings(instance, days)
    plan = plan_observation(
        days,
        previous,
        snapshot,
        fingerprint_basis(measurement, partitions_def.timezone, final),
        final,
        started_at=measurement.source.column("started_at"),
    )
    unchanged = set(plan.unchanged)
    if unchanged and plan.parts_to_look_into:
        with no_retry_for_permanent_errors():
            found = clickhouse.query_polars(
                *build_days_in_parts_query(
                    measurement,
                    list(plan.parts_to_look_into),
                    _bounds(partitions_def, sorted(unchanged)),
                    partitions_def.timezone,
                    any_status=final,
                )
            )
            still_active = clickhouse.query_polars(
                ACTIVE_PARTS_QUERY,
                {
                    "database": measurement.source.database,
                    "table": measurement.source.table,
                    "parts": list(plan.parts_to_look_into),
                },
            ).item(0, "still_active")
        if still_active < len(plan.parts_to_look_into):
            # A merge took a part away before the query read it: what it held is unknown.
            unchanged.clear()
        unchanged -= plan.changed_days(
            (date.isoformat(), part) for date, part in found.select("date", "part").iter_rows()
        )
    changed = [day for day in days if day not in unchanged]
    readings = (
        fingerprints(clickhouse, measurement, partitions_def, changed, relation, snapshot)
        if changed
        else {}
    )
    for day in unchanged:
        # Still true at this snapshot: the next observation looks only at what is written later.
        readings[day] = replace(previous[day], read_at=snapshot.read_at)
    return {day: readings[day] for day in days}, changed, plan


def _observe(day: str, reading: DayReading) -> dg.AssetObservation:
    metadata: dict[str, object] = {"calls": reading.calls, "fingerprint": reading.fingerprint}
    if reading.parts is not None:
        metadata |= {
            "source_parts": dg.MetadataValue.json(list(reading.parts)),
            "parts_read_at": reading.read_at,
            "source_table_uuid": reading.table_uuid,
            "fingerprint_basis": reading.basis,
        }
    return dg.AssetObservation(
        asset_key=CALLS_ASSET_NAME,
        partition=day,
        tags={DATA_VERSION_TAG: reading.fingerprint},
        metadata=metadata,
    )


def _observation_summary(
    days: Sequence[str], changed: list[str], plan: ObservationPlan | None
) -> str:
    span = f"{days[0]}...{days[-1]}"
    if plan is None:
        return f"Fingerprinted {len(days)} day(s), {span}: the source has no parts to compare"
    if plan.everything_because:
        return f"Fingerprinted {len(days)} day(s), {span}: {plan.everything_because}"
    kept = len(days) - len(changed)
    return (
        f"Fingerprinted {len(changed)} of {len(days)} day(s), {span}"
        + (f" ({', '.join(changed)})" if 0 < len(changed) <= 5 else "")
        + f"; {kept} kept their fingerprints: no part holding their calls changed"
    )


def build_calls_source(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    window_days: int,
    group_name: str,
    pool: str | None,
) -> dg.SourceAsset:
    source = measurement.source

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
                f"Source call records in {source.database}.{source.table}. Each observation "
                f"fingerprints the newest {window_days} days (count and hash of the counted "
                "calls). It is observed, never materialized: its Partitions tab reads every day "
                "as missing; each day's fingerprint is on the Events tab."
            ),
            metadata={"source_table": f"{source.database}.{source.table}"},
        )
        def calls(
            context: dg.AssetExecutionContext, clickhouse: ClickHouseResource
        ) -> dg.DataVersionsByPartition:
            days = observed_days(partitions_def, window_days)
            with no_retry_for_permanent_errors(), clickhouse.session() as source:
                relation = describe_source(source, measurement.source)
                observed, changed, plan = observe_days(
                    source, context.instance, measurement, partitions_def, days, relation
                )
            for day, reading in observed.items():
                context.log_event(_observe(day, reading))
            context.log.info(_observation_summary(days, changed, plan))
            # The observations above carry the versions, with metadata this return value cannot.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dg.BetaWarning)
                return dg.DataVersionsByPartition({})

    return calls


def last_readings(instance: dg.DagsterInstance, days: Sequence[str]) -> dict[str, DayReading]:
    """What the latest observation of each of ``days`` recorded, for the days observed: two
    reads of the event log, however many days."""
    asset_key = dg.AssetKey(CALLS_ASSET_NAME)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_OBSERVATION, partitions=set(days)
    )
    if not latest:
        return {}
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=len(latest),
    ).records
    readings = {}
    for record in records:
        observation = record.asset_observation
        metadata = {key: value.value for key, value in observation.metadata.items()}
        parts = metadata.get("source_parts")
        readings[observation.partition] = DayReading(
            calls=int(metadata.get("calls") or 0),
            fingerprint=observation.tags.get(DATA_VERSION_TAG, ""),
            parts=tuple(parts) if isinstance(parts, list) else None,
            read_at=metadata.get("parts_read_at"),
            table_uuid=metadata.get("source_table_uuid"),
            basis=metadata.get("fingerprint_basis"),
        )
    return readings


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
        stop_with_run_process(context.log)
        instance = context.instance
        window_start = partitions_def.time_window_for_partition_key(
            observed_days(partitions_def, window_days)[0]
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
        with no_retry_for_permanent_errors(), clickhouse.session() as source:
            relation = describe_source(source, measurement.source)
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
            written = source.query_polars(
                *build_recently_written_days_query(
                    measurement, window_start, since - PARTS_CLOCK_MARGIN, partitions_def.timezone
                )
            )
            first_day = partitions_def.get_first_partition_key()
            candidates = [
                date.isoformat()
                for date in written.get_column("date")
                if first_day is not None and date.isoformat() >= first_day
            ]
            changed = []
            if candidates:
                current = fingerprints(source, measurement, partitions_def, candidates, relation)
                recorded = last_readings(instance, candidates)
                for day, reading in current.items():
                    # A merge rewrites parts without changing rows: the fingerprint tells.
                    if day in recorded and recorded[day].fingerprint != reading.fingerprint:
                        context.op_execution_context.log_event(_observe(day, reading))
                        changed.append(day)
        return dg.AssetCheckResult(
            passed=not changed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "late_days": changed,
                "window_starts": window_start.date().isoformat(),
                "days_looked_at": candidates,
            },
            description=(
                f"Calls arrived late for {', '.join(changed)}, older than the observation "
                "window: materialize these days to republish them."
                if changed
                else None
            ),
        )

    return no_late_calls_outside_window


class SourceChangedSinceMaterialization(dg.AutomationCondition):
    """The day's ``calls`` fingerprint differs from the one it was last materialized from."""

    @property
    def name(self) -> str:
        return "source_changed_since_materialization"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        view = context.asset_graph_view
        resolver = CachingStaleStatusResolver(view.instance, context.asset_graph, view)
        changed = {
            day
            for day in context.candidate_subset.expensively_compute_partition_keys()
            if any(
                cause.category == StaleCauseCategory.DATA
                for cause in resolver.get_stale_causes(context.key, day)
            )
        }
        return dg.AutomationResult(
            context,
            true_subset=context.candidate_subset.compute_intersection_with_partition_keys(changed),
        )


def republish_changed_days(window_days: int) -> dg.AutomationCondition:
    """Published days of the window whose source changed, not already running; a day whose
    run failed waits for its source to change again rather than failing every tick."""
    return (
        dg.AutomationCondition.in_latest_time_window(dt.timedelta(days=window_days))
        & ~dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & (~dg.AutomationCondition.execution_failed() | dg.AutomationCondition.any_deps_updated())
        & SourceChangedSinceMaterialization()
    ).with_label("republish_changed_days")


def build_observation_automation(
    calls: dg.SourceAsset, cron_schedule: str, timezone: str
) -> "tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition, dg.SensorDefinition]":
    """The observation job and its schedule, and the sensor evaluating the condition."""
    job = dg.define_asset_job(
        OBSERVE_JOB_NAME,
        selection=dg.AssetSelection.assets(calls.key),
        # The observation and the late-calls check are quick: one process, not one per step.
        executor_def=dg.in_process_executor,
        description="Fingerprints the recent days of the calls table and looks for late calls.",
    )
    schedule = dg.ScheduleDefinition(
        name=OBSERVE_SCHEDULE_NAME,
        job=job,
        cron_schedule=cron_schedule,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Observes the calls table; days whose fingerprint changed turn stale.",
    )
    # The condition is code, so it must run in the code server (Dagster cannot serialize it);
    # that option is beta in Dagster 1.13.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        sensor = dg.AutomationConditionSensorDefinition(
            REPUBLISH_SENSOR_NAME,
            target=dg.AssetSelection.assets(ASSET_NAME),
            use_user_code_server=True,
            # Sources change at the pace of the hourly observation, not of the daemon's loop.
            minimum_interval_seconds=REPUBLISH_INTERVAL_SEC,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Requests the published days whose source changed (stale days).",
        )
    return job, schedule, sensor
