"""Today's running figures (AGENT_METRICS_PUBLISH_TODAY): a sensor publishes today as partial
once its first calls are in, then again whenever its calls changed, at most every
AGENT_METRICS_TODAY_REFRESH_MINUTES; and once the day has ended, it requests the day's final run.

Each refresh is a publication run, so the setting bounds what today costs the instance. The
daily schedule publishes the ended day as well, at 02:00 UTC, as it publishes every yesterday.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import dagster as dg

# Every status of a run not finished yet; no public equivalent in Dagster 1.13 (pinned).
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

# Dagster's clock, which its partitions read: today here is today's partition.
from dagster._time import get_current_datetime

from agent_metrics_pipeline.clickhouse.errors import ClickHouseEngineBusyError
from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import (
    ASSET_NAME,
    PARTIAL_AS_OF,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    TODAY_SENSOR_NAME,
)
from agent_metrics_pipeline.core.partitions import ended_day_keys
from agent_metrics_pipeline.observe.readings import EMPTY_DAY_FINGERPRINT, fingerprints
from agent_metrics_pipeline.operations.schedule import targets_agent_metrics
from agent_metrics_pipeline.operations.sensor_cursor import SensorCursor

# The sensor looks this often at most: a look that is not due reads the instance only.
TICK_SEC = 300


@dataclass(frozen=True)
class TodayCursor(SensorCursor):
    """Today's last refresh request (its day, its calls' fingerprint and when), and the last
    ended day whose final run was requested."""

    day: str | None = None
    fingerprint: str | None = None
    requested_at: float | None = None
    finalized: str | None = None


def newest_publication(instance: dg.DagsterInstance, day: str) -> dg.EventLogRecord | None:
    """The newest materialization of ``day``, however its run was launched."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(ASSET_NAME), asset_partitions=[day]), limit=1
    ).records
    return records[0] if records else None


def is_partial(record: dg.EventLogRecord | None) -> bool:
    materialization = record.asset_materialization if record else None
    return materialization is not None and PARTIAL_AS_OF in materialization.metadata


def run_in_progress_for(instance: dg.DagsterInstance, day: str) -> bool:
    """Whether a run not finished yet publishes ``day``, alone or in a range, however
    launched."""
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        tags = run.tags
        covers = tags.get(PARTITION_TAG) == day or (
            tags.get(RANGE_START_TAG, "~") <= day <= tags.get(RANGE_END_TAG, "")
        )
        if covers and targets_agent_metrics(instance, run):
            return True
    return False


def build_todays_figures_sensor(
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    refresh_minutes: int,
) -> dg.SensorDefinition:
    """The sensor refreshing today's partial file when its calls changed, at most every
    ``refresh_minutes``, and requesting an ended day's final run."""
    refresh = dt.timedelta(minutes=refresh_minutes)

    @dg.sensor(
        name=TODAY_SENSOR_NAME,
        job=job,
        minimum_interval_seconds=min(TICK_SEC, int(refresh.total_seconds())),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Publishes today's running figures as partial (AGENT_METRICS_PUBLISH_TODAY), and "
            f"again when today's calls changed, at most every {refresh_minutes} minutes "
            "(AGENT_METRICS_TODAY_REFRESH_MINUTES); requests a day's final run once it ended."
        ),
    )
    def agent_metrics_today(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult:
        now = get_current_datetime()
        instance = context.instance
        cursor = TodayCursor.parse(context.cursor)
        requests: list[dg.RunRequest] = []
        # The day that ended last, published while it ran: its final run, once.
        ended = next(iter(ended_day_keys(partitions_def, current_time=now)[-1:]), None)
        if (
            ended is not None
            and cursor.finalized != ended
            and is_partial(newest_publication(instance, ended))
            and not run_in_progress_for(instance, ended)
        ):
            requests.append(dg.RunRequest(partition_key=ended))
            cursor = dataclasses.replace(cursor, finalized=ended)
        today, skip = _refresh_due(instance, cursor, partitions_def, now, refresh)
        if today is not None:
            try:
                # A run holding the embedded engine's folder holds it for minutes: do not wait.
                with clickhouse.session(engine_wait_sec=0) as session:
                    relation = read_relation(session, measurement.source)
                    day = dt.date.fromisoformat(today)
                    reading = fingerprints(session, measurement, partitions_def, [day], relation)[
                        day
                    ]
            except ClickHouseEngineBusyError as error:
                return dg.SensorResult(
                    run_requests=requests,
                    cursor=cursor.dumps(),
                    skip_reason=f"Not refreshed yet: {error} The next tick tries.",
                )
            if reading.fingerprint == EMPTY_DAY_FINGERPRINT:
                skip = f"{today} has no counted call yet: it is published once one arrives."
            elif cursor.day == today and cursor.fingerprint == reading.fingerprint:
                # A refresh that failed waits for the calls to change, as a republication does.
                skip = f"{today}'s calls are unchanged since its last refresh ({reading.calls:,})."
            else:
                context.log.info(f"Refreshing {today}: {reading.calls:,} calls counted so far.")
                requests.append(dg.RunRequest(partition_key=today))
                cursor = dataclasses.replace(
                    cursor, day=today, fingerprint=reading.fingerprint, requested_at=now.timestamp()
                )
        return dg.SensorResult(
            run_requests=requests,
            cursor=cursor.dumps(),
            skip_reason=None if requests else skip,
        )

    return agent_metrics_today


def _refresh_due(
    instance: dg.DagsterInstance,
    cursor: TodayCursor,
    partitions_def: dg.DailyPartitionsDefinition,
    now: dt.datetime,
    refresh: dt.timedelta,
) -> tuple[str | None, str]:
    """Today's key when its calls are to be looked at now, else why not."""
    today = next(iter(partitions_def.get_partition_keys(current_time=now)[-1:]), None)
    if today is None:
        return None, "The partitions start after today."
    published = newest_publication(instance, today)
    moments = [
        *([dt.datetime.fromtimestamp(published.timestamp, dt.UTC)] if published else []),
        *(
            [dt.datetime.fromtimestamp(cursor.requested_at, dt.UTC)]
            if cursor.day == today and cursor.requested_at is not None
            else []
        ),
    ]
    # Runs launched by hand count too: a refresh comes at most every interval, however launched.
    if moments and now - max(moments) < refresh:
        return None, (
            f"{today} was last refreshed at {max(moments):%H:%M:%S} UTC; the next refresh is due "
            f"from {max(moments) + refresh:%H:%M:%S} UTC."
        )
    if run_in_progress_for(instance, today):
        return None, f"A run of {today} has not finished yet."
    return today, ""
