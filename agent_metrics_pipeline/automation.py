"""How the asset runs without a person: the job, the daily schedule and the failure alerts."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

JOB_NAME = "agent_metrics_job"
SCHEDULE_NAME = "agent_metrics_daily"
SCHEDULE_CRON = "0 2 * * *"
SCHEDULE_TIMEZONE = "UTC"
FAILURE_SENSOR_NAME = "agent_metrics_failure_alert"
WEBHOOK_TIMEOUT_SEC = 10
MAX_ERROR_CHARS = 2000


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


def _partitions_of(run: dg.DagsterRun) -> str:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start = tags.get("dagster/asset_partition_range_start")
    end = tags.get("dagster/asset_partition_range_end")
    return f"{start}...{end}" if start and end else "unpartitioned"


def _error_chain(error: SerializableErrorInfo) -> str:
    """The messages of an error and its causes, without stack traces."""
    messages = []
    current: SerializableErrorInfo | None = error
    while current is not None:
        messages.append(current.message.strip())
        current = current.cause
    return " <- ".join(messages)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def failure_alert(
    run: dg.DagsterRun,
    step_errors: Sequence[str],
    run_message: str,
    ui_url: str,
    secrets: Sequence[str] = (),
) -> dict[str, str]:
    """The JSON an alert carries: what failed, which days, why, and where to look."""
    error = "\n".join(step_errors) or run_message
    error = _redact(error, secrets)[:MAX_ERROR_CHARS]
    partitions = _partitions_of(run)
    run_url = f"{ui_url}/runs/{run.run_id}"
    return {
        "text": f"agent-metrics run {run.run_id[:8]} ({run.job_name}, {partitions}) failed: "
        f"{error.splitlines()[0] if error else 'see the run'} {run_url}",
        "run_id": run.run_id,
        "job": run.job_name,
        "partitions": partitions,
        "error": error,
        "run_url": run_url,
    }


def post_json(url: str, payload: dict[str, str]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SEC) as response:
        response.read()


def build_failure_alert_sensor(
    webhook_url: str | None, ui_url: str, secrets: Sequence[str] = ()
) -> dg.SensorDefinition:
    """Logs a summary of every failed run of this code location, and POSTs it to a webhook.

    ``secrets`` are values that must never leave the process (passwords, keys); they are
    masked in case an error message quoted one.
    """

    @dg.run_failure_sensor(
        name=FAILURE_SENSOR_NAME,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Logs failed runs and POSTs them to AGENT_METRICS_ALERT_WEBHOOK_URL if set.",
    )
    def agent_metrics_failure_alert(context: dg.RunFailureSensorContext) -> None:
        step_errors = [
            _error_chain(event.step_failure_data.error)
            if event.step_failure_data and event.step_failure_data.error
            else str(event.message)
            for event in context.get_step_failure_events()
        ]
        payload = failure_alert(
            context.dagster_run, step_errors, str(context.failure_event.message), ui_url, secrets
        )
        context.log.error(payload["text"])
        if webhook_url is None:
            return
        host = urllib.parse.urlsplit(webhook_url).netloc
        try:
            post_json(webhook_url, payload)
        except Exception as error:
            # The URL may embed a token, and some errors quote it: name the host and the type.
            context.log.error(
                f"Could not deliver the alert to the webhook at {host}: {type(error).__name__}"
            )
        else:
            context.log.info(f"Alert delivered to the webhook at {host}")

    return agent_metrics_failure_alert
