"""Bad input fails fast with a message that says what is wrong and how to fix it.

Nothing is published by a failed run, and no secret appears in any message.
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from agent_metrics_pipeline.config import SourceTable
from agent_metrics_pipeline.demo import create_calls_table
from agent_metrics_pipeline.io_managers import (
    LocalCsvIOManager,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    S3CsvIOManager,
)
from agent_metrics_pipeline.resources import (
    ClickHouseQueryError,
    ClickHouseResource,
    ClickHouseUnavailableError,
)
from agent_metrics_pipeline_tests.conftest import S3_TEST_REGION, free_port, insert_calls
from agent_metrics_pipeline_tests.helpers import (
    failure_message,
    materialize,
    metrics_settings,
    random_calls,
)

DAY = "2026-11-20"
SECRET = "s3cr3t-Pa55word"


def test_unreachable_clickhouse_server_fails_fast_without_leaking_the_password(tmp_path):
    dead = ClickHouseResource(
        host="127.0.0.1", port=free_port(), password=SECRET, connect_timeout_sec=2
    )
    started = time.monotonic()
    with pytest.raises(ClickHouseUnavailableError) as raised:
        dead.query_polars("SELECT 1")
    assert time.monotonic() - started < 10
    assert "CLICKHOUSE_HOST" in str(raised.value)
    assert SECRET not in str(raised.value)

    output = LocalCsvIOManager(base_dir=str(tmp_path))
    result = materialize(dead, metrics_settings(SourceTable()), output, DAY, raise_on_error=False)
    message = failure_message(result)
    assert "Could not reach the ClickHouse server http://127.0.0.1" in message
    assert SECRET not in message
    assert not any(tmp_path.rglob("*.csv"))


def failing_clickhouse_server(code: int, status: int, message: str) -> http.server.HTTPServer:
    """An HTTP server answering every request as a ClickHouse server reporting ``code``.

    No modern ClickHouse server can be installed here, so these faults are replayed over real
    HTTP, in the server's wire format.
    """
    body = f"Code: {code}. DB::Exception: {message}".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("X-ClickHouse-Exception-Code", str(code))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("code", "status", "message", "expected_error", "hint"),
    [
        (
            516,
            401,
            f"default: Authentication failed: password '{SECRET}' is incorrect.",
            ClickHouseQueryError,
            "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
        ),
        (60, 404, "Table default.calls does not exist.", ClickHouseQueryError, "SOURCE_TABLE"),
        (159, 500, "Timeout exceeded: elapsed 300 seconds.", ClickHouseUnavailableError, "now"),
        (202, 500, "Too many simultaneous queries.", ClickHouseUnavailableError, "now"),
        (241, 500, "Memory limit exceeded.", ClickHouseUnavailableError, "now"),
    ],
)
def test_server_errors_are_classified_and_never_show_the_password(
    code, status, message, expected_error, hint
):
    server = failing_clickhouse_server(code, status, message)
    try:
        resource = ClickHouseResource(
            host="127.0.0.1", port=server.server_address[1], password=SECRET
        )
        with pytest.raises(expected_error) as raised:
            resource.query_polars("SELECT 1")
    finally:
        server.shutdown()
    assert hint in str(raised.value)
    assert SECRET not in str(raised.value)


def test_embedded_engine_held_by_another_process_is_a_transient_error(tmp_path):
    engine_dir = tmp_path / "engine"
    holder = subprocess.Popen(
        [sys.executable, "-m", "agent_metrics_pipeline_tests.engine_cli", "hold", str(engine_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        probe = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent_metrics_pipeline_tests.engine_cli",
                "probe",
                str(engine_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait(timeout=30)
    error_class, _, message = probe.stdout.strip().partition(": ")
    assert error_class == "ClickHouseUnavailableError", probe.stdout + probe.stderr
    assert "in use by another process" in message


def test_missing_table_names_the_variable_to_fix(clickhouse, tmp_path):
    source = SourceTable(table="no_such_calls_table")
    result = materialize(
        clickhouse,
        metrics_settings(source),
        LocalCsvIOManager(base_dir=str(tmp_path)),
        DAY,
        raise_on_error=False,
    )
    message = failure_message(result)
    assert "AGENT_METRICS_SOURCE_TABLE" in message
    assert not any(tmp_path.rglob("*.csv"))


def test_unmapped_column_names_the_mapping_variable(clickhouse, tmp_path):
    source = SourceTable(
        table="calls_with_other_names",
        columns={
            "call_id": "id",
            "agent_id": "agent",
            "started_at": "started_at",
            "duration_sec": "duration_sec",
            "status": "status",
        },
    )
    create_calls_table(clickhouse, source)
    expected_by_default = SourceTable(table=source.table)
    result = materialize(
        clickhouse,
        metrics_settings(expected_by_default),
        LocalCsvIOManager(base_dir=str(tmp_path)),
        DAY,
        raise_on_error=False,
    )
    assert "AGENT_METRICS_SOURCE_COLUMNS" in failure_message(result)

    with_mapping = materialize(
        clickhouse, metrics_settings(source), LocalCsvIOManager(base_dir=str(tmp_path)), DAY
    )
    assert with_mapping.success


def test_missing_bucket_says_to_create_it(clickhouse, calls_table, s3_server):
    insert_calls(clickhouse, calls_table, random_calls(dt.date(2026, 11, 20), 1, 50))
    output = S3CsvIOManager(s3=s3_server.resource(), bucket="no-such-bucket-here")
    result = materialize(
        clickhouse, metrics_settings(calls_table), output, DAY, raise_on_error=False
    )
    message = failure_message(result)
    assert "'no-such-bucket-here'" in message and "does not exist" in message
    assert "S3_BUCKET" in message


def test_unreachable_s3_endpoint_fails_fast(clickhouse, calls_table, s3_server):
    insert_calls(clickhouse, calls_table, random_calls(dt.date(2026, 11, 20), 1, 50))
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    output = S3CsvIOManager(
        s3=s3_server.resource(endpoint_url=dead_endpoint, max_attempts=0), bucket="any"
    )
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError, match="S3_ENDPOINT_URL"):
        output._write("k", b"x")
    assert time.monotonic() - started < 10


@pytest.fixture
def authenticating_s3(tmp_path):
    """A second S3 server that checks access keys after its first three requests."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    moto = str(Path(sys.executable).parent / "moto_server")
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "region_name": S3_TEST_REGION}
    iam = boto3.client("iam", aws_access_key_id="boot", aws_secret_access_key="boot", **options)
    for _ in range(100):
        try:
            iam.create_user(UserName="writer")
            break
        except Exception:
            time.sleep(0.1)
    key = iam.create_access_key(UserName="writer")["AccessKey"]
    s3 = boto3.client("s3", aws_access_key_id="boot", aws_secret_access_key="boot", **options)
    s3.create_bucket(Bucket="guarded")
    yield endpoint, key["AccessKeyId"]
    process.terminate()
    process.wait(timeout=10)


