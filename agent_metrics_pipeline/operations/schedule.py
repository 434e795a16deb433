"""How the asset runs without a person: the job, the daily schedule and its deadline."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import dagster as dg

from agent_metrics_pipeline.core.names import ASSET_NAME, JOB_NAME, SCHEDULE_NAME
from agent_metrics_pipeline.core.partitions import ended_day_keys

SCHEDULE_HOUR = 2
SCHEDULE_CRON = f"0 {SCHEDULE_HOUR} * * *"
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


def build_agent_metrics_job(asset: dg.AssetsDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(asset),
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
    toggle means missing files (the late-day alert would flag them). Stop it in the UI if needed.
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
        keys = ended_day_keys(partitions_def, current_time=tick)[-(lookback_days + 1) :]
        for key in reversed(keys):
            yield dg.RunRequest(run_key=f"{key}@{tick:%Y-%m-%dT%H:%M}", partition_key=key)

    return agent_metrics_daily


def freshness_policy(deadline_hour: int) -> dg.FreshnessPolicy:
    """Fresh when the asset was materialized between the 02:00 UTC schedule and the deadline.

    Dagster evaluates it without a step in any run and shows it on the asset. It looks at the
    newest materialization of any day, so a backfill of old days after 02:00 would also pass
    it: the late-day alert looks for yesterday's partition itself.
    """
    return dg.FreshnessPolicy.cron(
        deadline_cron=f"0 {deadline_hour} * * *",
        lower_bound_delta=dt.timedelta(hours=deadline_hour - SCHEDULE_HOUR),
        timezone=SCHEDULE_TIMEZONE,
    )


def expected_day(
    partitions_def: dg.DailyPartitionsDefinition, now: dt.datetime, deadline_hour: int
) -> tuple[str, dt.datetime] | None:
    """The day that must be published by the most recent deadline, and that deadline.

    It is the day the 02:00 UTC schedule materialized before that deadline: the newest day
    that had ended at 02:00, in the partitions' timezone, whatever that timezone.
    """
    deadline = now.astimezone(dt.UTC).replace(hour=deadline_hour, minute=0, second=0, microsecond=0)
    if deadline > now:
        deadline -= dt.timedelta(days=1)
    scheduled_at = deadline.replace(hour=SCHEDULE_HOUR)
    due = ended_day_keys(partitions_def, current_time=scheduled_at)[-1:]
    return (due[0], deadline) if due else None
