"""Today's running figures (AGENT_METRICS_PUBLISH_TODAY): a sensor publishes today as partial,
then again whenever its calls changed, at most every AGENT_METRICS_TODAY_REFRESH_MINUTES.

Each refresh is a publication run, so the setting bounds what today costs the instance. The
final file comes once the day has ended: from the daily schedule, or earlier from the
republication of a published day whose source the observation finds changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass

import dagster as dg

# Dagster's clock, which its partitions read: today here is today's partition.
from dagster._time import get_current_datetime

from agent_metrics_pipeline.clickhouse.errors import ClickHouseEngineBusyError
from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import ASSET_NAME, PARTITION_TAG, TODAY_SENSOR_NAME
from agent_metrics_pipeline.observe.readings import fingerprints

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class TodayCursor:
    """The day and the fingerprint of its calls that the last refresh was requested for."""

    day: str | None = None
    fingerprint: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> TodayCursor:
        known = {field.name for field in dataclasses.fields(cls)}
        saved = json.loads(text) if text else {}
        return cls(**{name: value for name, value in saved.items() if name in known})

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def last_published_at(instance: dg.DagsterInstance, day: str) -> dt.datetime | None:
    """When ``day`` was last published, however its run was launched."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(ASSET_NAME), asset_partitions=[day]), limit=1
    ).records
    return dt.datetime.fromtimestamp(records[0].timestamp, dt.UTC) if records else None


def build_todays_figures_sensor(
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    refresh_minutes: int,
) -> dg.SensorDefinition:
    """The sensor refreshing today's partial file when its calls changed, at most every
    ``refresh_minutes``."""
    refresh = dt.timedelta(minutes=refresh_minutes)

    @dg.sensor(
        name=TODAY_SENSOR_NAME,
        job=job,
        minimum_interval_seconds=int(refresh.total_seconds()),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Publishes today's running figures as partial (AGENT_METRICS_PUBLISH_TODAY), and "
            f"again when today's calls changed, at most every {refresh_minutes} minutes "
            "(AGENT_METRICS_TODAY_REFRESH_MINUTES)."
        ),
    )
    def agent_metrics_today(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult:
        now = get_current_datetime()
        # Today is the newest partition: the one the clock is in.
        today = next(iter(partitions_def.get_partition_keys(current_time=now)[-1:]), None)
        if today is None:
            return dg.SensorResult(skip_reason="The partitions start after today.")
        instance = context.instance
        published_at = last_published_at(instance, today)
        # Manual runs count too: a refresh comes at most every interval, however launched.
        if published_at is not None and now - published_at < refresh:
            return dg.SensorResult(
                skip_reason=f"{today} was published at {published_at:%H:%M:%S} UTC; the next "
                f"refresh is due from {published_at + refresh:%H:%M:%S} UTC."
            )
        running = instance.get_run_records(
            dg.RunsFilter(job_name=job.name, statuses=IN_PROGRESS, tags={PARTITION_TAG: today}),
            limit=1,
        )
        if running:
            return dg.SensorResult(skip_reason=f"A run of {today} has not finished yet.")
        try:
            # A run holding the embedded engine's folder holds it for minutes: skip, do not wait.
            with clickhouse.session(engine_wait_sec=0) as session:
                relation = read_relation(session, measurement.source)
                day = dt.date.fromisoformat(today)
                reading = fingerprints(session, measurement, partitions_def, [day], relation)[day]
        except ClickHouseEngineBusyError as error:
            return dg.SensorResult(skip_reason=f"Not refreshed yet: {error} The next tick tries.")
        cursor = TodayCursor(today, reading.fingerprint)
        if published_at is not None and TodayCursor.parse(context.cursor) == cursor:
            return dg.SensorResult(
                skip_reason=f"{today}'s calls are unchanged since its last refresh "
                f"({reading.calls:,} counted)."
            )
        context.log.info(f"Refreshing {today}: {reading.calls:,} calls counted so far.")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=today)], cursor=cursor.dumps()
        )

    return agent_metrics_today