def test_rejected_s3_credentials_say_which_variables_to_check(authenticating_s3, s3_server):
    endpoint, real_key_id = authenticating_s3
    wrong_secret = "wrong-secret-value"
    output = S3CsvIOManager(
        s3=s3_server.resource(
            endpoint_url=endpoint,
            aws_access_key_id=real_key_id,
            aws_secret_access_key=wrong_secret,
        ),
        bucket="guarded",
    )
    with pytest.raises(ObjectStoreError) as raised:
        output._write("agent_metrics/x.csv", b"x")
    assert "AWS_ACCESS_KEY_ID" in str(raised.value)
    assert wrong_secret not in str(raised.value)


@pytest.mark.parametrize("bad_key", ["2026-02-30", "20261120", "2099-01-01", "2025-12-31"])
def test_invalid_partition_key_is_refused_before_any_work(
    clickhouse, calls_table, tmp_path, bad_key
):
    with pytest.raises(dg.DagsterUnknownPartitionError, match=f"key `{bad_key}`"):
        materialize(
            clickhouse,
            metrics_settings(calls_table),
            LocalCsvIOManager(base_dir=str(tmp_path)),
            bad_key,
        )
    assert not any(tmp_path.rglob("*"))


def test_reading_a_day_never_published_says_so(tmp_path):
    with pytest.raises(ObjectStoreError, match="materialize that partition"):
        LocalCsvIOManager(base_dir=str(tmp_path)).load_day("agent_metrics", DAY)


def test_unknown_aws_profile_is_a_permanent_error(s3_server):
    output = S3CsvIOManager(
        s3=s3_server.resource(
            profile_name="no-such-profile", aws_access_key_id=None, aws_secret_access_key=None
        ),
        bucket="any",
    )
    with pytest.raises(ObjectStoreError, match="AWS_PROFILE"):
        output._write("k", b"x")


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (400, "RequestTimeout"), (500, "InternalError")]
)
def test_throttling_and_server_trouble_are_transient(status, code):
    # Throttling cannot be provoked on the local S3 server, so its answer is replayed over HTTP.
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>try again</Message></Error>"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        output = S3CsvIOManager(
            s3=S3Resource(
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                region_name=S3_TEST_REGION,
                max_attempts=0,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
            bucket="metrics",
        )
        with pytest.raises(ObjectStoreUnavailableError, match=code):
            output._write("agent_metrics/x.csv", b"x")
    finally:
        server.shutdown()
