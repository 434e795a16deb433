"""The server's HTTP layer: the request handler (routes, request bodies, authentication,
settings from the URL, sessions, the query on a fresh engine connection, INSERT data, KILL
QUERY) and the reply (headers, a chunked and possibly compressed body, errors with their
status or in the body)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hmac
import json
import logging
import secrets
import string
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from clickhouse_stand_in.engine import DEFAULT_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT, User, _Session
from clickhouse_stand_in.errors import (
    DEFAULT_USER_PASSWORD_HINT,
    GET_READONLY_HINT,
    NOT_FOUND_HINT,
    ServerError,
    engine_error,
)
from clickhouse_stand_in.formats import (
    STREAMABLE_FORMATS,
    _Encoder,
    _join_arrow_stream,
    choose_response_compression,
    content_type,
    decompress_body,
)
from clickhouse_stand_in.statements import (
    _InlineData,
    _KillQuery,
    escape_parameter,
    quote_identifier,
    quote_string,
    statement_shape,
)

if TYPE_CHECKING:
    from clickhouse_stand_in.server import StandInServer

logger = logging.getLogger(__name__)


# URL parameters that are not settings (HTTPHandler::processQuery, reserved_param_names).
RESERVED_PARAMS = frozenset(
    """compress decompress user password quota_key query_id stacktrace role buffer_size
    wait_end_of_query session_id session_timeout session_check client_protocol_version
    close_session database default_format query""".split()
)
# With multipart/form-data these name external tables' metadata, not settings.
EXTERNAL_DATA_SUFFIXES = ("_format", "_types", "_structure")


DEFAULT_BUFFER_SIZE = 1 << 20  # DBMS_DEFAULT_BUFFER_SIZE: held back before headers go out
KEEP_ALIVE_TIMEOUT = 30  # seconds an idle keep-alive connection stays open


MAX_EXCEPTION_SIZE = 16 * 1024  # a whole in-band exception block
EXCEPTION_TAG_LENGTH = 16


class _Reply:
    """One response: headers once, then a chunked body, compressed if negotiated. An error
    after the headers went out is written into the body between exception markers."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.tag = "".join(
            secrets.choice(string.ascii_lowercase + string.digits)
            for _ in range(EXCEPTION_TAG_LENGTH)
        )
        self.compression: str | None = None
        self.compression_level = 3
        self.started = False
        self.status = 0
        self.code = 0
        self._encoder: _Encoder | None = None

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
            self._encoder = _Encoder(self.compression, self.compression_level)
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

    def error(self, error: ServerError, version: str) -> None:
        self.code = error.code
        message = f"{error.text} (version {version})\n"
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
            self._encoder = _Encoder(self.compression, self.compression_level)
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
                ("X-ClickHouse-Server-Display-Name", handler.server.display_name),
                ("X-ClickHouse-Exception-Tag", self.tag),
                *headers,
            ]
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()


