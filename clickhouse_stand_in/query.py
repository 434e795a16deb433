"""A query request's run, as HTTPHandler::processQuery goes: the parameters the stand-in
refuses, the session, a fresh engine connection with the query's settings, response
compression, the query id in the list of queries in flight, then the statement; the engine's
errors worded as the server words them."""

from __future__ import annotations

import uuid

from clickhouse_stand_in.errors import request_error
from clickhouse_stand_in.execution import execute
from clickhouse_stand_in.formats import choose_response_compression
from clickhouse_stand_in.host import Host
from clickhouse_stand_in.reply import Reply
from clickhouse_stand_in.request import Call
from clickhouse_stand_in.sessions import Session
from clickhouse_stand_in.settings import apply_settings, http_settings


def process_query(host: Host, call: Call, reply: Reply) -> None:
    """HTTPHandler::processQuery: the parameters that are not settings, then the session."""
    engine = host.engine
    if call.first("compress") in ("1", "true") or call.first("decompress") in ("1", "true"):
        raise engine.error(
            "NOT_IMPLEMENTED",
            "ClickHouse's own block compression (compress/decompress parameters) is not "
            "supported by the ClickHouse HTTP stand-in",
        )
    roles = [value for key, value in call.params if key == "role" and value]
    if roles:
        raise engine.error("UNKNOWN_ROLE", f"There is no role `{roles[0]}` in user directories")
    with host.sessions.held(call) as session:
        _run(host, session, call, reply)


def _run(host: Host, session: Session | None, call: Call, reply: Reply) -> None:
    """The query on a fresh engine connection, closed when the answer has been sent."""
    connection = host.engine.connect()
    try:
        apply_settings(host.engine, connection, call, session)
        state = http_settings(connection, call)
        if state["enable_http_compression"] in ("1", "true"):
            reply.compression = choose_response_compression(call.headers.get("Accept-Encoding", ""))
            reply.compression_level = int(state["http_zlib_compression_level"])
        query_id = (
            call.first("query_id") or call.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        )
        with host.running(query_id, call.user.name):
            execute(host, connection, call, reply, session, state, query_id)
    except RuntimeError as error:
        raise request_error(error, call.user.name, call.method) from None
    finally:
        connection.close()
