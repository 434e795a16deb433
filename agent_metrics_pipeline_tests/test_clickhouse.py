"""ClickHouse access: errors that say what is wrong and how to fix it, and never a password;
read-only by construction; server mode publishing what the embedded engine publishes.

Nothing is published by a failed run.
"""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from agent_metrics_pipeline.clickhouse.errors import (
    ClickHouseEngineBusyError,
    ClickHouseMemoryLimitError,
    ClickHouseQueryError,
    ClickHouseUnavailableError,
)
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource, clickhouse_resource
from agent_metrics_pipeline.clickhouse.session import ClickHouseSession
from agent_metrics_pipeline.core.measurement import Chunking, InvalidRowsPolicy, SourceTable
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    TIMED_READER,
    TIMED_READER_MAX_EXECUTION_TIME,
    create_calls_table,
    failure_message,
    free_port,
    insert_calls,
    materialize,
    measuring,
    random_calls,
    writer,
)
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics

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
        (
            497,
            403,
            "metrics_reader: Not enough privileges. To execute this query, it's necessary to "
            "have the grant SELECT(agent_id, started_at) ON default.calls.",
            ClickHouseQueryError,
            "Grant it to the user",
        ),
        (60, 404, "Table default.calls does not exist.", ClickHouseQueryError, "SOURCE_TABLE"),
        (159, 500, "Timeout exceeded: elapsed 300 seconds.", ClickHouseUnavailableError, "now"),
        (202, 500, "Too many simultaneous queries.", ClickHouseUnavailableError, "now"),
        (
            241,
            500,
            "(total) memory limit exceeded: would use 11.20 GiB, maximum: 11.18 GiB.",
            ClickHouseUnavailableError,
            "Retried",
        ),
        (
            241,
            500,
            "Query memory limit exceeded: would use 250.66 MiB (attempt to allocate chunk of "
            "4.00 MiB), maximum: 238.42 MiB: While executing AggregatingTransform.",
            ClickHouseMemoryLimitError,
            "AGENT_METRICS_AGENT_SHARDS",
        ),
        (
            241,
            500,
            "Memory limit (for user) exceeded: would use 9.31 GiB, maximum: 9.31 GiB.",
            ClickHouseMemoryLimitError,
            "max_memory_usage",
        ),
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


def _probe(engine_dir, wait_sec: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent_metrics_pipeline_tests.engine_cli",
            "probe",
            str(engine_dir),
            str(wait_sec),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _hold(engine_dir) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-m", "agent_metrics_pipeline_tests.engine_cli", "hold", str(engine_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_embedded_engine_held_by_another_process_is_a_transient_error(tmp_path):
    engine_dir = tmp_path / "engine"
    holder = _hold(engine_dir)
    try:
        stdout, stderr = _probe(engine_dir, wait_sec=0).communicate(timeout=120)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    error_class, _, message = stdout.strip().partition(": ")
    assert error_class == "ClickHouseEngineBusyError", stdout + stderr
    assert issubclass(ClickHouseEngineBusyError, ClickHouseUnavailableError)
    assert "in use by another process" in message


def test_a_client_waits_for_the_engine_another_process_releases(tmp_path):
    """A run waits out the second or two an observation holds the engine for."""
    engine_dir = tmp_path / "engine"
    holder = _hold(engine_dir)
    probe = _probe(engine_dir, wait_sec=60)
    try:
        # The probe is waiting: the folder is held until the holder ends.
        with pytest.raises(subprocess.TimeoutExpired):
            probe.wait(timeout=2)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    stdout, stderr = probe.communicate(timeout=120)
    assert stdout.strip() == "ok", stdout + stderr


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


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE {table}",
        "INSERT INTO {table} SELECT * FROM {table}",
        "CREATE TABLE {copy} ENGINE = MergeTree ORDER BY tuple() AS SELECT * FROM {table}",
    ],
)
def test_pipeline_queries_cannot_write_even_as_a_writable_user(clickhouse, calls_table, statement):
    insert_calls(clickhouse, calls_table, random_calls(dt.date(2026, 11, 20), 1, 20))
    writable, table = writer(clickhouse), calls_table.qualified_name
    copy = f"`{calls_table.database}`.`{calls_table.table}_copy`"
    with pytest.raises(ClickHouseQueryError, match="refused a write") as raised:
        writable.query_polars(statement.format(table=table, copy=copy))
    assert "readonly" in str(raised.value)
    with writable.get_client() as client:
        assert client.query(f"SELECT count() FROM {table}").result_rows == [(20,)]
        assert not client.command(f"EXISTS TABLE {copy}")


@pytest.fixture
def read_only_server(server_clickhouse) -> ClickHouseResource:
    if os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_HOST"):
        pytest.skip("the live server's user profile is not known to be read-only")
    return server_clickhouse


