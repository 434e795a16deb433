"""ClickHouse access, on a server over HTTP or the embedded engine; errors say what to fix."""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import dagster as dg
from pydantic import Field
from urllib3.util import Timeout

from agent_metrics_pipeline.config import (
    DEFAULT_CLICKHOUSE_PORT,
    DEFAULT_CONNECT_TIMEOUT_SEC,
    DEFAULT_DATABASE,
    DEFAULT_HOME,
    DEFAULT_QUERY_TIMEOUT_SEC,
    embedded_engine_path,
)
from agent_metrics_pipeline.deferred import polars as pl
from agent_metrics_pipeline.errors import PermanentError, TransientError

# clickhouse-connect and pyarrow load with the first query, not with the definitions: the UI's
# code server and every run process load the definitions, and these add half again to it.
if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client
    from clickhouse_connect.driver.exceptions import ClickHouseError

# The client outwaits the server's own time limit by this much, so the server's reason arrives.
QUERY_TIMEOUT_GRACE_SEC = 5
# How long stopping a query the client gave up on may take: it must not hold the run up.
KILL_QUERY_TIMEOUT_SEC = 5

logger = dg.get_dagster_logger(__name__)

# ClickHouse server error codes whose fix is a change of configuration or schema.
CREDENTIAL_ERROR_CODES = {192, 193, 194, 497, 516}  # unknown user, wrong/required password, ...
MISSING_OBJECT_ERROR_CODES = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE
UNKNOWN_IDENTIFIER_CODE = 47
READONLY_CODE = 164
ACCESS_DENIED_CODE = 497
# clickhouse-connect's own refusals, before sending, to change a setting the server reports
# as read-only for this user.
CLIENT_READONLY_REFUSAL = re.compile(r"Cannot change readonly|Setting \S+ is readonly")
# Codes that a later attempt may not hit: timeouts, overload, memory pressure, network trouble.
TRANSIENT_ERROR_CODES = {3, 32, 159, 202, 209, 210, 394, 999}
MEMORY_LIMIT_EXCEEDED_CODE = 241
# A limit on one query (max_memory_usage) or on the user's queries (max_memory_usage_for_user)
# stops the same query again; the server's total limit is memory pressure that passes.
PER_QUERY_MEMORY_LIMIT = re.compile(
    r"(query|user) memory limit exceeded|memory limit \(for (query|user)\) exceeded", re.I
)


class ClickHouseUnavailableError(TransientError):
    """The server could not be reached or timed out; retrying later may succeed."""


class ClickHouseQueryError(PermanentError):
    """ClickHouse refused the request (credentials, missing table, bad SQL); retrying won't help."""


class ClickHouseMemoryLimitError(ClickHouseQueryError):
    """The query exceeded this user's per-query memory limit: the same query fails again, a
    smaller one (fewer agents or days) may not."""


def _error_code(error: ClickHouseError) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    text = str(error)
    if "Code: " in text:
        digits = text.split("Code: ", 1)[1].split(".", 1)[0].strip()
        if digits.isdigit():
            return int(digits)
    return None


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


def _writable(client: Client, name: str) -> bool:
    setting = client.server_settings.get(name)
    return setting is not None and not setting.readonly


def _query_settings(client: Client, timeout_sec: int) -> dict[str, str]:
    """``readonly=2`` for a user who could write, so the pipeline's queries can never write,
    and the query timeout as ``max_execution_time``, so the server stops when the client does.

    Only settings the user may change are sent: a ``readonly=1`` user may change none (and is
    read-only already); a server-side limit for such a user belongs in their profile.
    """
    settings = {}
    if _writable(client, "readonly") and client.server_settings["readonly"].value == "0":
        settings["readonly"] = "2"
    if _writable(client, "max_execution_time"):
        settings["max_execution_time"] = str(timeout_sec)
    return settings


