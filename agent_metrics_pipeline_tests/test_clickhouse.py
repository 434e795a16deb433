"""ClickHouse access: errors that say what is wrong and how to fix it, and never a password.

Nothing is published by a failed run.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest

from agent_metrics_pipeline.clickhouse import (
    ClickHouseQueryError,
    ClickHouseResource,
    ClickHouseUnavailableError,
)
from agent_metrics_pipeline.config import SourceTable
from agent_metrics_pipeline.io_managers import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    create_calls_table,
    failure_message,
    free_port,
    materialize,
    measuring,
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
    result = materialize(dead, measuring(SourceTable()), output, DAY, raise_on_error=False)
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
        measuring(source),
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
        measuring(expected_by_default),
        LocalCsvIOManager(base_dir=str(tmp_path)),
        DAY,
        raise_on_error=False,
    )
    assert "AGENT_METRICS_SOURCE_COLUMNS" in failure_message(result)

    with_mapping = materialize(
        clickhouse, measuring(source), LocalCsvIOManager(base_dir=str(tmp_path)), DAY
    )
    assert with_mapping.success