@pytest.mark.parametrize(
    ("setting", "value"),
    [("output_format_arrow_string_as_string", True), ("max_execution_time", 60)],
)
def test_a_setting_the_profile_forbids_is_a_permanent_error_naming_the_profile(
    read_only_server, setting, value
):
    with pytest.raises(ClickHouseQueryError) as raised:
        with read_only_server.get_client() as client:
            if setting == "output_format_arrow_string_as_string":
                client.query_arrow("SELECT 'x'", use_strings=value)
            else:
                client.query("SELECT 1", settings={setting: value})
    message = str(raised.value)
    assert setting in message and "settings profile" in message
    assert "Could not reach" not in message
    assert READER_PASSWORD not in message


def _materialize_everywhere(
    engines: dict[str, ClickHouseResource], calls, output_root, first_day, last_day, timezone
):
    """The same calls, one run per engine; the files each wrote and its check results."""
    published, checks = {}, {}
    for mode, engine in engines.items():
        source = SourceTable(table=f"parity_{uuid.uuid4().hex[:12]}")
        create_calls_table(engine, source)
        insert_calls(engine, source, calls)
        output = output_root / mode
        result = materialize(
            engine,
            measuring(source, invalid_rows=InvalidRowsPolicy.EXCLUDE),
            LocalCsvIOManager(base_dir=str(output)),
            first_day,
            last_day,
            timezone=timezone,
        )
        published[mode] = {
            path.relative_to(output): path.read_bytes() for path in sorted(output.rglob("*.csv"))
        }
        checks[mode] = [
            (e.check_name, e.passed, e.severity, {k: v.value for k, v in e.metadata.items()})
            for e in result.get_asset_check_evaluations()
        ]
    return published, checks


@pytest.mark.parametrize(
    ("timezone", "first_day", "last_day"),
    [
        ("UTC", "2026-11-01", None),
        ("America/New_York", "2026-11-01", None),  # 25 hours long: clocks fall back
        ("America/New_York", "2026-10-30", "2026-11-03"),
    ],
)
def test_server_mode_publishes_the_bytes_of_the_embedded_engine(
    embedded_clickhouse, server_clickhouse, tmp_path, timezone, first_day, last_day
):
    edge = dt.datetime(2026, 11, 1, 4, tzinfo=dt.UTC)  # midnight in New York, 04:00 in UTC
    calls = random_calls(dt.date(2026, 10, 29), days=7, calls_per_day=150, seed=91)
    calls += [
        Call("edge-before", "a,b", edge - dt.timedelta(milliseconds=1), 10.0, "Answered"),
        Call("edge-at", 'say "hi"', edge, 20.0, "Answered"),
        Call("no-agent", None, edge + dt.timedelta(hours=3), 30.0, "Answered"),
        Call("negative", "line\nbreak", edge + dt.timedelta(hours=4), -1.0, "Answered"),
    ]
    engines = {"embedded": embedded_clickhouse, "server": server_clickhouse}
    published, checks = _materialize_everywhere(
        engines, calls, tmp_path, first_day, last_day, timezone
    )
    assert published["embedded"], "the run must publish files"
    assert published["server"] == published["embedded"]
    assert checks["server"] == checks["embedded"]
    expected = expected_metrics(calls, timezone=timezone)
    for path, data in published["server"].items():
        day = dt.date.fromisoformat(path.parent.name)
        assert_csv_matches(data, expected.get(day, []), day)


def test_a_server_that_never_answers_is_given_up_within_the_connect_timeout(hung_server):
    assert Settings().clickhouse_connect_timeout_sec <= 15, "the default handshake bound"
    settings = Settings.from_env(
        {
            "CLICKHOUSE_HOST": "127.0.0.1",
            "CLICKHOUSE_PORT": str(hung_server.port),
            "CLICKHOUSE_PASSWORD": SECRET,
            "CLICKHOUSE_CONNECT_TIMEOUT_SEC": "2",
        }
    )
    resource = clickhouse_resource(settings).model_copy(update={"password": SECRET})
    started = time.monotonic()
    with pytest.raises(ClickHouseUnavailableError, match="CLICKHOUSE_HOST") as raised:
        resource.query_polars("SELECT 1")
    assert time.monotonic() - started < 6
    assert "timed out" in str(raised.value) and SECRET not in str(raised.value)


def test_the_query_timeout_is_sent_to_the_server_which_stops_the_query(clickhouse):
    # Ten seconds of sleep in blocks of a row: the engine checks its time limit between blocks.
    slow = "SELECT sleepEachRow(0.1) FROM numbers(100) SETTINGS max_block_size = 1"
    writable = writer(clickhouse).model_copy(update={"query_timeout_sec": 1})
    started = time.monotonic()
    with pytest.raises(ClickHouseUnavailableError, match="TIMEOUT_EXCEEDED"):
        writable.query_polars(slow)
    assert time.monotonic() - started < 8


