"""The ClickHouse resource: a server over HTTP(S), or the embedded engine, with time-outs that
stop a query on the server too, and errors that say what to fix."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from agent_metrics_pipeline.clickhouse.errors import (
    ACCESS_DENIED_CODE,
    READONLY_CODE,
    ClickHouseEngineBusyError,
    ClickHouseQueryError,
    error_code,
    translate,
)
from agent_metrics_pipeline.clickhouse.session import QUERY_TIMEOUT_GRACE_SEC, ClickHouseSession
from agent_metrics_pipeline.clickhouse.tls import PROBE_TIMEOUT_SEC, TlsEndpoint, tls_error
from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.measurement import DEFAULT_DATABASE
from agent_metrics_pipeline.core.settings import (
    DEFAULT_CLICKHOUSE_PORT,
    DEFAULT_CONNECT_TIMEOUT_SEC,
    DEFAULT_HOME,
    DEFAULT_QUERY_TIMEOUT_SEC,
    Settings,
    embedded_engine_path,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# How long stopping a query the client gave up on may take: it must not hold the run up.
KILL_QUERY_TIMEOUT_SEC = 5
# An observation holds the embedded engine's folder for seconds (a first one, which fingerprints
# every day, longer): a run waits that out rather than fail and retry half a minute later.
ENGINE_WAIT_SEC = 15
ENGINE_WAIT_STEP_SEC = 0.25

logger = dg.get_dagster_logger(__name__)

# What was said once per process about a server and user: facts of its configuration that hold
# for every query, so they are told once, not per query or per client.
_TOLD: set[tuple[object, ...]] = set()
_TOLD_LOCK = threading.Lock()


def _first_time(*key: object) -> bool:
    with _TOLD_LOCK:
        if key in _TOLD:
            return False
        _TOLD.add(key)
        return True


class ClickHouseResource(dg.ConfigurableResource):
    """Runs read queries and returns Polars frames over Arrow (no pandas round trip).

    With ``host`` set it talks to a ClickHouse server over HTTP(S). Without it, it opens the
    embedded ClickHouse engine on ``embedded_path``: the same SQL, no server to run. The
    embedded engine's folder can be opened by one process at a time, so clients are closed as
    soon as each request is done.
    """

    host: str | None = Field(default=None, description="Server host; unset means embedded.")
    port: int = Field(default=DEFAULT_CLICKHOUSE_PORT, description="HTTP(S) port of the server.")
    username: str = Field(default="default")
    password: str = Field(default="", description="Read from CLICKHOUSE_PASSWORD; never logged.")
    database: str = Field(default=DEFAULT_DATABASE)
    secure: bool = Field(default=False, description="Use HTTPS.")
    ca_cert: str | None = Field(
        default=None,
        description="PEM bundle of the CAs the server's certificate is checked against; unset "
        "means the system's CA store.",
    )
    verify: bool = Field(default=True, description="Check the server's certificate and name.")
    client_cert: str | None = Field(
        default=None, description="Client certificate (PEM) of mutual TLS; authenticates the user."
    )
    client_key: str | None = Field(
        default=None, description="Unencrypted key of client_cert, unless client_cert holds it."
    )
    server_name: str | None = Field(
        default=None, description="The name the server's certificate must carry, if not host."
    )
    connect_timeout_sec: int = Field(
        default=DEFAULT_CONNECT_TIMEOUT_SEC,
        description="Seconds to connect and complete the start-up handshake with a server.",
    )
    query_timeout_sec: int = Field(
        default=DEFAULT_QUERY_TIMEOUT_SEC,
        description="Seconds a query may run; also sent as max_execution_time where allowed.",
    )
    embedded_path: str = Field(
        default=str(embedded_engine_path(DEFAULT_HOME)),
        description="Data folder of the embedded engine.",
    )

    @property
    def description(self) -> str:
        """Where queries go, for logs and errors: never includes the password."""
        if self.host:
            scheme = "https" if self.secure else "http"
            return f"ClickHouse server {scheme}://{self.host}:{self.port} as user {self.username!r}"
        return f"embedded ClickHouse engine at {Path(self.embedded_path).resolve()}"

    def _scrub(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text

    @property
    def on_server(self) -> bool:
        return bool(self.host)

    def translate(self, error: Exception) -> Exception:
        """A clickhouse-connect error as the pipeline's, saying what to fix."""
        if self.host and (fault := tls_error(error, self.description, self.secure, self._tls)):
            return fault
        credentials = (
            "CLICKHOUSE_USER and the client certificate (CLICKHOUSE_CLIENT_CERT), whose common "
            "name the user's <ssl_certificates> on the server must list"
            if self.client_cert
            else "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
        )
        return translate(error, self.description, not self.on_server, self._scrub, credentials)

    @property
    def _tls(self) -> TlsEndpoint:
        return TlsEndpoint(
            str(self.host),
            self.port,
            min(self.connect_timeout_sec, PROBE_TIMEOUT_SEC),
            self.server_name,
            self.ca_cert,
            self.verify,
            self.client_cert,
            self.client_key,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Warn each run (and each sensor tick) that uses a server whose certificate goes
        unchecked: said once, it would be lost among the runs that follow."""
        if self.host and self.secure and not self.verify:
            (context.log or logger).warning(
                f"CLICKHOUSE_VERIFY=false: the certificate and name of the {self.description} "
                "are not checked, so anyone on the network path can pose as the server and "
                "read the queries, the credentials and the results. Set CLICKHOUSE_CA_CERT "
                "to the CA that issued the server's certificate, and unset CLICKHOUSE_VERIFY."
            )

    @property
    def _server_key(self) -> tuple[object, ...]:
        return (self.host, self.port, self.secure, self.username, self.query_timeout_sec)

    def _warn_of_time_limit(self, client: Client) -> None:
        """Warn, once per process for this server, user and timeout, when the server may go on
        with a query the pipeline gave up on: the user may not set ``max_execution_time`` (a
        ``readonly=1`` profile) and the profile's own is unlimited or longer than the wait."""
        setting = client.server_settings.get("max_execution_time")
        if not self.host or setting is None or not setting.readonly:
            return  # embedded, unknown, or sent with every query
        if not _first_time(self._server_key, "time limit"):
            return
        try:
            limit = float(setting.value)
        except ValueError:
            return
        timeout = self.query_timeout_sec
        fix = (
            f"Set max_execution_time = {timeout} (CLICKHOUSE_QUERY_TIMEOUT_SEC, the pipeline's "
            "query timeout) in the user's settings profile"
        )
        if limit == 0:
            logger.warning(
                f"The {self.description} sets no time limit on this user's queries "
                "(max_execution_time = 0), and the user may not set one (readonly = 1): a query "
                "the pipeline gives up on keeps running on the server unless the pipeline's KILL "
                f"QUERY gets through. {fix}, so the server stops it itself."
            )
        elif limit > timeout + QUERY_TIMEOUT_GRACE_SEC:
            logger.warning(
                f"The {self.description} lets this user's queries run {limit:g} s "
                f"(max_execution_time), longer than the pipeline waits ({timeout} s, plus "
                f"{QUERY_TIMEOUT_GRACE_SEC} s): a query the pipeline gives up on keeps running "
                f"unless the pipeline's KILL QUERY gets through. {fix}, or raise "
                "CLICKHOUSE_QUERY_TIMEOUT_SEC."
            )

    def kill_query(self, query_id: str) -> None:
        """Best effort: stop on the server a query the client stopped waiting for, from a
        short-lived client of its own. Never raises: the time-out is the error to report."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            client = self._server_client(
                connect_timeout=min(self.connect_timeout_sec, KILL_QUERY_TIMEOUT_SEC),
                greeting_timeout=KILL_QUERY_TIMEOUT_SEC,
            )
            try:
                client.command(f"KILL QUERY WHERE query_id = '{query_id}' ASYNC")
            finally:
                client.close()
        except Exception as error:  # whatever goes wrong, the time-out stays the error
            detail = (self._scrub(str(error)).strip().splitlines() or [type(error).__name__])[0]
            code = error_code(error) if isinstance(error, ClickHouseError) else None
            if code not in (ACCESS_DENIED_CODE, READONLY_CODE):
                logger.warning(
                    f"Could not stop query {query_id} on the {self.description} after the "
                    f"client's timeout: {detail[:300]}. It may keep running there until it ends."
                )
            elif _first_time(self._server_key, "kill refused"):
                logger.warning(
                    f"The {self.description} does not let this user stop its queries (KILL "
                    f"QUERY): {detail[:300]}. A query the pipeline gives up on may keep running "
                    "there until it ends. Set max_execution_time = "
                    f"{self.query_timeout_sec} (CLICKHOUSE_QUERY_TIMEOUT_SEC) in the user's "
                    "settings profile, so the server stops it itself"
                    + (
                        ", or grant the user SELECT on system.processes, where KILL QUERY "
                        "looks the query up (stopping its own queries needs no KILL QUERY "
                        "privilege)."
                        if code == ACCESS_DENIED_CODE
                        else "."
                    )
                )
            return
        logger.info(f"Stopped query {query_id} on the {self.description} after the timeout.")

    def _server_client(self, connect_timeout: int, greeting_timeout: int) -> Client:
        """A client of the server, greeted; ``greeting_timeout`` bounds each start-up answer."""
        import clickhouse_connect

        return clickhouse_connect.get_client(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            database=self.database,
            secure=self.secure,
            verify=self.verify,
            ca_cert=self.ca_cert,
            client_cert=self.client_cert,
            client_cert_key=self.client_key,
            server_host_name=self.server_name,
            connect_timeout=connect_timeout,
            send_receive_timeout=greeting_timeout,
            query_retries=0,
        )

    def _open(self) -> Client:
        import clickhouse_connect
        from urllib3.util import Timeout

        if self.host:
            # The start-up probes wait for answers with the read timeout: a short one bounds a
            # server that accepts connections and never answers. Queries get their own.
            client = self._server_client(
                connect_timeout=self.connect_timeout_sec,
                greeting_timeout=self.connect_timeout_sec,
            )
            # The server's own time limit (max_execution_time) should answer first, with its
            # reason; the client waits a little longer in case the server cannot.
            client.timeout = Timeout(
                connect=self.connect_timeout_sec,
                read=self.query_timeout_sec + QUERY_TIMEOUT_GRACE_SEC,
            )
            return client
        path = Path(self.embedded_path).resolve()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ClickHouseQueryError(
                f"Cannot create the embedded engine's folder {path}: {error.strerror}. Point "
                "AGENT_METRICS_HOME at a folder this process can write."
            ) from None
        return clickhouse_connect.get_client(interface="chdb", path=str(path))

    @contextlib.contextmanager
    def get_client(self, engine_wait_sec: float = ENGINE_WAIT_SEC) -> Iterator[Client]:
        """A clickhouse-connect client, closed on exit; errors come back translated. The
        embedded engine's folder, held by another process, is waited for ``engine_wait_sec``."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        deadline = time.monotonic() + engine_wait_sec
        while True:
            try:
                client = self._open()
                break
            except (ClickHouseError, OSError, RuntimeError) as error:
                translated = self.translate(error)
                if not isinstance(translated, ClickHouseEngineBusyError):
                    raise translated from None
                if time.monotonic() >= deadline:
                    raise translated from None
                time.sleep(ENGINE_WAIT_STEP_SEC)
        try:
            yield client
        except ClickHouseError as error:
            raise self.translate(error) from None
        finally:
            client.close()

    @contextlib.contextmanager
    def session(self, engine_wait_sec: float = ENGINE_WAIT_SEC) -> Iterator[ClickHouseSession]:
        """One client for the queries of a step or a tick, closed on exit: a server is greeted
        once (its version, time zone and settings), not before every query."""
        with self.get_client(engine_wait_sec) as client:
            if self.on_server:
                self._warn_of_time_limit(client)
            yield ClickHouseSession(self, client)

    def query_polars(
        self, sql: str, parameters: Mapping[str, object] | None = None
    ) -> pl.DataFrame:
        """One query on a client of its own; see ``ClickHouseSession.query_polars``."""
        with self.session() as session:
            return session.query_polars(sql, parameters)


def clickhouse_resource(settings: Settings) -> ClickHouseResource:
    """The resource the settings ask for: the embedded engine unless CLICKHOUSE_HOST is set."""
    if settings.embedded_clickhouse:
        return ClickHouseResource(
            embedded_path=str(settings.embedded_clickhouse_path),
            query_timeout_sec=settings.clickhouse_query_timeout_sec,
        )
    tls = settings.clickhouse_tls
    return ClickHouseResource(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        username=settings.clickhouse_user,
        # An EnvVar keeps the secret out of the UI's resource view and out of run config.
        password=dg.EnvVar("CLICKHOUSE_PASSWORD") if settings.clickhouse_password_set else "",
        database=settings.measurement.source.database,
        secure=settings.clickhouse_secure,
        ca_cert=str(tls.ca_cert) if tls.ca_cert else None,
        verify=tls.verify,
        client_cert=str(tls.client_cert) if tls.client_cert else None,
        client_key=str(tls.client_key) if tls.client_key else None,
        server_name=tls.server_name,
        connect_timeout_sec=settings.clickhouse_connect_timeout_sec,
        query_timeout_sec=settings.clickhouse_query_timeout_sec,
    )
