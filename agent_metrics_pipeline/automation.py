"""How the asset runs without a person: the job, the daily schedule and the freshness check."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import dagster as dg

from agent_metrics_pipeline.assets import ASSET_NAME

JOB_NAME = "agent_metrics_job"
SCHEDULE_NAME = "agent_metrics_daily"
SCHEDULE_CRON = "0 2 * * *"
# The schedule and the freshness deadline share one clock, whatever the partitions' timezone.
SCHEDULE_TIMEZONE = "UTC"


def targets_agent_metrics(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether ``run`` materializes ``agent_metrics``, however it was launched: the job, an
    asset selection from the UI or the CLI, or ``dg.materialize``. Its plan says so in all cases."""
    if run.job_name == JOB_NAME or dg.AssetKey(ASSET_NAME) in (run.asset_selection or ()):
        return True
    if run.execution_plan_snapshot_id is None:
        return False
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return ASSET_NAME in (plan.step_keys_to_execute or [step.key for step in plan.steps])


def build_agent_metrics_job(
    asset: dg.AssetsDefinition, freshness_checks: Sequence[dg.AssetChecksDefinition] = ()
) -> dg.UnresolvedAssetJobDefinition:
    """The asset and its in-step checks; freshness is left to its sensor, since a run of an
    old day says nothing about whether yesterday is late."""
    return dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(asset) - dg.AssetSelection.checks(*freshness_checks),
        description="Materializes agent_metrics for one day or a range of days.",
    )


def build_daily_schedule(
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.DailyPartitionsDefinition,
    lookback_days: int = 0,
) -> dg.ScheduleDefinition:
    """Every day at 02:00 UTC: the most recent complete day, plus ``lookback_days`` before it.

    "Yesterday" is the newest partition whose day has ended in the partitions' timezone at the
    tick. Re-running the lookback days picks up late-arriving calls; files are overwritten.

    The schedule is on by default: a deployment exists to publish every day, and a forgotten
    toggle means missing files (the freshness check would flag them). Stop it in the UI if needed.
    """

    @dg.schedule(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule=SCHEDULE_CRON,
        execution_timezone=SCHEDULE_TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Yesterday's agent metrics (and the lookback days), every day at 02:00 UTC.",
    )
    def agent_metrics_daily(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        tick = context.scheduled_execution_time
        keys = partitions_def.get_partition_keys(current_time=tick)[-(lookback_days + 1) :]
        for key in reversed(keys):
            yield dg.RunRequest(run_key=f"{key}@{tick:%Y-%m-%dT%H:%M}", partition_key=key)

    return agent_metrics_daily


def build_freshness_checks(
    asset: dg.AssetsDefinition, deadline_hour: int
) -> tuple[Sequence[dg.AssetChecksDefinition], dg.SensorDefinition]:
    """A check that fails when yesterday's partition is not materialized by ``deadline_hour``
    UTC, and the sensor that evaluates it.

    At the deadline, "yesterday" is the newest day that has ended in the partitions' timezone:
    the same day the 02:00 UTC schedule materialized an hour before, whatever that timezone.
    Dagster 1.13 prefers ``FreshnessPolicy``, but a policy only looks at the latest
    materialization of any partition: a backfill of old days would pass it. This check looks
    for the expected partition itself.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        checks = dg.build_time_partition_freshness_checks(
            assets=[asset],
            deadline_cron=f"0 {deadline_hour} * * *",
            timezone=SCHEDULE_TIMEZONE,
        )
        # Running by default: it only evaluates the check, it never launches a materialization.
        sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=checks, default_status=dg.DefaultSensorStatus.RUNNING
        )
    return checks, sensor
