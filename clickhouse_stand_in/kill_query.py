"""KILL QUERY over the query ids and users that clients know: the engine's processes mapped
to the requests that run them, the server's rule on whose queries a user may stop, and the
server's answer rows."""

from __future__ import annotations

import json
from typing import Any

from clickhouse_stand_in.host import Host
from clickhouse_stand_in.request import Call
from clickhouse_stand_in.statements import KillQuery, quote_string


def kill_query(
    host: Host,
    connection: Any,
    call: Call,
    kill: KillQuery,
    query_id: str,
    output_format: str,
    parameters: dict[str, str],
) -> Any:
    """KILL QUERY as InterpreterKillQueryQuery runs it, over the query ids and users that
    clients know. The engine gives each query an id of its own and runs them all as
    ``default``; the stand-in knows its requests' engine queries by the thread that runs
    them. So the condition sees system.processes with the ids and users a server shows,
    the request's own query is left out, a user without the KILL QUERY privilege (here:
    in readonly mode) may stop only their own queries, and the engine cancels the rest
    (waiting for them to end with SYNC)."""
    owners = {
        running.thread: (running_id, running.user)
        for running_id, running in host.running_queries().items()
    }
    engine_ids, ids, users = [], [], []
    for engine_id, threads in _json_rows(
        connection, "SELECT query_id, thread_ids FROM system.processes"
    ):
        owner = next((owners[int(t)] for t in threads if int(t) in owners), None)
        if owner:
            engine_ids.append(engine_id)
            ids.append(owner[0])
            users.append(owner[1])
    mapped = (
        "transform(engine_query_id, {kill_engine_ids:Array(String)}, {kill_%s:Array(String)}, %s)"
    )
    matched = _json_rows(
        connection,
        "SELECT engine_query_id, query_id, user, query FROM (SELECT * REPLACE ("
        f"{mapped % ('ids', 'engine_query_id')} AS query_id, {mapped % ('users', 'user')} "
        "AS user) FROM (SELECT *, query_id AS engine_query_id FROM system.processes "
        f"WHERE engine_query_id IN {{kill_engine_ids:Array(String)}})) WHERE {kill.condition}",
        {
            **parameters,
            "kill_engine_ids": _array_parameter(engine_ids),
            "kill_ids": _array_parameter(ids),
            "kill_users": _array_parameter(users),
        },
    )
    readonly = connection.query("SELECT getSetting('readonly')", "TabSeparated")
    may_kill_others = readonly.bytes().strip() == b"0"
    targets, denied = {}, ""
    for engine_id, running_id, user, text in matched:
        if (running_id, user) == (query_id, call.user.name):
            continue
        if user != call.user.name and not may_kill_others:
            denied = user
            continue
        targets[engine_id] = (running_id, user, text)
    if not targets and denied:
        raise host.engine.error(
            "ACCESS_DENIED", f"User {call.user.name} attempts to kill query created by {denied}"
        )
    rows = []
    if targets:
        statement = "KILL QUERY WHERE query_id IN ({}) {}".format(
            ", ".join(map(quote_string, targets)), kill.mode
        )
        for status, engine_id, *_ in _json_rows(connection, statement):
            rows.append([status, *targets[engine_id]])
    # Not the format() table function: a readonly=1 user may not use table functions.
    return connection.query(
        "SELECT row.1 AS kill_status, row.2 AS query_id, row.3 AS user, row.4 AS query "
        "FROM system.one ARRAY JOIN {kill_rows:Array(Tuple(String, String, String, String))} "
        "AS row",
        output_format,
        params={"kill_rows": _array_parameter(rows)},
    )


def _json_rows(connection: Any, sql: str, parameters: dict[str, str] | None = None) -> list:
    result = connection.query(sql, "JSONCompact", params=parameters or {})
    return json.loads(result.bytes())["data"] if result.bytes() else []


def _array_parameter(values: list[str] | list[list[str]]) -> str:
    """An Array(String) (or Array of tuples of strings) query parameter: the engine reads
    these in their quoted text form, without the escaping of String parameters."""

    def literal(value: str | list[str]) -> str:
        return (
            quote_string(value) if isinstance(value, str) else f"({', '.join(map(literal, value))})"
        )

    return "[" + ", ".join(map(literal, values)) + "]"