@dataclass
class _Call:
    """A query request as the HTTP handler has parsed it."""

    method: str
    user: User
    params: list[tuple[str, str]]
    sql: bytes
    multipart: bool

    def first(self, name: str, default: str = "") -> str:
        return next((value for key, value in self.params if key == name), default)

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.params)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_TIMEOUT
    disable_nagle_algorithm = True  # small responses would otherwise wait for delayed ACKs
    server: StandInServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own messages (malformed requests, timeouts) go to the debug log."""
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        started = time.monotonic()
        reply = _Reply(self)
        engine = self.server.engine
        user_name = sql_head = "-"
        with self.server.tracking():
            try:
                url = urlsplit(self.path)
                if url.path == "/ping" or (
                    url.path == "/" and self.command == "GET" and not url.query
                ):
                    reply.plain(200, "Ok.\n")
                    return
                if url.path != "/":
                    self._read_body()
                    reply.plain(
                        404,
                        f"There is no handle {url.path}{NOT_FOUND_HINT}",
                        "text/plain; charset=UTF-8",
                    )
                    return
                params = parse_qsl(url.query, keep_blank_values=True)
                body = self._read_body()
                user = self._authenticate(params)
                user_name = user.name
                call = self._parse(user, params, body)
                sql_head = call.sql[:200].decode(errors="replace")
                self._run(call, reply)
            except ServerError as error:
                self._send_error(reply, error)
            except OSError:  # the client went away or stopped reading
                self.close_connection = True
            except Exception as error:  # a bug of the stand-in, reported as a server's own
                logger.error("unexpected failure\n%s", traceback.format_exc())
                self._send_error(
                    reply, engine.error("STD_EXCEPTION", f"{type(error).__name__}: {error}")
                )
            finally:
                logger.info(
                    "%s %s %s status=%s code=%s in=%s out=%s %.3fs %r",
                    self.address_string(),
                    user_name,
                    self.command,
                    reply.status,
                    reply.code,
                    self.headers.get("Content-Encoding") or "-",
                    reply.compression or "-",
                    time.monotonic() - started,
                    sql_head,
                )

    def _send_error(self, reply: _Reply, error: ServerError) -> None:
        try:
            reply.error(error, self.server.engine.version)
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self._read_exactly(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        if length is None:
            if self.command == "POST":
                self.close_connection = True
                raise self.server.engine.error(
                    "HTTP_LENGTH_REQUIRED",
                    "The Transfer-Encoding is not chunked and there is no Content-Length header "
                    "for POST request",
                )
            return b""
        return self._read_exactly(int(length))

    def _read_exactly(self, size: int) -> bytes:
        """A socket's buffered reader may return less than asked for; read until it is all."""
        parts = []
        while size > 0:
            part = self.rfile.read(size)
            if not part:
                raise ConnectionResetError("request body ended early")
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def _authenticate(self, params: list[tuple[str, str]]) -> User:
        """authenticateUserByHTTP and AccessControl::authenticate, for plain passwords."""
        engine = self.server.engine
        headers = self.headers
        user = headers.get("X-ClickHouse-User", "")
        password = headers.get("X-ClickHouse-Key", "")
        authorization = headers.get("Authorization")
        in_params = any(key in ("user", "password") for key, _ in params)

        def refuse(message: str) -> ServerError:
            return engine.error("AUTHENTICATION_FAILED", message)

        def both(first: str, second: str) -> ServerError:
            return refuse(
                f"Invalid authentication: it is not allowed to use {first} and "
                f"{second} simultaneously"
            )

        def named(name: str, method: str) -> str:
            if not name:
                raise refuse(f"Got an empty user name from {method}")
            return name

        if headers.get("X-ClickHouse-SSL-Certificate-Auth", "") == "on":
            named(user, "X-ClickHouse HTTP headers")
            raise refuse(
                "Invalid authentication: SSL certificate authentication requires "
                "nonempty certificate's Common Name or Subject Alternative Name"
            )
        if user or password:
            named(user, "X-ClickHouse HTTP headers")
            if authorization is not None:
                raise both("X-ClickHouse HTTP headers", "Authorization HTTP header")
            if in_params:
                raise both("X-ClickHouse HTTP headers", "authentication via parameters")
        elif authorization is not None:
            if in_params:
                raise both("Authorization HTTP header", "authentication via parameters")
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() != "basic":
                raise refuse(
                    f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
                )
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise refuse("Invalid authentication: malformed Basic credentials") from None
            user, _, password = decoded.partition(":")
            named(user, "Authorization HTTP header")
        else:
            user = next((value for key, value in params if key == "user"), "default")
            password = next((value for key, value in params if key == "password"), "")
            named(user, "authentication via parameters")

        known = self.server.users.get(user)
        if known and hmac.compare_digest(known.password.encode(), password.encode()):
            return known
        message = (
            f"{user}: Authentication failed: password is incorrect, or there is no user "
            "with such name"
        )
        if user == "default":
            # Browsers get a Basic-auth prompt for the default user: 401, not 403.
            name = "REQUIRED_PASSWORD" if authorization != "never" else "AUTHENTICATION_FAILED"
            raise engine.error(name, message + DEFAULT_USER_PASSWORD_HINT)
        raise refuse(message)

    def _parse(self, user: User, params: list[tuple[str, str]], body: bytes) -> _Call:
        engine = self.server.engine
        content_type_ = self.headers.get("Content-Type", "")
        multipart = content_type_.lower().startswith("multipart/form-data")
        if multipart:
            params = params + self._form_fields(content_type_, body)
            # DynamicQueryHandler::getQuery: all query fields, and the body is not appended.
            sql = "".join(value for key, value in params if key == "query").encode()
            return _Call(self.command, user, params, sql, multipart)
        body = decompress_body(self.headers.get("Content-Encoding", ""), body, engine)
        query = next((value for key, value in params if key == "query"), "")
        sql = (query + "\n").encode() + body if query else body
        return _Call(self.command, user, params, sql, multipart)

    def _form_fields(self, content_type_: str, body: bytes) -> list[tuple[str, str]]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type_.encode() + b"\r\n\r\n" + body
        )
        fields = []
        for part in message.iter_parts():
            if part.get_filename() is not None:
                raise self.server.engine.error(
                    "NOT_IMPLEMENTED",
                    "External data (files in multipart/form-data) is not supported by the "
                    "ClickHouse HTTP stand-in",
                )
            name = part.get_param("name", header="content-disposition") or ""
            payload = part.get_payload(decode=True) or b""
            fields.append((str(name), payload.decode()))
        return fields

    def _run(self, call: _Call, reply: _Reply) -> None:
        """HTTPHandler::processQuery: the parameters that are not settings, then the session."""
        server = self.server
        engine = server.engine
        if call.first("compress") in ("1", "true") or call.first("decompress") in ("1", "true"):
            raise engine.error(
                "NOT_IMPLEMENTED",
                "ClickHouse's own block compression (compress/decompress parameters) is not "
                "supported by the ClickHouse HTTP stand-in",
            )
        roles = [value for key, value in call.params if key == "role" and value]
        if roles:
            raise engine.error("UNKNOWN_ROLE", f"There is no role `{roles[0]}` in user directories")

        if not call.has("session_id"):
            self._run_in(None, call, reply)
            return
        session_id = call.first("session_id")
        session = server.sessions.acquire(
            call.user.name,
            session_id,
            self._session_timeout(call),
            call.first("session_check") == "1",
        )
        try:
            self._run_in(session, call, reply)
        finally:
            server.sessions.release(
                call.user.name, session_id, session, call.first("close_session") in ("1", "true")
            )

    def _run_in(self, session: _Session | None, call: _Call, reply: _Reply) -> None:
        """The query on a fresh engine connection, closed when the answer has been sent."""
        connection = self.server.engine.connect()
        try:
            self._prepare(connection, call, session)
            state = self._context(connection, call)
            if state["enable_http_compression"] in ("1", "true"):
                reply.compression = choose_response_compression(
                    self.headers.get("Accept-Encoding", "")
                )
                reply.compression_level = int(state["http_zlib_compression_level"])
            query_id = (
                call.first("query_id")
                or self.headers.get("X-ClickHouse-Query-Id")
                or str(uuid.uuid4())
            )
            with self.server.running(query_id, call.user.name):
                self._execute(connection, call, reply, session, state, query_id)
        except RuntimeError as error:
            raise self._server_error(error, call) from None
        finally:
            connection.close()

    def _session_timeout(self, call: _Call) -> int:
        if not call.has("session_timeout"):
            return DEFAULT_SESSION_TIMEOUT
        text = call.first("session_timeout")
        engine = self.server.engine
        if not text.isdigit():
            raise engine.error("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{text}'")
        if int(text) > MAX_SESSION_TIMEOUT:
            raise engine.error(
                "INVALID_SESSION_TIMEOUT",
                f"Session timeout '{text}' is larger than max_session_timeout: "
                f"{MAX_SESSION_TIMEOUT}. Maximum session timeout could be modified in "
                "configuration file.",
            )
        return int(text)

    def _prepare(self, connection: Any, call: _Call, session: _Session | None) -> None:
        """Profile, session, database, GET's readonly, then the URL settings: the order in
        which a server builds a query's context, so the engine checks each step as it would."""
        profile = self.server.engine.profile_statement(call.user)
        if profile:
            connection.query(profile, "TabSeparated")
        for statement, parameters in session.statements if session else []:
            connection.query(statement, "TabSeparated", params=parameters)
        database = self.headers.get("X-ClickHouse-Database") or call.first("database")
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
                "SET "
                + ", ".join(f"{quote_identifier(k)} = {quote_string(v)}" for k, v in changes),
                "TabSeparated",
            )

    @staticmethod
    def _context(connection: Any, call: _Call) -> dict[str, str]:
        """The settings the HTTP layer itself reads, as they stand for this query."""
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

    def _execute(
        self,
        connection: Any,
        call: _Call,
        reply: _Reply,
        session: _Session | None,
        state: dict[str, str],
        query_id: str,
    ) -> None:
        engine = self.server.engine
        shape = statement_shape(call.sql)
        # The engine's parser reads an INSERT's data as a client does (up to a line break),
        # so it is shown the statement alone.
        statement = call.sql[: shape.inline.data_start] if shape.inline else call.sql
        kind = self._classify(connection, statement.decode(errors="replace"))
        if shape.into_outfile:
            raise engine.error("INTO_OUTFILE_NOT_ALLOWED", "INTO OUTFILE is not allowed")
        if shape.from_infile:
            raise engine.error(
                "UNKNOWN_TYPE_OF_QUERY", "Query has infile and was send directly to server"
            )
        default_format = (
            self.headers.get("X-ClickHouse-Format")
            or call.first("default_format")
            or "TabSeparated"
        )
        output_format = shape.output_format or default_format
        parameters: dict[str, str] = {}
        for key, value in call.params:
            if key.startswith("param_"):
                parameters.setdefault(key[len("param_") :], value)
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
            self._stream(
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
                result = self._insert(connection, call.sql, shape.inline)
            elif shape.kill_query:
                result = self._kill_query(
                    connection, call, shape.kill_query, query_id, output_format, parameters
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
                        _summary(
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

    @staticmethod
    def _insert(connection: Any, sql: bytes, inline: _InlineData) -> Any:
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

    def _kill_query(
        self,
        connection: Any,
        call: _Call,
        kill: _KillQuery,
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
            for running_id, running in self.server.running_queries().items()
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
            "transform(engine_query_id, {kill_engine_ids:Array(String)}, "
            "{kill_%s:Array(String)}, %s)"
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
            raise self.server.engine.error(
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

    @staticmethod
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

    def _stream(
        self,
        connection: Any,
        call: _Call,
        reply: _Reply,
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
            chunks = _join_arrow_stream(chunks)
        started = time.monotonic()
        held: list[bytes] = []
        try:
            for chunk in chunks:
                if reply.started:
                    reply.write(chunk)
                    continue
                held.append(chunk)
                if sum(map(len, held)) >= buffer_size:
                    self._start_stream(reply, headers, totals, started, held)
            if not reply.started:
                self._start_stream(reply, headers, totals, started, held)
            reply.finish()
        except RuntimeError as error:
            if not reply.started:
                raise
            reply.error(self._server_error(error, call), self.server.engine.version)
        finally:
            if not done:
                with contextlib.suppress(RuntimeError):
                    connection.streaming_cancel_query(handle)

    @staticmethod
    def _start_stream(
        reply: _Reply,
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
                    _summary(
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

    def _server_error(self, error: RuntimeError, call: _Call) -> ServerError:
        """The engine's error as the server words it: the engine runs as ``default``, the
        server names the HTTP user, and adds a hint when GET made the query readonly."""
        parsed = engine_error(error)
        message = parsed.message
        if message.startswith("default: ") and call.user.name != "default":
            message = f"{call.user.name}: " + message[len("default: ") :]
        if call.method == "GET" and message.endswith(": Cannot execute query in readonly mode."):
            message += GET_READONLY_HINT
        return ServerError(parsed.code, parsed.name, message)


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


def _summary(
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
