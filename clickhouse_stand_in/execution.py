"""A request's one statement on its prepared connection: its kind by the engine's parser, the
clauses a server refuses over HTTP, the output format and the response headers, then the
answer, streamed or whole (INSERT data through the engine's streaming insert, KILL QUERY
mapped to the requests' query ids), and SET and USE kept for the session."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from clickhouse_stand_in.errors import ServerError, engine_error
from clickhouse_stand_in.formats import STREAMABLE_FORMATS, content_type
from clickhouse_stand_in.host import Host
from clickhouse_stand_in.kill_query import kill_query
from clickhouse_stand_in.reply import DEFAULT_BUFFER_SIZE, Reply, summary
from clickhouse_stand_in.request import Call
from clickhouse_stand_in.sessions import Session
from clickhouse_stand_in.statements import InlineData, escape_parameter, statement_shape
from clickhouse_stand_in.streaming import stream


def execute(
    host: Host,
    connection: Any,
    call: Call,
    reply: Reply,
    session: Session | None,
    state: Mapping[str, str],
    query_id: str,
) -> None:
    """The statement and its answer; ``state`` holds the settings the HTTP layer reads."""
    engine = host.engine
    shape = statement_shape(call.sql)
    # The engine's parser reads an INSERT's data as a client does (up to a line break),
    # so it is shown the statement alone.
    statement = call.sql[: shape.inline.data_start] if shape.inline else call.sql
    kind = _classify(connection, statement.decode(errors="replace"))
    if shape.into_outfile:
        raise engine.error("INTO_OUTFILE_NOT_ALLOWED", "INTO OUTFILE is not allowed")
    if shape.from_infile:
        raise engine.error(
            "UNKNOWN_TYPE_OF_QUERY", "Query has infile and was send directly to server"
        )
    default_format = (
        call.headers.get("X-ClickHouse-Format") or call.first("default_format") or "TabSeparated"
    )
    output_format = shape.output_format or default_format
    parameters: dict[str, str] = {}
    for key, value in call.params:
        if key.startswith("param_"):
            parameters.setdefault(key[len("param_") :], value)
    host.record_statement(call.user.name, statement.decode(errors="replace"), parameters, query_id)
    headers = [("X-ClickHouse-Query-Id", query_id)]
    if kind == "READ_ONLY":
        headers += [
            ("Content-Type", content_type(output_format)),
            ("X-ClickHouse-Format", output_format),
        ]
    else:
        headers.append(("Content-Type", "text/plain; charset=UTF-8"))
    headers.append(("X-ClickHouse-Timezone", state["timezone"]))
    waits = state["http_wait_end_of_query"] in ("1", "true")
    # The engine streams SELECTs only; SHOW, DESCRIBE, EXISTS... answer whole.
    if (
        shape.first_word in ("SELECT", "WITH")
        and not waits
        and output_format.lower() in STREAMABLE_FORMATS
    ):
        buffer_size = max(int(state["http_response_buffer_size"] or 0), DEFAULT_BUFFER_SIZE)
        stream(
            connection,
            call,
            reply,
            default_format,
            output_format,
            parameters,
            headers,
            buffer_size,
        )
    else:
        if shape.inline and not (parameters and b"{" in statement):
            result = _insert(connection, call.sql, shape.inline)
        elif shape.kill_query:
            result = kill_query(
                host, connection, call, shape.kill_query, query_id, output_format, parameters
            )
        else:
            result = connection.query(call.sql, default_format, params=parameters)
        body = result.get_memview().view()
        if kind != "READ_ONLY" and len(body):  # KILL QUERY and the like answer with rows
            headers += [("X-ClickHouse-Format", output_format)]
        reply.start(
            [
                *headers,
                (
                    "X-ClickHouse-Summary",
                    summary(
                        read=(result.storage_rows_read(), result.storage_bytes_read()),
                        written=(result.rows_written(), result.bytes_written()),
                        result=(result.rows_read(), result.bytes_read()),
                        elapsed=result.elapsed(),
                    ),
                ),
            ]
        )
        reply.write(body)
        reply.finish()
    if session is not None and kind == "CONTROL" and shape.first_word in ("SET", "USE"):
        session.statements.append((call.sql, parameters))


def _insert(connection: Any, sql: bytes, inline: InlineData) -> Any:
    """An INSERT with its own data, through the engine's streaming insert: the engine's
    query path reads inline data as a client does and can cut binary data short."""
    statement = sql[: inline.statement_end].decode(errors="replace").rstrip()
    handle = connection.send_insert(statement, inline.input_format)
    try:
        if len(sql) > inline.data_start:
            connection.insert_append(handle, sql[inline.data_start :])
        return connection.insert_done(handle)
    except RuntimeError:
        with contextlib.suppress(RuntimeError):
            connection.insert_cancel(handle)
        raise


def _classify(connection: Any, text: str) -> str:
    """The kind of statement, by the engine's own parser (READ_ONLY, MUTATING, CONTROL...).
    A server parses with multi-statements off; its error for several statements (and for
    an empty query) is the parser's, so that error is taken from the engine's parser too."""
    info = connection.classify_query(text)
    kind, count = info["query_class"].name, info["statement_count"]
    if count != 1:
        probe = "SELECT formatQuery({q:String})"
        try:
            connection.query(probe, "TabSeparated", params={"q": escape_parameter(text)})
        except RuntimeError as error:
            parsed = engine_error(error)
            if parsed.name == "SYNTAX_ERROR" and (
                count > 1 or parsed.message.startswith("Empty query")
            ):
                message = parsed.message.split(": In scope SELECT formatQuery(", 1)[0]
                raise ServerError(parsed.code, parsed.name, message) from None
    return kind
