"""A query request as it arrives: its body (chunked or with a length), the fields of a
multipart/form-data body, a compressed body decoded, and the query text put together from the
URL and the body."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler
from io import BufferedIOBase

from clickhouse_stand_in.engine import Engine, User
from clickhouse_stand_in.formats import decompress_body


@dataclass
class Call:
    """A query request as the HTTP handler has parsed it."""

    method: str
    user: User
    params: list[tuple[str, str]]
    sql: bytes
    multipart: bool
    headers: Message

    def first(self, name: str, default: str = "") -> str:
        return next((value for key, value in self.params if key == name), default)

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)


def read_body(handler: BaseHTTPRequestHandler, engine: Engine) -> bytes:
    """The whole request body, chunked or with a Content-Length."""
    headers, rfile = handler.headers, handler.rfile
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        parts = []
        while size := int(rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(_read_exactly(rfile, size))
            rfile.readline()
        while rfile.readline().strip():  # trailers
            pass
        return b"".join(parts)
    length = headers.get("Content-Length")
    if length is None:
        if handler.command == "POST":
            handler.close_connection = True
            raise engine.error(
                "HTTP_LENGTH_REQUIRED",
                "The Transfer-Encoding is not chunked and there is no Content-Length header "
                "for POST request",
            )
        return b""
    return _read_exactly(rfile, int(length))


def _read_exactly(rfile: BufferedIOBase, size: int) -> bytes:
    """A socket's buffered reader may return less than asked for; read until it is all."""
    parts = []
    while size > 0:
        part = rfile.read(size)
        if not part:
            raise ConnectionResetError("request body ended early")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def parse_call(
    handler: BaseHTTPRequestHandler,
    engine: Engine,
    user: User,
    params: list[tuple[str, str]],
    body: bytes,
) -> Call:
    """The query request of an authenticated user, from the URL's parameters and the body."""
    headers = handler.headers
    content_type_ = headers.get("Content-Type", "")
    multipart = content_type_.lower().startswith("multipart/form-data")
    if multipart:
        params = params + _form_fields(content_type_, body, engine)
        # DynamicQueryHandler::getQuery: all query fields, and the body is not appended.
        sql = "".join(value for key, value in params if key == "query").encode()
        return Call(handler.command, user, params, sql, multipart, headers)
    body = decompress_body(headers.get("Content-Encoding", ""), body, engine)
    query = next((value for key, value in params if key == "query"), "")
    sql = (query + "\n").encode() + body if query else body
    return Call(handler.command, user, params, sql, multipart, headers)


def _form_fields(content_type_: str, body: bytes, engine: Engine) -> list[tuple[str, str]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type_.encode() + b"\r\n\r\n" + body
    )
    fields = []
    for part in message.iter_parts():
        if part.get_filename() is not None:
            raise engine.error(
                "NOT_IMPLEMENTED",
                "External data (files in multipart/form-data) is not supported by the "
                "ClickHouse HTTP stand-in",
            )
        name = part.get_param("name", header="content-disposition") or ""
        payload = part.get_payload(decode=True) or b""
        fields.append((str(name), payload.decode()))
    return fields
