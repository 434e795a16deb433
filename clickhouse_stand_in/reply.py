"""A response as the server writes it: headers once, then a chunked body, compressed if
negotiated; an error with its status, or inside the body between exception markers once the
headers went out; and the X-ClickHouse-Summary header's counters."""

from __future__ import annotations

import json
import secrets
import string
from http.server import BaseHTTPRequestHandler

from clickhouse_stand_in.errors import ServerError
from clickhouse_stand_in.formats import Encoder

DEFAULT_BUFFER_SIZE = 1 << 20  # DBMS_DEFAULT_BUFFER_SIZE: held back before headers go out
MAX_EXCEPTION_SIZE = 16 * 1024  # a whole in-band exception block
EXCEPTION_TAG_LENGTH = 16


class Reply:
    """One response: headers once, then a chunked body, compressed if negotiated. An error
    after the headers went out is written into the body between exception markers."""

    def __init__(self, handler: BaseHTTPRequestHandler, display_name: str, version: str) -> None:
        self.handler = handler
        self.display_name = display_name
        self.version = version  # the engine's, which error messages end with
        self.tag = "".join(
            secrets.choice(string.ascii_lowercase + string.digits)
            for _ in range(EXCEPTION_TAG_LENGTH)
        )
        self.compression: str | None = None
        self.compression_level = 3
        self.started = False
        self.status = 0
        self.code = 0
        self._encoder: Encoder | None = None

    def plain(
        self, status: int, text: str, content_type_: str = "text/html; charset=UTF-8"
    ) -> None:
        """A fixed answer (ping, unknown handler), with a length rather than chunks."""
        body = text.encode()
        self._head(
            status,
            [("Content-Type", content_type_), ("Content-Length", str(len(body)))],
            query_handler=False,
        )
        self.handler.wfile.write(body)

    def start(self, headers: list[tuple[str, str]]) -> None:
        if self.compression:
            self._encoder = Encoder(self.compression, self.compression_level)
            headers = [*headers, ("Content-Encoding", self.compression)]
        self._head(200, [*headers, ("Transfer-Encoding", "chunked")])
        self.started = True

    def write(self, data: bytes | memoryview) -> None:
        for offset in range(0, len(data), DEFAULT_BUFFER_SIZE):
            piece = data[offset : offset + DEFAULT_BUFFER_SIZE]
            self._chunk(self._encoder.compress(piece) if self._encoder else piece)

    def finish(self) -> None:
        if self._encoder:
            self._chunk(self._encoder.flush())
        self.handler.wfile.write(b"0\r\n\r\n")

    def error(self, error: ServerError) -> None:
        self.code = error.code
        message = f"{error.text} (version {self.version})\n"
        if self.started:
            self._error_in_body(message)
            return
        headers = [
            ("Content-Type", "text/plain; charset=UTF-8"),
            ("X-ClickHouse-Exception-Code", str(error.code)),
        ]
        if error.name == "REQUIRED_PASSWORD":
            headers.append(("WWW-Authenticate", 'Basic realm="ClickHouse server HTTP API"'))
        if self.compression:
            self._encoder = Encoder(self.compression, self.compression_level)
            headers.append(("Content-Encoding", self.compression))
        self._head(error.http_status, [*headers, ("Transfer-Encoding", "chunked")])
        self.started = True
        self.write(message.encode())
        self.finish()

    def _error_in_body(self, message: str) -> None:
        """WriteBufferFromHTTP1ServerResponse::cancelWithException: the block, then the
        connection is dropped without the final chunk, so the client cannot take the body
        for a complete one."""
        overhead = 2 * (2 + len("__exception__") + 2 + EXCEPTION_TAG_LENGTH + 2) + 8 + 1
        data = message.encode()[: MAX_EXCEPTION_SIZE - overhead]
        if not data.endswith(b"\n"):
            data += b"\n"
        tag = self.tag.encode()
        block = (
            b"\r\n__exception__\r\n"
            + tag
            + b"\r\n"
            + data
            + str(len(data)).encode()
            + b" "
            + tag
            + b"\r\n__exception__\r\n"
        )
        self.write(block)
        if self._encoder:
            self._chunk(self._encoder.flush())
        self.handler.close_connection = True

    def _chunk(self, data: bytes | memoryview) -> None:
        if not data:
            return
        wfile = self.handler.wfile
        if len(data) < 65536:  # one send for small chunks; big ones are not copied
            wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            wfile.write(b"%x\r\n" % len(data))
            wfile.write(data)
            wfile.write(b"\r\n")

    def _head(
        self, status: int, headers: list[tuple[str, str]], query_handler: bool = True
    ) -> None:
        handler = self.handler
        self.status = status
        handler.send_response_only(status)
        handler.send_header("Date", handler.date_time_string())
        if query_handler:
            headers = [
                ("X-ClickHouse-Server-Display-Name", self.display_name),
                ("X-ClickHouse-Exception-Tag", self.tag),
                *headers,
            ]
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()


def summary(
    read: tuple[int, int], written: tuple[int, int], result: tuple[int, int], elapsed: float
) -> str:
    """X-ClickHouse-Summary: the server's progress counters, all as strings."""
    values = {
        "read_rows": read[0],
        "read_bytes": read[1],
        "written_rows": written[0],
        "written_bytes": written[1],
        "total_rows_to_read": read[0],
        "result_rows": result[0],
        "result_bytes": result[1],
        "elapsed_ns": int(elapsed * 1e9),
    }
    return json.dumps({key: str(value) for key, value in values.items()}, separators=(",", ":"))
