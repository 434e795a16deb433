"""Failure alerts: a failed run is POSTed to a real webhook on 127.0.0.1, with no secret."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from urllib.parse import quote

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.test_utils import freeze_time

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.names import (
    CSV_IO_MANAGER_KEY,
    JOB_NAME,
    OBSERVE_SENSOR_NAME,
    SCHEDULE_NAME,
)
from agent_metrics_pipeline.core.partitions import daily_partitions
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.operations.alerts import (
    ALERTED_TAG,
    FAILURE_SENSOR_NAME,
    build_failure_alert_sensor,
    build_late_day_alert_sensor,
    failure_alert,
)
from agent_metrics_pipeline.operations.observation import build_observation_sensor
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    Webhook,
    build_asset,
    free_port,
    insert_calls,
    measuring,
    random_calls,
)

DAY = dt.date(2026, 11, 20)
SECRET = "Sup3r-s3cret-pw"


def failed_run(
    instance: dg.DagsterInstance, tmp_path, tags: dict[str, str] | None = None
) -> tuple[dg.ExecuteInProcessResult, dg.RunFailureSensorContext]:
    """A run that failed for real (its ClickHouse server is down), and its sensor context."""
    dead = ClickHouseResource(host="127.0.0.1", port=free_port(), password=SECRET)
    result = dg.materialize(
        [build_asset(measuring(SourceTable()))],
        partition_key=str(DAY),
        instance=instance,
        resources={
            "clickhouse": dead,
            CSV_IO_MANAGER_KEY: LocalCsvIOManager(base_dir=str(tmp_path)),
        },
        raise_on_error=False,
        tags=tags,
    )
    assert not result.success
    failure_event = next(
        e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
    )
    context = dg.build_run_status_sensor_context(
        sensor_name=FAILURE_SENSOR_NAME,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=failure_event,
    ).for_run_failure()
    return result, context


def test_failed_run_posts_an_alert_without_secrets(webhook, tmp_path):
    result, context = failed_run(dg.DagsterInstance.ephemeral(), tmp_path)
    sensor = build_failure_alert_sensor(
        webhook.url, "http://dagster.example:3000", secrets=(SECRET, "aws-secret-value")
    )

    sensor(context)

    (body,) = webhook.bodies
    payload = json.loads(body)
    assert payload["run_id"] == result.run_id
    assert payload["partitions"] == str(DAY)
    assert payload["run_url"] == f"http://dagster.example:3000/runs/{result.run_id}"
    assert "Could not reach the ClickHouse server http://127.0.0.1" in payload["error"]
    assert result.run_id[:8] in payload["text"]
    assert SECRET.encode() not in body
    assert b"T0KEN" not in body


def test_a_run_alerted_where_it_failed_is_not_alerted_again(webhook, tmp_path):
    _, context = failed_run(dg.DagsterInstance.ephemeral(), tmp_path, {ALERTED_TAG: "true"})

    build_failure_alert_sensor(webhook.url, "http://dagster.example:3000")(context)

    assert webhook.bodies == []


def test_a_failed_observation_of_the_source_is_alerted_once(webhook):
    """The observation is a sensor: its failure raises no run failure for the failure alert to
    see, so the sensor alerts for itself, once for the observation that failed however often
    its next ticks try again."""
    instance = dg.DagsterInstance.ephemeral()
    dead = ClickHouseResource(host="127.0.0.1", port=free_port(), password=SECRET)
    settings = Settings(start_date=str(DAY - dt.timedelta(days=3)))
    sensor = build_observation_sensor(
        daily_partitions(settings),
        settings.measurement,
        settings.observe_window_days,
        settings.observe_cron,
        webhook.url,
        "http://dagster.example:3000",
        # Both ticks within the same hour: the same observation is due.
        clock=lambda: dt.datetime(2026, 11, 21, 9, 30, tzinfo=UTC),
    )

    def tick(cursor: str | None = None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"clickhouse": dead}
        )
        return sensor.evaluate_tick(context)

    first = tick()
    again = tick(first.cursor)

    assert "failed" in first.skip_message and "failed" in again.skip_message
    assert not first.asset_events and not again.asset_events
    (body,) = webhook.bodies
    payload = json.loads(body)
    assert payload["sensor"] == OBSERVE_SENSOR_NAME
    assert "Could not reach the ClickHouse server http://127.0.0.1" in payload["error"]
    assert SECRET.encode() not in body


def test_credentials_in_the_webhook_url_go_as_basic_auth_and_never_into_logs(
    webhook, tmp_path, caplog, capsys
):
    token = "T0P-s3cret!"
    instance = dg.DagsterInstance.ephemeral()
    result, context = failed_run(instance, tmp_path)
    with_credentials = webhook.url.replace("http://", f"http://alerts:{quote(token)}@")
    unreachable = f"http://alerts:{quote(token)}@127.0.0.1:{free_port()}/hooks"

    for url in (with_credentials, unreachable):
        build_failure_alert_sensor(url, "http://dagster.example:3000")(context)

    (body,) = webhook.bodies
    assert webhook.authorizations == [
        "Basic " + base64.b64encode(f"alerts:{token}".encode()).decode()
    ]
    assert json.loads(body)["run_id"] == result.run_id
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "Could not deliver the alert to the webhook at 127.0.0.1:" in logs
    events = [str(record) for record in instance.all_logs(result.run_id)]
    for text in (logs, body.decode(), *events):
        assert token not in text and quote(token) not in text


def test_alert_masks_secrets_quoted_in_an_error():
    run = dg.DagsterRun(
        job_name="agent_metrics_job",
        run_id="0123456789abcdef",
        tags={
            "dagster/asset_partition_range_start": "2026-11-01",
            "dagster/asset_partition_range_end": "2026-11-07",
        },
    )
    payload = failure_alert(
        run,
        step_errors=[f"login failed for password={SECRET} with key aws-secret-value"],
        run_message="run failed",
        ui_url="http://dagster.example:3000",
        secrets=(SECRET, "aws-secret-value"),
    )
    body = json.dumps(payload)
    assert SECRET not in body and "aws-secret-value" not in body
    assert payload["partitions"] == "2026-11-01...2026-11-07"
    assert "login failed for password=***" in payload["error"]


@pytest.mark.e2e
def test_a_failed_run_of_the_dagster_cli_is_alerted(webhook, project_env, tmp_path):
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(project_env["DAGSTER_HOME"]))
    sensor = build_failure_alert_sensor(webhook.url, "http://dagster.example:3000")
    # As the daemon evaluates it: in the project's repository, which a CLI run is not part of.
    repository = build_definitions(Settings.from_env(project_env)).get_repository_def()
    in_repository = {"instance": instance, "repository_name": repository.name}
    # A run-status sensor's first tick only notes where the event log stands.
    first_tick = sensor.evaluate_tick(dg.build_sensor_context(**in_repository))
    dead_server = {
        **project_env,
        "CLICKHOUSE_HOST": "127.0.0.1",
        "CLICKHOUSE_PORT": str(free_port()),
        "AGENT_METRICS_MAX_RETRIES": "0",
    }
    failed = subprocess.run(
        [
            *("dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"),
            *("--select", "agent_metrics", "--partition", str(DAY)),
        ],
        cwd=tmp_path,
        env=dead_server,
        capture_output=True,
        timeout=300,
    )
    assert failed.returncode != 0

    sensor.evaluate_tick(dg.build_sensor_context(**in_repository, cursor=first_tick.cursor))

    (body,) = webhook.bodies
    (run,) = instance.get_runs()
    payload = json.loads(body)
    assert payload["run_id"] == run.run_id and payload["partitions"] == str(DAY)
    assert "Could not reach the ClickHouse server http://127.0.0.1" in payload["error"]


def late_day_alert_at(
    now: list[dt.datetime], settings: Settings, webhook: Webhook
) -> dg.SensorDefinition:
    """The late-day alert of ``settings``, posting to ``webhook``, whose clock reads ``now[0]``."""
    return build_late_day_alert_sensor(
        daily_partitions(settings),
        settings.freshness_deadline_hour,
        webhook.url,
        settings.ui_url,
        clock=lambda: now[0],
    )


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_a_day_missing_at_its_deadline_is_alerted_once_whatever_else_ran(
    clickhouse, calls_table, tmp_path, webhook, timezone
):
    insert_calls(
        clickhouse,
        calls_table,
        random_calls(DAY - dt.timedelta(days=2), days=4, calls_per_day=300, seed=17),
    )
    settings = Settings(
        timezone=timezone, start_date="2026-01-01", measurement=measuring(calls_table)
    )
    project = build_definitions(settings)
    schedule_tick = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(2), tzinfo=UTC)
    after_deadline = schedule_tick + dt.timedelta(hours=1, minutes=30)
    now = [schedule_tick - dt.timedelta(hours=1)]
    sensor = late_day_alert_at(now, settings, webhook)
    defs = dg.Definitions(
        assets=project.assets,
        jobs=project.jobs,
        schedules=project.schedules,
        sensors=[sensor],
        resources={
            "clickhouse": clickhouse,
            CSV_IO_MANAGER_KEY: LocalCsvIOManager(base_dir=str(tmp_path)),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    (request,) = (
        defs.resolve_schedule_def(SCHEDULE_NAME)
        .evaluate_tick(
            dg.build_schedule_context(
                scheduled_execution_time=schedule_tick, repository_def=defs.get_repository_def()
            )
        )
        .run_requests
    )
    job = defs.resolve_job_def(JOB_NAME)

    def late_day_tick(cursor: str | None = None):
        return sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        )

    # An older day published after the schedule's hour does not stand in for the due day.
    older_day = (dt.date.fromisoformat(request.partition_key) - dt.timedelta(days=1)).isoformat()
    armed = late_day_tick()
    with freeze_time(schedule_tick + dt.timedelta(minutes=5)):
        job.execute_in_process(partition_key=older_day, instance=instance)
    now[0] = after_deadline
    missed = late_day_tick(armed.cursor)
    (body,) = webhook.bodies
    alert = json.loads(body)
    assert alert["partitions"] == request.partition_key
    assert f"agent_metrics for {request.partition_key} is not published" in alert["text"]
    assert b"T0KEN" not in body
    assert missed.cursor == request.partition_key
    late_day_tick(missed.cursor)
    assert len(webhook.bodies) == 1, "one alert per day"

    with freeze_time(schedule_tick + dt.timedelta(minutes=10)):
        job.execute_in_process(partition_key=request.partition_key, instance=instance)
    on_time = late_day_tick(armed.cursor)
    assert len(webhook.bodies) == 1
    assert on_time.cursor == request.partition_key
    assert "published on time" in on_time.skip_message


def test_the_late_day_alert_starts_with_the_first_deadline_it_sees(webhook):
    """A new deployment is not alerted about a day due before it ran: only a day whose deadline
    passes while the sensor runs, unpublished, is late; and each one once."""
    settings = Settings(start_date="2026-01-01")
    first_tick = dt.datetime.combine(DAY, dt.time(12), tzinfo=UTC)
    now = [first_tick]
    sensor = late_day_alert_at(now, settings, webhook)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))

    started = tick(None)
    assert webhook.bodies == [] and "is not alerted" in started.skip_message
    before_next_deadline = tick(started.cursor)
    now[0] = first_tick + dt.timedelta(days=1)
    next_day_missed = tick(before_next_deadline.cursor)
    tick(next_day_missed.cursor)

    (body,) = webhook.bodies
    assert json.loads(body)["partitions"] == str(DAY)
    assert next_day_missed.cursor == str(DAY)
