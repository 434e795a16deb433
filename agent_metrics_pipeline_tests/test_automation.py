"""Schedule, retries and failure alerts, with real servers on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import dagster as dg
import pytest

from agent_metrics_pipeline.assets import CSV_IO_MANAGER_KEY, build_agent_metrics_asset
from agent_metrics_pipeline.automation import (
    JOB_NAME,
    SCHEDULE_NAME,
    build_failure_alert_sensor,
    failure_alert,
)
from agent_metrics_pipeline.config import Settings, SourceTable
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.io_managers import LocalCsvIOManager, S3CsvIOManager
from agent_metrics_pipeline.partitions import daily_partitions
from agent_metrics_pipeline.resources import ClickHouseResource
from agent_metrics_pipeline_tests.conftest import free_port, insert_calls
from agent_metrics_pipeline_tests.helpers import UTC, metrics_settings, random_calls
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

DAY = dt.date(2026, 11, 20)
TICK = dt.datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
SECRET = "Sup3r-s3cret-pw"


def schedule_keys(timezone: str, lookback_days: int = 0, tick: dt.datetime = TICK) -> list[str]:
    defs = build_definitions(
        Settings(timezone=timezone, start_date="2026-01-01", schedule_lookback_days=lookback_days)
    )
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    context = dg.build_schedule_context(
        scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    )
    data = schedule.evaluate_tick(context)
    assert {request.job_name for request in data.run_requests} <= {JOB_NAME, None}
    return sorted(request.partition_key for request in data.run_requests)


def test_schedule_tick_targets_yesterday_in_utc():
    assert schedule_keys("UTC") == ["2026-11-26"]


def test_schedule_lookback_adds_the_previous_days():
    assert schedule_keys("UTC", lookback_days=2) == ["2026-11-24", "2026-11-25", "2026-11-26"]


@pytest.mark.parametrize(
    ("timezone", "expected"),
    [
        # 02:00 UTC is 11:00 on the 27th in Tokyo: the 26th is complete.
        ("Asia/Tokyo", ["2026-11-26"]),
        # 02:00 UTC is 21:00 on the 26th in New York: the 25th is the latest complete day.
        ("America/New_York", ["2026-11-25"]),
    ],
)
def test_schedule_uses_the_partitions_timezone(timezone, expected):
    assert schedule_keys(timezone) == expected


class RefuseFirstConnections:
    """A TCP proxy to ``target`` that drops its first ``refusals`` connections unanswered."""

    def __init__(self, target_port: int, refusals: int) -> None:
        self.target_port = target_port
        self.refusals = refusals
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.refusals:
                # Linger 0: the close is a reset, as from a server that refuses the request.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def run_with_retries(clickhouse, source: SourceTable, io_manager, retry_policy: dg.RetryPolicy):
    asset = build_agent_metrics_asset(
        daily_partitions(Settings(start_date="2026-01-01")), retry_policy=retry_policy
    )
    return dg.materialize(
        [asset],
        partition_key=str(DAY),
        resources={
            "clickhouse": clickhouse,
            "metrics_settings": metrics_settings(source),
            CSV_IO_MANAGER_KEY: io_manager,
        },
        raise_on_error=False,
    )


def retry_events(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_transient_s3_fault_on_the_first_attempt_is_retried(clickhouse, calls_table, bucket):
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=31)
    insert_calls(clickhouse, calls_table, calls)
    moto_port = int(bucket.server.endpoint_url.rsplit(":", 1)[1])
    proxy = RefuseFirstConnections(moto_port, refusals=1)
    try:
        flaky = S3CsvIOManager(
            s3=bucket.server.resource(
                endpoint_url=f"http://127.0.0.1:{proxy.port}", max_attempts=0
            ),
            bucket=bucket.name,
        )
        result = run_with_retries(
            clickhouse, calls_table, flaky, dg.RetryPolicy(max_retries=2, delay=0.2)
        )
    finally:
        proxy.close()

    assert result.success
    assert len(retry_events(result)) == 1
    assert_csv_matches(
        bucket.get(f"agent_metrics/{DAY}/agent_metrics_{DAY}.csv"),
        expected_metrics(calls)[DAY],
        DAY,
    )


def test_permanent_error_fails_once_without_retrying(clickhouse, calls_table, s3_server):
    insert_calls(clickhouse, calls_table, random_calls(DAY, days=1, calls_per_day=50))
    missing = S3CsvIOManager(s3=s3_server.resource(), bucket="bucket-that-was-never-created")
    started = time.monotonic()
    result = run_with_retries(
        clickhouse, calls_table, missing, dg.RetryPolicy(max_retries=3, delay=5)
    )
    assert not result.success
    assert retry_events(result) == []
    assert time.monotonic() - started < 5, "a permanent error must not wait for a retry"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN", received
    server.shutdown()


def test_failed_run_posts_an_alert_without_secrets(webhook, tmp_path):
    url, received = webhook
    instance = dg.DagsterInstance.ephemeral()
    dead = ClickHouseResource(host="127.0.0.1", port=free_port(), password=SECRET)
    asset = build_agent_metrics_asset(daily_partitions(Settings(start_date="2026-01-01")))
    result = dg.materialize(
        [asset],
        partition_key=str(DAY),
        instance=instance,
        resources={
            "clickhouse": dead,
            "metrics_settings": metrics_settings(SourceTable()),
            CSV_IO_MANAGER_KEY: LocalCsvIOManager(base_dir=str(tmp_path)),
        },
        raise_on_error=False,
    )
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure_event = next(
        e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE
    )
    sensor = build_failure_alert_sensor(
        url, "http://dagster.example:3000", secrets=(SECRET, "aws-secret-value")
    )
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure_event,
    ).for_run_failure()

    sensor(context)

    (body,) = received
    payload = json.loads(body)
    assert payload["run_id"] == result.run_id
    assert payload["partitions"] == str(DAY)
    assert payload["run_url"] == f"http://dagster.example:3000/runs/{result.run_id}"
    assert "Could not reach the ClickHouse server http://127.0.0.1" in payload["error"]
    assert result.run_id[:8] in payload["text"]
    assert SECRET.encode() not in body
    assert b"T0KEN" not in body


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
