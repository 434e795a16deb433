"""A query's settings on its fresh engine connection, applied in the order a server builds a
query's context (the user's profile, the session's statements, the database, GET's readonly,
the URL's settings), and the settings the HTTP layer itself reads back."""

from __future__ import annotations

from typing import Any

from clickhouse_stand_in.engine import Engine
from clickhouse_stand_in.request import Call
from clickhouse_stand_in.sessions import Session
from clickhouse_stand_in.statements import quote_identifier, quote_string

# URL parameters that are not settings (HTTPHandler::processQuery, reserved_param_names).
RESERVED_PARAMS = frozenset(
    """compress decompress user password quota_key query_id stacktrace role buffer_size
    wait_end_of_query session_id session_timeout session_check client_protocol_version
    close_session database default_format query""".split()
)
# With multipart/form-data these name external tables' metadata, not settings.
EXTERNAL_DATA_SUFFIXES = ("_format", "_types", "_structure")


def apply_settings(engine: Engine, connection: Any, call: Call, session: Session | None) -> None:
    """Profile, session, database, GET's readonly, then the URL settings: the order in
    which a server builds a query's context, so the engine checks each step as it would."""
    profile = engine.profile_statement(call.user)
    if profile:
        connection.query(profile, "TabSeparated")
    for statement, parameters in session.statements if session else []:
        connection.query(statement, "TabSeparated", params=parameters)
    database = call.headers.get("X-ClickHouse-Database") or call.first("database")
    if database:
        connection.query(f"USE {quote_identifier(database)}", "TabSeparated")
    if call.method != "POST":  # setReadOnlyIfHTTPMethodIdempotent
        readonly = connection.query("SELECT getSetting('readonly')", "TabSeparated")
        if readonly.bytes().strip() == b"0":
            connection.query("SET readonly = 2", "TabSeparated")
    changes = [
        (key, value)
        for key, value in call.params
        if key
        and key not in RESERVED_PARAMS
        and not key.startswith("param_")
        and not (call.multipart and key.endswith(EXTERNAL_DATA_SUFFIXES))
    ]
    if changes:
        connection.query(
            "SET " + ", ".join(f"{quote_identifier(k)} = {quote_string(v)}" for k, v in changes),
            "TabSeparated",
        )


def http_settings(connection: Any, call: Call) -> dict[str, str]:
    """The time zone and the settings the HTTP layer itself reads, as they stand for this
    query."""
    names = (
        "enable_http_compression",
        "http_zlib_compression_level",
        "http_wait_end_of_query",
        "http_response_buffer_size",
    )
    row = (
        connection.query(
            "SELECT timezone(), " + ", ".join(f"getSetting('{n}')" for n in names),
            "TabSeparated",
        )
        .bytes()
        .decode()
        .rstrip("\n")
        .split("\t")
    )
    state = dict(zip(("timezone", *names), row, strict=True))
    # Parameters of the same names win over the settings (params.getParsed in processQuery).
    for param, setting in (
        ("wait_end_of_query", "http_wait_end_of_query"),
        ("buffer_size", "http_response_buffer_size"),
    ):
        if call.has(param):
            state[setting] = call.first(param)
    return state
