"""Alerts: every failed run, a failed observation of the source, and a day not published by its
deadline, is logged and, when a webhook is set, POSTed to it.

Secrets never leave the process: values of the secret variables are masked in any error text,
and the webhook URL itself (which often embeds a token) is never logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

import dagster as dg
from dagster_shared.error import SerializableErrorInfo

from agent_metrics_pipeline.core.names import (
    ASSET_NAME,
    OBSERVE_SENSOR_NAME,
    PARTIAL_AS_OF,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
)
from agent_metrics_pipeline.core.partitions import format_days
from agent_metrics_pipeline.operations.schedule import expected_day, targets_agent_metrics

FAILURE_SENSOR_NAME = "agent_metrics_failure_alert"
LATE_DAY_SENSOR_NAME = "agent_metrics_late_day_alert"
LATE_DAY_INTERVAL_SEC = 300
# Enough for a day refreshed hourly while it ran and then published final, and republished.
MATERIALIZATIONS_OF_A_DAY = 100
WEBHOOK_TIMEOUT_SEC = 10
MAX_ERROR_CHARS = 2000
# On a run whose failure was alerted where it was decided (the dead-run watchdog does so: a
# run it fails before this sensor's first tick on a new instance would go unseen here).
ALERTED_TAG = "agent_metrics/failure_alerted"


def _partitions_of(run: dg.DagsterRun) -> str:
    tags = run.tags
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    return format_days([start, end]) if start and end else "unpartitioned"


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


def observation_alert(
    due: dt.datetime, error: str, ui_url: str, secrets: Sequence[str] = ()
) -> dict[str, str]:
    """The JSON an alert about a failed observation of the source carries: a sensor's failure
    raises no run failure for the failure alert to see."""
    error = _redact(error, secrets)[:MAX_ERROR_CHARS]
    sensor_url = f"{ui_url}/overview/automation"
    return {
        "text": f"agent-metrics observation of the calls table due {due:%Y-%m-%d %H:%M} UTC "
        f"failed: {error.splitlines()[0] if error else 'see the sensor'} {sensor_url}",
        "sensor": OBSERVE_SENSOR_NAME,
        "due": due.isoformat(),
        "error": error,
        "sensor_url": sensor_url,
    }


def _host(url: str) -> str:
    """Host and port of a URL, without the credentials it may carry before the host."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def _credentials(url: str) -> tuple[str, ...]:
    parts = urllib.parse.urlsplit(url)
    return tuple(
        value
        for value in (parts.password, parts.password and urllib.parse.unquote(parts.password))
        if value
    )


def post_json(url: str, payload: dict[str, str]) -> None:
    """POST ``payload``; credentials before the host (``https://user:token@host/...``) are sent
    as HTTP basic auth, which urllib does not do from the URL by itself."""
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if parts.username is not None or parts.password is not None:
        user_and_password = ":".join(
            urllib.parse.unquote(value or "") for value in (parts.username, parts.password)
        )
        headers["Authorization"] = "Basic " + base64.b64encode(user_and_password.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=_host(url)))
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SEC) as response:
        response.read()


def deliver(
    context: dg.SensorEvaluationContext, payload: dict[str, str], webhook_url: str | None
) -> None:
    """Log the alert, and POST it when a webhook is set."""
    context.log.error(payload["text"])
    if webhook_url is None:
        return
    host = _host(webhook_url)
    try:
        post_json(webhook_url, payload)
    except Exception as error:
        # The URL may embed a token, and some errors quote it: name the host and the type.
        context.log.error(
            f"Could not deliver the alert to the webhook at {host}: {type(error).__name__}"
        )
    else:
        context.log.info(f"Alert delivered to the webhook at {host}")


def alert_secrets(webhook_url: str | None, secrets: Sequence[str]) -> tuple[str, ...]:
    """What an alert must never carry: ``secrets``, and the webhook URL and its password."""
    if webhook_url is None:
        return tuple(secrets)
    return (*secrets, webhook_url, *_credentials(webhook_url))


