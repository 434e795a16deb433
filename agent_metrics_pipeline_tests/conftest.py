"""Real parts for the tests: the ClickHouse engine and an S3 HTTP server on 127.0.0.1.

ClickHouse: the embedded engine (one data folder per test session: the engine serves one
folder per process), or a live server when ``AGENT_METRICS_TEST_CLICKHOUSE_HOST`` is set.
Each test gets a table of its own.

S3: ``moto_server`` started on a free loopback port for the session; each test gets a bucket
of its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from dagster_aws.s3 import S3Resource

from agent_metrics_pipeline.config import SourceTable
from agent_metrics_pipeline.demo import create_calls_table
from agent_metrics_pipeline.io_managers import S3CsvIOManager
from agent_metrics_pipeline.resources import ClickHouseResource
from agent_metrics_pipeline_tests.oracle import Call

S3_TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
S3_TEST_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_clickhouse() -> ClickHouseResource:
    return ClickHouseResource(
        host=os.environ["AGENT_METRICS_TEST_CLICKHOUSE_HOST"],
        port=int(os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_PORT", "8123")),
        username=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_USER", "default"),
        password=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_PASSWORD", ""),
        secure=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_SECURE", "") == "true",
    )


@pytest.fixture(scope="session", params=["embedded", "server"])
def clickhouse(request: pytest.FixtureRequest, tmp_path_factory) -> ClickHouseResource:
    """The same tests run on the embedded engine and, when configured, on a live server."""
    if request.param == "server":
        if not os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_HOST"):
            pytest.skip("set AGENT_METRICS_TEST_CLICKHOUSE_HOST to test against a server")
        return _server_clickhouse()
    return ClickHouseResource(embedded_path=str(tmp_path_factory.mktemp("clickhouse")))


@pytest.fixture
def calls_table(clickhouse: ClickHouseResource) -> Iterator[SourceTable]:
    source = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(clickhouse, source)
    yield source
    with clickhouse.get_client() as client:
        client.command(f"DROP TABLE IF EXISTS `{source.database}`.`{source.table}`")


def insert_calls(
    clickhouse: ClickHouseResource, source: SourceTable, calls: Sequence[Call]
) -> None:
    if not calls:
        return
    rows = [[c.call_id, c.agent_id, c.started_at, c.duration_sec, c.status] for c in calls]
    columns = [
        source.column(role)
        for role in ("call_id", "agent_id", "started_at", "duration_sec", "status")
    ]
    with clickhouse.get_client() as client:
        client.insert(f"`{source.database}`.`{source.table}`", rows, column_names=columns)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_TEST_REGION, **S3_TEST_CREDENTIALS
        )

    def resource(self, **overrides) -> S3Resource:
        options = {
            "endpoint_url": self.endpoint_url,
            "region_name": S3_TEST_REGION,
            "max_attempts": 1,
            **S3_TEST_CREDENTIALS,
            **overrides,
        }
        return S3Resource(**options)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.1)
    yield S3Server(endpoint)
    process.terminate()
    process.wait(timeout=10)
    log.close()


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


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    name = f"metrics-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return Bucket(name, s3_server)
