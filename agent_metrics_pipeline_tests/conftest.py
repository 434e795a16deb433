"""Real parts for the tests: the ClickHouse engine and an S3 HTTP server on 127.0.0.1.

ClickHouse, each test run twice: on the embedded engine (one data folder per test session: the
engine serves one folder per process), and in server mode over HTTP. Server mode talks to a live
server when ``AGENT_METRICS_TEST_CLICKHOUSE_HOST`` is set, and otherwise to the HTTP stand-in
(``clickhouse_stand_in``) over the same engine in a process of its own, as a ``readonly=1`` user
with a password whose profile leaves ``output_format_arrow_string_as_string`` off (the server
default before 23.x). Each test gets a table of its own, written by a user who may write.

S3: ``moto_server`` started on a free loopback port for the session; each test gets a bucket
of its own.
"""

from __future__ import annotations

import http.server
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    STAND_IN_USERS,
    Bucket,
    S3Server,
    Webhook,
    create_calls_table,
    moto_server,
    register_writer,
    subprocess_env,
    writer,
)
from clickhouse_stand_in import ServerProcess, start_server


@pytest.fixture(scope="session")
def embedded_clickhouse(tmp_path_factory) -> ClickHouseResource:
    return ClickHouseResource(embedded_path=str(tmp_path_factory.mktemp("clickhouse")))


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory) -> Iterator[ServerProcess | None]:
    """The HTTP stand-in of this session, unless the tests talk to a live server."""
    if os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_HOST"):
        yield None
        return
    folder = tmp_path_factory.mktemp("clickhouse-server")
    server = start_server(folder / "data", STAND_IN_USERS, folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_clickhouse(stand_in: ServerProcess | None) -> ClickHouseResource:
    """What the pipeline reads through in server mode: a live server, or the stand-in."""
    if stand_in is not None:
        reader = ClickHouseResource(
            host=stand_in.host, port=stand_in.port, username=READER, password=READER_PASSWORD
        )
        register_writer(reader, ClickHouseResource(host=stand_in.host, port=stand_in.port))
        return reader
    return ClickHouseResource(
        host=os.environ["AGENT_METRICS_TEST_CLICKHOUSE_HOST"],
        port=int(os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_PORT", "8123")),
        username=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_USER", "default"),
        password=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_PASSWORD", ""),
        secure=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_SECURE", "") == "true",
        ca_cert=os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_CA_CERT") or None,
    )


@pytest.fixture(scope="session", params=["embedded", "server"])
def clickhouse(request: pytest.FixtureRequest) -> ClickHouseResource:
    """The same tests run on the embedded engine and in server mode over HTTP."""
    return request.getfixturevalue(f"{request.param}_clickhouse")


@pytest.fixture
def calls_table(clickhouse: ClickHouseResource) -> Iterator[SourceTable]:
    source = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(clickhouse, source)
    yield source
    with writer(clickhouse).get_client() as client:
        client.command(f"DROP TABLE IF EXISTS {source.qualified_name}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield S3Server(endpoint)


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    name = f"metrics-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return Bucket(name, s3_server)


@pytest.fixture
def project_env(tmp_path) -> dict[str, str]:
    """A clean environment for a subprocess: own home, own Dagster instance folder."""
    (tmp_path / "dagster_home").mkdir()
    env = subprocess_env(tmp_path / "home", tmp_path / "dagster_home")
    env["AGENT_METRICS_START_DATE"] = "2026-01-01"
    return env


@dataclass
class HungServer:
    """A loopback port that accepts connections and never answers."""

    port: int
    connections: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def hung_server() -> Iterator[HungServer]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = HungServer(listener.getsockname()[1])

    def accept() -> None:
        while True:
            try:
                server.connections.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server
    listener.close()
    for connection in server.connections:
        connection.close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A webhook receiver on 127.0.0.1 that keeps what alerts POST to it."""
    hook = Webhook(url="")

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            hook.authorizations.append(self.headers.get("Authorization"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN"
    yield hook
    server.shutdown()