def build_failure_alert_sensor(
    webhook_url: str | None, ui_url: str, secrets: Sequence[str] = ()
) -> dg.SensorDefinition:
    """Logs a summary of every failed run of ``agent_metrics``, and POSTs it to a webhook (the
    observation of the source is no run: its sensor alerts for itself).

    ``secrets`` are values that must never leave the process (passwords, keys); they are
    masked in case an error message quoted one, as are the webhook URL and its password. Logs
    name the webhook by its host only.
    """
    secrets = alert_secrets(webhook_url, secrets)

    # Runs of `dagster asset materialize` belong to no code location: only a sensor that
    # watches them all sees them fail.
    @dg.run_failure_sensor(
        name=FAILURE_SENSOR_NAME,
        default_status=dg.DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=True,
        description="Logs failed runs of agent_metrics (however launched), and POSTs them to "
        "AGENT_METRICS_ALERT_WEBHOOK_URL if set.",
    )
    def agent_metrics_failure_alert(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        if not targets_agent_metrics(context.instance, run):
            return
        if run.tags.get(ALERTED_TAG) == "true":
            return
        step_errors = [
            _error_chain(event.step_failure_data.error)
            if event.step_failure_data and event.step_failure_data.error
            else str(event.message)
            for event in context.get_step_failure_events()
        ]
        payload = failure_alert(
            context.dagster_run, step_errors, str(context.failure_event.message), ui_url, secrets
        )
        deliver(context, payload, webhook_url)

    return agent_metrics_failure_alert


def late_day_alert(day: str, deadline: dt.datetime, ui_url: str) -> dict[str, str]:
    """The JSON an alert about a day missing at its deadline carries."""
    asset_url = f"{ui_url}/assets/{ASSET_NAME}?view=partitions&partition={day}"
    return {
        "text": f"agent_metrics for {day} is not published; the deadline was "
        f"{deadline:%Y-%m-%d %H:%M} UTC. {asset_url}",
        "partitions": day,
        "deadline": deadline.isoformat(),
        "asset_url": asset_url,
    }


def first_final_publication(instance: dg.DagsterInstance, day: str) -> dt.datetime | None:
    """When ``day`` was first published final: its running figures, published before it ended
    (AGENT_METRICS_PUBLISH_TODAY), do not count."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(ASSET_NAME), asset_partitions=[day]),
        limit=MATERIALIZATIONS_OF_A_DAY,
        ascending=True,
    ).records
    return next(
        (
            dt.datetime.fromtimestamp(record.timestamp, dt.UTC)
            for record in records
            if PARTIAL_AS_OF not in record.asset_materialization.metadata
        ),
        None,
    )


def build_late_day_alert_sensor(
    partitions_def: dg.DailyPartitionsDefinition,
    deadline_hour: int,
    webhook_url: str | None,
    ui_url: str,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> dg.SensorDefinition:
    """Alerts once per day when the day the schedule publishes is not materialized by
    ``deadline_hour`` UTC, however the day was to be materialized.

    It reads the instance only: no run, no step, and nothing in the log unless it alerts. Its
    cursor is the last day settled, on time or reported; on its first tick, the day already due
    is settled without an alert.
    """

    @dg.sensor(
        name=LATE_DAY_SENSOR_NAME,
        minimum_interval_seconds=LATE_DAY_INTERVAL_SEC,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Alerts when yesterday's agent_metrics is not published by "
        f"{deadline_hour:02d}:00 UTC (AGENT_METRICS_FRESHNESS_DEADLINE_HOUR).",
    )
    def agent_metrics_late_day_alert(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        due = expected_day(partitions_def, clock(), deadline_hour)
        if due is None:
            return dg.SkipReason("No day is due yet: the partitions start after the deadline.")
        day, deadline = due
        if context.cursor == day:
            return dg.SkipReason(f"{day} is settled; the next deadline is not due yet.")
        if context.cursor is None:
            # The sensor's first tick on this instance: the day already due was never this
            # deployment's to publish. Deadlines count from the next one.
            context.update_cursor(day)
            return dg.SkipReason(
                f"Started: days due from the deadline after {deadline:%Y-%m-%d %H:%M} UTC are "
                f"watched; {day}, due before this sensor ran, is not alerted."
            )
        published_at = first_final_publication(context.instance, day)
        context.update_cursor(day)
        if published_at is not None:
            # Published after the deadline, while this sensor was stopped: it would have
            # alerted at the deadline had it been running; saying so now is no news.
            timing = "on time" if published_at <= deadline else "after the deadline"
            return dg.SkipReason(f"{day} was published {timing}, at {published_at:%H:%M} UTC.")
        deliver(context, late_day_alert(day, deadline, ui_url), webhook_url)
        return dg.SkipReason(f"{day} missed its deadline; alert sent.")

    return agent_metrics_late_day_alert
