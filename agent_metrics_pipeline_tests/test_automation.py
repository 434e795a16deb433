"""Job, schedule, retries and the freshness policy, with real servers on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import socket
import struct
import threading
import time

import dagster as dg
import pytest

from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.names import CSV_IO_MANAGER_KEY, JOB_NAME, SCHEDULE_NAME
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.quality import checks
from agent_metrics_pipeline.storage.destination import csv_io_manager
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    build_asset,
    failure_message,
    insert_calls,
    measuring,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

DAY = dt.date(2026, 11, 20)
TICK = dt.datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


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
    return dg.materialize(
        [build_asset(measuring(source), retry_policy=retry_policy)],
        partition_key=str(DAY),
        resources={
            "clickhouse": clickhouse,
            CSV_IO_MANAGER_KEY: io_manager,
        },
        raise_on_error=False,
    )


def retry_events(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def queries_run(result: dg.ExecuteInProcessResult) -> int:
    """Each attempt of the step runs the ClickHouse query once."""
    return sum(event.event_type == dg.DagsterEventType.STEP_START for event in result.all_events)


def test_transient_s3_fault_is_retried_at_the_write_not_by_running_the_query_again(
    clickhouse, calls_table, bucket
):
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=31)
    insert_calls(clickhouse, calls_table, calls)
    moto_port = int(bucket.server.endpoint_url.rsplit(":", 1)[1])
    proxy = RefuseFirstConnections(moto_port, refusals=1)
    try:
        flaky = S3CsvIOManager(
            s3=bucket.server.resource(
                endpoint_url=f"http://127.0.0.1:{proxy.port}", max_attempts=1
            ),
            bucket=bucket.name,
        )
        result = run_with_retries(
            clickhouse, calls_table, flaky, dg.RetryPolicy(max_retries=2, delay=0.2)
        )
    finally:
        proxy.close()

    assert result.success
    assert proxy.accepted >= 2, "the refused write was tried again"
    assert retry_events(result) == [] and queries_run(result) == 1
    assert_csv_matches(
        bucket.get(f"agent_metrics/{DAY}/agent_metrics_{DAY}.csv"),
        expected_metrics(calls)[DAY],
        DAY,
    )


def test_s3_that_never_answers_fails_in_bounded_time_without_running_the_query_again(
    clickhouse, calls_table, hung_server, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    insert_calls(clickhouse, calls_table, random_calls(DAY, days=1, calls_per_day=50))
    settings = Settings.from_env(
        {
            "S3_BUCKET": "metrics",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{hung_server.port}",
            "S3_CONNECT_TIMEOUT_SEC": "1",
            "S3_READ_TIMEOUT_SEC": "1",
            "S3_MAX_RETRIES": "1",
        }
    )
    started = time.monotonic()
    result = run_with_retries(
        clickhouse, calls_table, csv_io_manager(settings), dg.RetryPolicy(max_retries=3, delay=5)
    )
    assert not result.success
    assert time.monotonic() - started < 20
    assert retry_events(result) == [] and queries_run(result) == 1
    assert "S3_ENDPOINT_URL" in failure_message(result)


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


def test_materializing_the_asset_runs_one_step_and_no_freshness_check():
    defs = build_definitions(Settings(start_date="2026-01-01"))
    graph = defs.resolve_asset_graph()
    # What `dagster asset materialize --select agent_metrics` and the UI's button select.
    selected_checks = dg.AssetSelection.assets("agent_metrics").resolve_checks(graph)
    assert {key.name for key in selected_checks} == set(checks.CHECK_DESCRIPTIONS)
    cli_run = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("agent_metrics")}
    )
    assert [node.name for node in cli_run.graph.nodes] == ["agent_metrics"]


@pytest.mark.parametrize("deadline_hour", [3, 9])
def test_freshness_policy_expects_a_materialization_between_the_schedule_and_the_deadline(
    deadline_hour,
):
    defs = build_definitions(Settings(freshness_deadline_hour=deadline_hour))
    policy = (
        defs.resolve_assets_def("agent_metrics")
        .specs_by_key[dg.AssetKey("agent_metrics")]
        .freshness_policy
    )
    assert policy.deadline_cron == f"0 {deadline_hour} * * *"
    assert policy.timezone == "UTC"
    assert policy.lower_bound_delta == dt.timedelta(hours=deadline_hour - 2)
