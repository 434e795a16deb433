"""The source observed without a run: at the times ``AGENT_METRICS_OBSERVE_CRON`` names, a sensor
fingerprints the newest days, records only the days whose reading changed, and looks for late
calls older than the window.

An unchanged source so leaves a skipped tick (purged after a day) and nothing else: the Runs page
lists publications, and the instance grows with what changes. The sensor runs in the code
location's process: on the embedded engine it skips a tick while a run holds the engine's
folder, and tries again at the next one. A sensor's failure raises no run failure for the
failure alert to see: the sensor alerts once for each observation that fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

# Dagster's own reading of a cron schedule, as its schedules use it; no public API in 1.13.
from dagster._utils.schedules import get_latest_completed_cron_tick, get_next_cron_tick

from agent_metrics_pipeline.clickhouse.errors import (
    ClickHouseEngineBusyError,
    ClickHouseQueryError,
)
from agent_metrics_pipeline.clickhouse.relation import read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.errors import PermanentError, TransientError
from agent_metrics_pipeline.core.measurement import Measurement
from agent_metrics_pipeline.core.names import OBSERVE_SENSOR_NAME
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.observe.late_calls import (
    LATE_CALLS_CHECK,
    LATE_CALLS_CHECK_KEY,
    LateCalls,
    look_for_late_calls,
)
from agent_metrics_pipeline.observe.readings import (
    observation_event,
    observation_window,
    take_readings,
)
from agent_metrics_pipeline.operations.alerts import alert_secrets, deliver, observation_alert
from agent_metrics_pipeline.operations.schedule import SCHEDULE_TIMEZONE
from agent_metrics_pipeline.operations.sensor_cursor import SensorCursor

# A cron schedule names minutes: the sensor looks every minute whether one is due.
OBSERVE_INTERVAL_SEC = 60


@dataclass(frozen=True)
class ObservationCursor(SensorCursor):
    """What the next tick needs. It stays small: a sensor's cursor is stored with every tick,
    and what each day's next reading needs is in its recorded observation."""

    # The due time last observed, in seconds since the epoch.
    observed: float | None = None
    # When late calls were last looked for.
    late_since: float | None = None
    # The due time of the failed observation that was alerted, until one succeeds.
    alerted: float | None = None


def _last_late_look_passed(instance: dg.DagsterInstance) -> bool:
    """Whether the late-calls check's newest recorded result passed (by hand or by a tick)."""
    history = instance.event_log_storage.get_asset_check_execution_history(
        LATE_CALLS_CHECK_KEY, limit=1
    )
    evaluation = history[0].event.dagster_event.event_specific_data if history else None
    return evaluation is None or evaluation.passed


def build_observation_sensor(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    window_days: int,
    cron_schedule: str,
    webhook_url: str | None,
    ui_url: str,
    secrets: Sequence[str] = (),
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> dg.SensorDefinition:
    """The sensor observing the newest ``window_days`` days at each time of ``cron_schedule``
    (UTC); the first tick on an instance observes at once."""
    secrets = alert_secrets(webhook_url, secrets)

    @dg.sensor(
        name=OBSERVE_SENSOR_NAME,
        minimum_interval_seconds=OBSERVE_INTERVAL_SEC,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Observes the calls table at '{cron_schedule}' (UTC, AGENT_METRICS_OBSERVE_CRON): "
            f"fingerprints the newest {window_days} days, records the days whose reading "
            "changed (they turn stale and are republished), and looks for late calls older "
            f"than the window ({LATE_CALLS_CHECK})."
        ),
    )
    def observe_calls(
        context: dg.SensorEvaluationContext, clickhouse: ClickHouseResource
    ) -> dg.SensorResult:
        cursor = ObservationCursor.parse(context.cursor)
        now = clock()
        due = get_latest_completed_cron_tick(cron_schedule, now, SCHEDULE_TIMEZONE)
        # An observed time ahead of the clock (a clock set back) does not stop observations.
        if cursor.observed is not None and due.timestamp() <= cursor.observed <= now.timestamp():
            following = get_next_cron_tick(cron_schedule, now, SCHEDULE_TIMEZONE)
            return dg.SensorResult(
                skip_reason=f"Observed for {due:%Y-%m-%d %H:%M} UTC; the next observation is "
                f"due at {following:%Y-%m-%d %H:%M} UTC."
            )
        days = observation_window(partitions_def, window_days)
        if not days:
            return dg.SensorResult(
                skip_reason="No day has ended since AGENT_METRICS_START_DATE: nothing to observe."
            )
        instance = context.instance
        try:
            # A run holding the engine's folder holds it for minutes: skip, do not wait.
            with clickhouse.session(engine_wait_sec=0) as session:
                relation = read_relation(session, measurement.source)
                readings = take_readings(
                    session, instance, measurement, partitions_def, days, relation
                )
                try:
                    late = look_for_late_calls(
                        session,
                        instance,
                        measurement,
                        partitions_def,
                        window_days,
                        relation,
                        since=(
                            dt.datetime.fromtimestamp(cursor.late_since, dt.UTC)
                            if cursor.late_since is not None
                            else None
                        ),
                    )
                except ClickHouseQueryError as error:
                    # A reader without grants on system tables still gets its observation.
                    late = LateCalls(days[0], refused=str(error))
        except ClickHouseEngineBusyError as error:
            return dg.SensorResult(skip_reason=f"Not observed yet: {error} The next tick tries.")
        except Exception as error:  # whatever stops it, the observation is alerted once
            if not isinstance(error, TransientError | PermanentError):
                context.log.exception("The observation failed")
            # Once until an observation succeeds, however often the ticks try again.
            if cursor.alerted is None:
                deliver(context, observation_alert(due, str(error), ui_url, secrets), webhook_url)
                cursor = dataclasses.replace(cursor, alerted=due.timestamp())
            return dg.SensorResult(
                skip_reason=f"The observation due at {due:%Y-%m-%d %H:%M} UTC failed: {error} "
                "The next tick tries again.",
                cursor=cursor.dumps(),
            )
        events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = [
            observation_event(day, reading) for day, reading in readings.to_record().items()
        ]
        events += late.observations()
        # Recorded when it first looks, when it finds late calls (or cannot look), and when it
        # finds none after the recorded result said otherwise: an unchanged source adds nothing.
        if cursor.late_since is None or not late.passed or not _last_late_look_passed(instance):
            events.append(late.evaluation())
        summary = readings.summary() + (
            f"; late calls for {', '.join(keys_of(late.late))}" if not late.passed else ""
        )
        context.log.info(summary)
        cursor = ObservationCursor(
            observed=due.timestamp(),
            # A look the server refused looks again from the same time.
            late_since=cursor.late_since if late.refused else now.timestamp(),
        )
        return dg.SensorResult(
            asset_events=events, cursor=cursor.dumps(), skip_reason=None if events else summary
        )

    return observe_calls
