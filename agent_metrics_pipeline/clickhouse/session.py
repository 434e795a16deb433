"""A session: one open client for the queries of a step or a tick, read-only, returning
Polars frames over Arrow (no pandas round trip)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from agent_metrics_pipeline.clickhouse.errors import ClickHouseUnavailableError
from agent_metrics_pipeline.core.deferred import polars as pl

# clickhouse-connect and pyarrow load with the first query, not with the definitions: the UI's
# code server and every run process load the definitions, and these add half again to it.
if TYPE_CHECKING:
    import pyarrow as pa
    from clickhouse_connect.driver.client import Client

# The client outwaits the server's own time limit by this much, so the server's reason arrives.
QUERY_TIMEOUT_GRACE_SEC = 5


class QueryRunner(Protocol):
    """What reads the source: a ``ClickHouseSession``, or the resource for a one-off query."""

    @property
    def description(self) -> str: ...

    def query_polars(
        self, sql: str, parameters: Mapping[str, object] | None = None
    ) -> pl.DataFrame: ...


class SessionOwner(Protocol):
    """What a session needs of the resource that opened it."""

    query_timeout_sec: int

    @property
    def description(self) -> str: ...

    @property
    def on_server(self) -> bool: ...

    def kill_query(self, query_id: str) -> None: ...

    def translate(self, error: Exception) -> Exception: ...


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


class ClickHouseSession:
    """An open client of a ``ClickHouseResource``: the queries of one step, one after another.

    On the embedded engine it holds the engine's folder, which one process may open at a time,
    until the session ends: steps that share the folder wait for each other in a pool anyway.
    """

    def __init__(self, resource: SessionOwner, client: Client) -> None:
        self._resource = resource
        self._client = client
        self._settings = _query_settings(client, resource.query_timeout_sec)
        if not resource.on_server:
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
        if resource.on_server:
            # Named, so that a query the client stops waiting for can be stopped by name.
            settings["query_id"] = query_id = str(uuid.uuid4())
        try:
            table = self._client.query_arrow(
                sql, parameters=dict(parameters or {}), settings=settings
            )
        except ClickHouseError as error:
            if (
                resource.on_server
                and isinstance(error, OperationalError)
                and isinstance(error.__cause__, ReadTimeoutError)
            ):
                resource.kill_query(query_id)
                # The server answered the greeting: it is reachable, the query is slow.
                raise ClickHouseUnavailableError(
                    f"The {resource.description} did not finish the query within "
                    f"{resource.query_timeout_sec + QUERY_TIMEOUT_GRACE_SEC} s "
                    f"(CLICKHOUSE_QUERY_TIMEOUT_SEC={resource.query_timeout_sec}, plus "
                    f"{QUERY_TIMEOUT_GRACE_SEC} s for the server's own answer). Retried; if it "
                    "lasts, raise CLICKHOUSE_QUERY_TIMEOUT_SEC, or make each query smaller "
                    "(AGENT_METRICS_MAX_CALLS_PER_QUERY, AGENT_METRICS_AGENT_SHARDS)."
                ) from None
            raise resource.translate(error) from None
        frame = pl.from_arrow(_binary_as_text(table))
        assert isinstance(frame, pl.DataFrame)
        return frame