def _text_type(arrow_type: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if pa.types.is_binary(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type):
        return pa.large_string()
    if pa.types.is_list(arrow_type):
        return pa.list_(arrow_type.value_field.with_type(_text_type(arrow_type.value_type)))
    return arrow_type


def _binary_as_text(table: pa.Table) -> pa.Table:
    """ClickHouse ``String`` columns as Arrow strings, decoded here rather than by the server.

    The server sends them as Arrow binary unless ``output_format_arrow_string_as_string`` is set,
    and a ``readonly=1`` user whose profile leaves it off may not set it.
    """
    import pyarrow as pa

    schema = pa.schema([field.with_type(_text_type(field.type)) for field in table.schema])
    return table if schema.equals(table.schema) else table.cast(schema)


class QueryRunner(Protocol):
    """What reads the source: a ``ClickHouseSession``, or the resource for a one-off query."""

    @property
    def description(self) -> str: ...

    def query_polars(
        self, sql: str, parameters: Mapping[str, object] | None = None
    ) -> pl.DataFrame: ...


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
    def _server_key(self) -> tuple[object, ...]:
        return (self.host, self.port, self.secure, self.username, self.query_timeout_sec)

    def _check_time_limit(self, client: Client) -> None:
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

    def _kill_query(self, query_id: str) -> None:
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
            code = _error_code(error) if isinstance(error, ClickHouseError) else None
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
                    "settings profile, so the server stops it itself, or GRANT KILL QUERY to "
                    "the user."
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
            connect_timeout=connect_timeout,
            send_receive_timeout=greeting_timeout,
            query_retries=0,
        )

    def _open(self) -> Client:
        import clickhouse_connect

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

    def _translate(self, error: Exception) -> Exception:
        from clickhouse_connect.driver.exceptions import (
            ClickHouseError,
            DatabaseError,
            OperationalError,
        )

        lines = self._scrub(str(error)).strip().splitlines()
        detail = (lines[0] if lines else type(error).__name__)[:500]
        code = _error_code(error) if isinstance(error, ClickHouseError) else None
        if code == READONLY_CODE and "Cannot execute query" in str(error):
            return ClickHouseQueryError(
                f"The {self.description} refused a write: {detail}. The pipeline's queries run "
                "read-only; only reads can go through them."
            )
        if code == READONLY_CODE or CLIENT_READONLY_REFUSAL.search(str(error)):
            return ClickHouseQueryError(
                f"The {self.description} does not let this user change a setting the query "
                f"sends: {detail}. The user's settings profile fixes it: allow the setting there "
                "(a profile with readonly=2 still forbids writes), or use another CLICKHOUSE_USER."
            )
        if isinstance(error, OperationalError):
            return ClickHouseUnavailableError(
                f"Could not reach the {self.description}: {detail}. Check CLICKHOUSE_HOST, "
                "CLICKHOUSE_PORT and CLICKHOUSE_SECURE, and that the server is up."
            )
        if not self.host and "EmbeddedServer already initialized" in str(error):
            return ClickHouseQueryError(
                f"This process already serves another embedded engine folder: {detail}. One "
                "process can open one folder; close the other clients first."
            )
        if not self.host and "EmbeddedServer" in str(error):
            return ClickHouseUnavailableError(
                f"The {self.description} is in use by another process: {detail}. The embedded "
                "engine's folder opens in one process at a time; wait for the other run (or "
                "the demo) to finish."
            )
        if code == MEMORY_LIMIT_EXCEEDED_CODE and PER_QUERY_MEMORY_LIMIT.search(str(error)):
            return ClickHouseMemoryLimitError(
                f"The {self.description} stopped a query at this user's memory limit: {detail}. "
                "Raise max_memory_usage in the user's settings profile, or make each query "
                "smaller: AGENT_METRICS_AGENT_SHARDS splits every query by agent, and a lower "
                "AGENT_METRICS_MAX_CALLS_PER_QUERY splits the large days."
            )
        if code == MEMORY_LIMIT_EXCEEDED_CODE:
            return ClickHouseUnavailableError(
                f"The {self.description} is short of memory overall (its total limit, shared by "
                f"every query): {detail}. Retried; if it lasts, the server needs more memory or "
                "fewer concurrent queries."
            )
        if code in TRANSIENT_ERROR_CODES:
            return ClickHouseUnavailableError(
                f"The {self.description} could not finish the query now: {detail}"
            )
        if code in CREDENTIAL_ERROR_CODES:
            return ClickHouseQueryError(
                f"The {self.description} rejected the credentials: {detail}. Check "
                "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD."
            )
        if code in MISSING_OBJECT_ERROR_CODES:
            return ClickHouseQueryError(
                f"The {self.description} has no such table or database: {detail}. Check "
                "CLICKHOUSE_DATABASE and AGENT_METRICS_SOURCE_TABLE."
            )
        if code == UNKNOWN_IDENTIFIER_CODE:
            return ClickHouseQueryError(
                f"The source table lacks a column the query needs: {detail}. Map the columns "
                "with AGENT_METRICS_SOURCE_COLUMNS."
            )
        if isinstance(error, DatabaseError) and code is not None:
            return ClickHouseQueryError(f"The {self.description} refused the query: {detail}")
        return ClickHouseUnavailableError(f"The {self.description} failed: {detail}")

    @contextlib.contextmanager
    def get_client(self) -> Iterator[Client]:
        """A clickhouse-connect client, closed on exit; errors come back translated."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            client = self._open()
        except (ClickHouseError, OSError, RuntimeError) as error:
            raise self._translate(error) from None
        try:
            yield client
        except ClickHouseError as error:
            raise self._translate(error) from None
        finally:
            client.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[ClickHouseSession]:
        """One client for the queries of a step or a tick, closed on exit: a server is greeted
        once (its version, time zone and settings), not before every query."""
        with self.get_client() as client:
            yield ClickHouseSession(self, client)

    def query_polars(
        self, sql: str, parameters: Mapping[str, object] | None = None
    ) -> pl.DataFrame:
        """One query on a client of its own; see ``ClickHouseSession.query_polars``."""
        with self.session() as session:
            return session.query_polars(sql, parameters)


class ClickHouseSession:
    """An open client of a ``ClickHouseResource``: the queries of one step, one after another.

    On the embedded engine it holds the engine's folder, which one process may open at a time,
    until the session ends: steps that share the folder wait for each other in a pool anyway.
    """

    def __init__(self, resource: ClickHouseResource, client: Client) -> None:
        self._resource = resource
        self._client = client
        self._settings = _query_settings(client, resource.query_timeout_sec)
        if resource.host:
            resource._check_time_limit(client)
        else:
            # The embedded engine starts with each step and forgets its compiled code when the
            # step ends. Compiling the metrics query's expressions takes about 0.1 s, and saves
            # about 0.02 s per 10 M calls read: a server keeps the code, a step would not.
            self._settings |= {"compile_expressions": "0", "compile_aggregate_expressions": "0"}

    @property
    def description(self) -> str:
        return self._resource.description

    def query_polars(
        self, sql: str, parameters: Mapping[str, object] | None = None
    ) -> pl.DataFrame:
        """Run ``sql`` with bound ``parameters`` and return the result as a Polars frame.

        It needs no setting that a ``readonly=1`` user cannot change, and it runs read-only
        even for a user who could write. Errors come back translated.
        """
        from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError
        from urllib3.exceptions import ReadTimeoutError

        resource = self._resource
        settings = dict(self._settings)
        if resource.host:
            # Named, so that a query the client stops waiting for can be stopped by name.
            settings["query_id"] = query_id = str(uuid.uuid4())
        try:
            table = self._client.query_arrow(
                sql, parameters=dict(parameters or {}), settings=settings
            )
        except ClickHouseError as error:
            if (
                resource.host
                and isinstance(error, OperationalError)
                and isinstance(error.__cause__, ReadTimeoutError)
            ):
                resource._kill_query(query_id)
                # The server answered the greeting: it is reachable, the query is slow.
                raise ClickHouseUnavailableError(
                    f"The {resource.description} did not finish the query within "
                    f"{resource.query_timeout_sec + QUERY_TIMEOUT_GRACE_SEC} s "
                    f"(CLICKHOUSE_QUERY_TIMEOUT_SEC={resource.query_timeout_sec}, plus "
                    f"{QUERY_TIMEOUT_GRACE_SEC} s for the server's own answer). Retried; if it "
                    "lasts, raise CLICKHOUSE_QUERY_TIMEOUT_SEC, or make each query smaller "
                    "(AGENT_METRICS_MAX_CALLS_PER_QUERY, AGENT_METRICS_AGENT_SHARDS)."
                ) from None
            raise resource._translate(error) from None
        frame = pl.from_arrow(_binary_as_text(table))
        assert isinstance(frame, pl.DataFrame)
        return frame
