"""The servers a run starts for itself, on loopback, and stops: moto's S3 server, the project's
ClickHouse HTTP stand-in, ``dagster dev`` (webserver and daemon) and the webserver alone."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    S3_TEST_CREDENTIALS,
    S3_TEST_REGION,
    STAND_IN_USERS,
    S3Server,
    dagster_ui,
    free_port,
)
from benchmarks.processes import PYTHON_BIN
from clickhouse_stand_in import start_server

STARTUP_TIMEOUT_SEC = 120
SHUTDOWN_TIMEOUT_SEC = 60


def s3_env(server: S3Server, bucket: str) -> dict[str, str]:
    """The pipeline's variables for a bucket on ``server``."""
    return {
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": S3_TEST_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": S3_TEST_CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": S3_TEST_REGION,
    }


@contextmanager
def moto_s3(folder: Path, bucket: str) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with ``bucket`` created."""
    port = free_port()
    with (folder / "moto.log").open("w") as log:
        process = subprocess.Popen(
            [str(PYTHON_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            server = S3Server(f"http://127.0.0.1:{port}")
            _wait_until(lambda: _answers(f"{server.endpoint_url}/moto-api/"), process, "moto")
            server.client().create_bucket(Bucket=bucket)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=SHUTDOWN_TIMEOUT_SEC)


@dataclass(frozen=True)
class StandIn:
    """The stand-in's address. Its users are the tests': ``default`` may create and insert; the
    pipeline reads as a ``readonly=1`` user with a password whose profile leaves Arrow strings
    binary (the server default before 23.x)."""

    host: str
    port: int
    log_path: Path

    def requests_of_the_reader(self) -> int:
        """The requests the read-only user has sent so far, as the stand-in's log lists them."""
        return sum(f" {READER} " in line for line in self.log_path.read_text().splitlines())

    def reader_env(self) -> dict[str, str]:
        """The pipeline's variables for reading as the read-only user."""
        return {
            "CLICKHOUSE_HOST": self.host,
            "CLICKHOUSE_PORT": str(self.port),
            "CLICKHOUSE_USER": READER,
            "CLICKHOUSE_PASSWORD": READER_PASSWORD,
        }


@contextmanager
def clickhouse_stand_in(
    folder: Path,
    users: Mapping[str, Mapping[str, object]] = STAND_IN_USERS,
    data: Path | None = None,
) -> Iterator[StandIn]:
    """The stand-in on a free loopback port, serving ``data`` (by default a new folder in
    ``folder``): an embedded engine's folder, when no process has it open, serves as it is."""
    log_path = folder / "stand-in.log"
    server = start_server(data or folder / "data", users, log_path)
    try:
        yield StandIn(server.host, server.port, log_path)
    finally:
        server.stop()


@contextmanager
def dagster_dev(env: Mapping[str, str], folder: Path) -> Iterator[str]:
    """``dagster dev`` on a free loopback port, as the tests start it; yields its GraphQL URL."""
    command = ["dagster", "dev", "-m", "agent_metrics_pipeline.definitions"]
    with dagster_ui(command, dict(env), folder) as base:
        yield f"{base}/graphql"


@contextmanager
def dagster_webserver(env: Mapping[str, str], folder: Path) -> Iterator[str]:
    """The UI alone (no daemon) on a free loopback port; yields its base URL."""
    command = ["dagster-webserver", "-m", "agent_metrics_pipeline.definitions"]
    with dagster_ui(command, dict(env), folder) as base:
        yield base


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


def _wait_until(ready, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SEC
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode} before it was up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not up after {STARTUP_TIMEOUT_SEC} s")
        time.sleep(0.3)
