"""Failure alerts: a failed run is POSTed to a real webhook on 127.0.0.1, with no secret."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator

import dagster as dg
import pytest

from agent_metrics_pipeline.alerts import build_failure_alert_sensor, failure_alert
from agent_metrics_pipeline.assets import CSV_IO_MANAGER_KEY
from agent_metrics_pipeline.clickhouse import ClickHouseResource
from agent_metrics_pipeline.config import SourceTable
from agent_metrics_pipeline.io_managers import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import build_asset, free_port, measuring

DAY = dt.date(2026, 11, 20)
SECRET = "Sup3r-s3cret-pw"


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
    result = dg.materialize(
        [build_asset(measuring(SourceTable()))],
        partition_key=str(DAY),
        instance=instance,
        resources={
            "clickhouse": dead,
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