def test_only_the_embedded_engine_is_told_not_to_compile_expressions(clickhouse):
    # It forgets compiled code when the step closes it; a server keeps it for the next query.
    compiling = "SELECT getSetting('compile_expressions') AS expressions, " + (
        "getSetting('compile_aggregate_expressions') AS aggregates"
    )
    with clickhouse.session() as session:
        row = session.query_polars(compiling).row(0, named=True)
    embedded = clickhouse.host is None
    assert row == {"expressions": not embedded, "aggregates": not embedded}


def _time_limit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING and "max_execution_time" in record.getMessage()
    ]


# The warning is given once per process for a server, user and timeout: each case has a timeout
# of its own, so that no other test of the session has been warned already.
@pytest.mark.parametrize(
    ("user", "timeout", "expected"),
    [
        (READER, 97, "sets no time limit on this user's queries (max_execution_time = 0)"),
        (TIMED_READER, TIMED_READER_MAX_EXECUTION_TIME, None),
        (TIMED_READER, 7, f"run {TIMED_READER_MAX_EXECUTION_TIME} s (max_execution_time)"),
    ],
)
def test_a_read_only_user_without_a_server_time_limit_is_warned_once_with_the_fix(
    read_only_server, caplog, user, timeout, expected
):
    resource = ClickHouseResource(
        host=read_only_server.host,
        port=read_only_server.port,
        username=user,
        password=READER_PASSWORD,
        query_timeout_sec=timeout,
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert resource.query_polars("SELECT 1 AS one").item() == 1
        resource.model_copy().query_polars("SELECT 1")  # another object, the same configuration
    warnings = _time_limit_warnings(caplog)
    if expected is None:
        assert warnings == []
        return
    (warning,) = warnings
    assert expected in warning
    assert f"Set max_execution_time = {timeout} (CLICKHOUSE_QUERY_TIMEOUT_SEC" in warning
    assert "settings profile" in warning and READER_PASSWORD not in warning


def test_a_query_the_client_gives_up_on_is_stopped_on_the_server(read_only_server):
    marker = f"slow-{uuid.uuid4().hex}"
    # Thirty seconds in half-second steps, one after another whatever the number of cores, and
    # no setting, which this readonly=1 user could not send; its profile sets no time limit.
    slow = (
        "WITH RECURSIVE steps AS (SELECT 1 AS n UNION ALL SELECT n + 1 + sleep(0.5) FROM steps "
        f"WHERE n < 60) SELECT count() AS steps, '{marker}' AS marker FROM steps"
    )
    impatient = read_only_server.model_copy(update={"query_timeout_sec": 1})

    def still_running() -> bool:
        with writer(read_only_server).get_client() as client:
            rows = client.query(
                "SELECT count() FROM system.processes "
                "WHERE position(query, {marker:String}) > 0 AND query_id != queryID()",
                parameters={"marker": marker},
            ).result_rows
        return rows[0][0] > 0

    started = time.monotonic()
    with pytest.raises(ClickHouseUnavailableError, match="CLICKHOUSE_QUERY_TIMEOUT_SEC"):
        impatient.query_polars(slow)
    assert time.monotonic() - started < 20, "the client waits its timeout, not the query"
    deadline = time.monotonic() + 10
    while still_running():
        assert time.monotonic() < deadline, "the server still runs the query the client gave up on"
        time.sleep(0.2)


@pytest.mark.parametrize("clickhouse", ["server"], indirect=True)
def test_a_run_greets_the_server_once_then_sends_one_request_per_query(
    clickhouse, calls_table, stand_in, tmp_path, monkeypatch
):
    if stand_in is None:
        pytest.skip("counts the requests the HTTP stand-in logs")
    first_day = dt.date(2026, 11, 1)
    insert_calls(clickhouse, calls_table, random_calls(first_day, days=6, calls_per_day=50, seed=5))
    queries = []
    original = ClickHouseSession.query_polars

    def counted(self, sql, parameters=None):
        queries.append(sql)
        return original(self, sql, parameters)

    monkeypatch.setattr(ClickHouseSession, "query_polars", counted)

    def requests_of_the_reader() -> int:
        return sum(f" {READER} " in line for line in stand_in.log_path.read_text().splitlines())

    overheads = []
    for last_day in (first_day, first_day + dt.timedelta(days=5)):
        queries.clear()
        before = requests_of_the_reader()
        materialize(
            clickhouse,
            measuring(calls_table),
            LocalCsvIOManager(base_dir=str(tmp_path)),
            str(first_day),
            str(last_day),
            chunking=Chunking(max_days_per_query=1),
        )
        overheads.append(requests_of_the_reader() - before - len(queries))

    # One day takes a few queries, six days in one-day chunks several more: the client's
    # greeting (the server's version and time zone, its settings, a check) is paid once per
    # run, whatever the number of queries.
    one_day, six_days = overheads
    assert one_day == six_days and 0 <= one_day <= 3, overheads
