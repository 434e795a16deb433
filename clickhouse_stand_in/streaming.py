"""Results that stream: a SELECT's output sent block by block as the engine produces it, the
X-ClickHouse-Summary counted as far as the headers go out, and an error after that in the
body."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from clickhouse_stand_in.errors import request_error
from clickhouse_stand_in.formats import join_arrow_stream
from clickhouse_stand_in.reply import Reply, summary
from clickhouse_stand_in.request import Call


def stream(
    connection: Any,
    call: Call,
    reply: Reply,
    default_format: str,
    output_format: str,
    parameters: dict[str, str],
    headers: list[tuple[str, str]],
    buffer_size: int,
) -> None:
    """A result block by block: the first buffer_size bytes are held back, so an early error
    still gets its status; later errors go in the body."""
    handle = connection.send_query(call.sql, default_format, params=parameters)
    totals = {"rows": 0, "bytes": 0, "read_rows": 0, "read_bytes": 0}
    done = False

    def blocks() -> Iterator[bytes]:
        nonlocal done
        while True:
            result = connection.streaming_fetch_result(handle)
            if result is None:
                done = True
                return
            totals["rows"] += result.rows_read()
            totals["bytes"] += result.bytes_read()
            totals["read_rows"] += result.storage_rows_read()
            totals["read_bytes"] += result.storage_bytes_read()
            data = result.bytes()
            if data:
                yield data
            if result.rows_read() == 0:
                done = True
                return

    chunks = blocks()
    if output_format.lower() == "arrowstream":
        chunks = join_arrow_stream(chunks)
    started = time.monotonic()
    held: list[bytes] = []
    try:
        for chunk in chunks:
            if reply.started:
                reply.write(chunk)
                continue
            held.append(chunk)
            if sum(map(len, held)) >= buffer_size:
                _start(reply, headers, totals, started, held)
        if not reply.started:
            _start(reply, headers, totals, started, held)
        reply.finish()
    except RuntimeError as error:
        if not reply.started:
            raise
        reply.error(request_error(error, call.user.name, call.method))
    finally:
        if not done:
            with contextlib.suppress(RuntimeError):
                connection.streaming_cancel_query(handle)


def _start(
    reply: Reply,
    headers: list[tuple[str, str]],
    totals: dict[str, int],
    started: float,
    held: list[bytes],
) -> None:
    reply.start(
        [
            *headers,
            (
                "X-ClickHouse-Summary",
                summary(
                    read=(totals["read_rows"], totals["read_bytes"]),
                    written=(0, 0),
                    result=(totals["rows"], totals["bytes"]),
                    elapsed=time.monotonic() - started,
                ),
            ),
        ]
    )
    for chunk in held:
        reply.write(chunk)
    held.clear()
