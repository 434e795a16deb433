"""ClickHouse's HTTP interface over the embedded ClickHouse engine: a test stand-in, not a server.

Why it exists: the pipeline reaches ClickHouse servers through clickhouse-connect's HTTP
client, and no ClickHouse server can run in CI. This module answers that client the way a
server's HTTP interface does, and runs every statement in the real ClickHouse engine that chdb
embeds, so query results, types, output formats, settings checks and error texts are the
engine's own. Only the server's HTTP layer is written here, after ClickHouse's
``src/Server/HTTPHandler.cpp`` and ``src/Server/HTTP/`` (authentication, settings from the URL,
compression, response headers, the exception-code to HTTP-status table, in-band errors).

The engine opens one data folder per process, so the stand-in runs in a process of its own::

    python -m agent_metrics_pipeline_tests.clickhouse_http --data DIR [--port 0] [--users FILE]
        [--stop-on-stdin-eof]

It prints one line, ``listening 127.0.0.1:PORT``, then serves until SIGTERM or SIGINT (or, with
``--stop-on-stdin-eof``, until its stdin closes) and closes the engine. From Python,
``start_server(data_dir, users, log_path)`` starts it and returns a ``ServerProcess`` with
``host``, ``port`` and ``stop()``; the stand-in then also stops if the starting process dies.

The users file is JSON: each user has a password and a settings profile that applies to
every query of theirs, like a profile in a server's users.xml::

    {"default": {"password": "", "profile": {}},
     "reader": {"password": "s3cret", "profile": {"readonly": "1"}}}

What it does as a server does:

- Query text in the body, in the ``query`` URL parameter, or both (parameter, a line break,
  then the body, as for INSERT data); multipart/form-data fields; ``param_*`` query
  parameters bound by the engine's own ``{name:Type}`` substitution; ``database``,
  ``default_format`` and their ``X-ClickHouse-*`` headers; ``query_id`` (refused while a
  query of that id runs); ``session_id`` (with ``session_timeout``, ``session_check``,
  ``close_session``); every other URL parameter is a setting, as on a server. One statement
  per request; INTO OUTFILE and FROM INFILE are refused as a server refuses them.
- Users and passwords from HTTP Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` or the
  ``user``/``password`` parameters, with the server's failure codes, texts and statuses.
- Each request starts from a fresh engine connection: the user's profile, then the session's
  earlier SET/USE statements, then ``readonly=2`` for a GET, then the URL settings, then the
  query. The engine itself enforces ``readonly`` and refuses setting changes, with its own
  error texts, and its ``system.settings`` shows the profile (what clients read on connect).
- INSERT data (after ``FORMAT name`` or ``VALUES``) goes to the engine's streaming insert, in
  any Content-Encoding the server decodes (lz4, zstd, gzip, deflate, xz, bz2). Responses are
  compressed as the server chooses from Accept-Encoding when ``enable_http_compression`` is
  on; chunked transfer both ways.
- ``KILL QUERY WHERE ... [SYNC|ASYNC|TEST]`` from another request, over the query ids clients
  sent (or were given) and the HTTP users: the request's own query is left out, a user in
  readonly mode (no KILL QUERY privilege) may stop only their own queries, and the engine
  cancels the rest; the cancelled query's request gets QUERY_WAS_CANCELLED.
- Headers X-ClickHouse-Query-Id, -Format, -Timezone, -Summary, -Server-Display-Name,
  -Exception-Code and -Exception-Tag; the server's HTTP status for each exception code.
- ``wait_end_of_query=1`` buffers the whole result, so errors get their status; otherwise
  SELECTs in Native, RowBinary, TabSeparated and ArrowStream stream block by block, and an
  error after the first megabyte was sent comes inside the body between the server's
  ``__exception__`` markers, after which the connection is dropped without a final chunk.

What it cannot show (check these against a real server):

- Server configuration beyond the users file: grants, roles, row policies, quotas,
  constraints on settings, custom setting prefixes, concurrency and memory limits across
  queries, listen/keep-alive/session limits. The engine runs every query as its built-in user
  ``default``, whatever the HTTP user (``currentUser()`` says so; user names in its readonly
  errors are rewritten to the HTTP user's).
- TLS and certificate authentication, Kerberos and bearer tokens, clusters and Distributed or
  Replicated tables, ZooKeeper/Keeper, system.processes and system.query_log entries
  matching the query ids it returns (the engine assigns its own ``queryID()``; only KILL
  QUERY maps them), KILL QUERY ON CLUSTER, progress headers
  (``send_progress_in_http_headers``), cancelling a buffered query when the client goes
  away, HEAD and OPTIONS requests, the Play UI.
- The native ``client_protocol_version`` (block headers, DateTime time zones in Native
  output): the stand-in ignores it, as a proxy that drops the parameter would, and
  clickhouse-connect then falls back to protocol 0.
- Version skew: the engine is chdb's build (see ``SELECT version()``); a server in production
  may be older or newer, with other defaults and error texts.
- External data (file parts of multipart/form-data), the ``compress``/``decompress``
  parameters (ClickHouse's own block compression) and brotli/snappy bodies: refused with
  NOT_IMPLEMENTED. Session temporary tables do not survive between requests.
- Memory: request bodies are read whole, and results that do not stream are held whole (a
  server spills them to disk). Functions that read local files (``file()``) see the stand-in's
  working directory, not a server's user_files.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bz2
import contextlib
import email.parser
import email.policy
import hmac
import json
import logging
import lzma
import os
import re
import secrets
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
from backports import zstd

# The engine's own connection type: chdb's public wrapper drops the last streaming chunk (which
# carries an empty result's schema) and rewords error texts.
from chdb import _chdb

logger = logging.getLogger("clickhouse_http")

HOST = "127.0.0.1"
DEFAULT_USERS: dict[str, dict[str, Any]] = {"default": {"password": "", "profile": {}}}

# URL parameters that are not settings (HTTPHandler::processQuery, reserved_param_names).
RESERVED_PARAMS = frozenset(
    """compress decompress user password quota_key query_id stacktrace role buffer_size
    wait_end_of_query session_id session_timeout session_check client_protocol_version
    close_session database default_format query""".split()
)
# With multipart/form-data these name external tables' metadata, not settings.
EXTERNAL_DATA_SUFFIXES = ("_format", "_types", "_structure")

# src/Server/HTTP/exceptionCodeToHTTPStatus.cpp; every other code is 500.
_ERROR_NAMES_BY_HTTP_STATUS = {
    401: "REQUIRED_PASSWORD",
    403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
    400: """BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE
        CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER
        CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6
        CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN
        UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST
        TOO_BIG_AST UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH
        VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE""",
    404: """UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE
        UNKNOWN_DATABASE UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION
        UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE""",
    413: "QUERY_IS_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
    503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
    411: "HTTP_LENGTH_REQUIRED",
    408: "TIMEOUT_EXCEEDED",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
HTTP_STATUS_BY_ERROR = {
    name: status for status, names in _ERROR_NAMES_BY_HTTP_STATUS.items() for name in names.split()
}

# AccessControl::authenticate adds this to failures of the default (or an empty) user.
DEFAULT_USER_PASSWORD_HINT = (
    "\n\n"
    "If you use ClickHouse Cloud, the password can be reset at https://clickhouse.cloud/\n"
    "on the settings page for the corresponding service.\n\n"
    "If you have installed ClickHouse and forgot password you can reset it in the configuration "
    "file.\n"
    "The password for default user is typically located at "
    "/etc/clickhouse-server/users.d/default-password.xml\n"
    "and deleting this file will reset the password.\n"
    "See also /etc/clickhouse-server/users.xml on the server where ClickHouse is installed.\n\n"
)
GET_READONLY_HINT = (
    " For queries over HTTP, method GET implies readonly. You should use method POST for "
    "modifying queries"
)

DEFAULT_BUFFER_SIZE = 1 << 20  # DBMS_DEFAULT_BUFFER_SIZE: held back before headers go out
KEEP_ALIVE_TIMEOUT = 30  # seconds an idle keep-alive connection stays open
DEFAULT_SESSION_TIMEOUT = 60
MAX_SESSION_TIMEOUT = 3600
MAX_EXCEPTION_SIZE = 16 * 1024  # a whole in-band exception block
EXCEPTION_TAG_LENGTH = 16

# Formats whose per-block output concatenates into the whole result (ArrowStream after
# splicing), so they can stream; other formats are buffered whole.
STREAMABLE_FORMATS = frozenset({"native", "rowbinary", "tabseparated", "tsv", "arrowstream"})
BINARY_FORMATS = frozenset(
    """native rowbinary rowbinarywithnames rowbinarywithnamesandtypes arrow arrowstream parquet
    orc avro msgpack protobuf capnproto bson npy""".split()
)
ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
NOT_FOUND_HINT = (
    "\n\nUse / or /ping for health checks.\n\nSend queries from your program with POST method "
    "or GET /?query=...\n"
)

# Server preference for response compression (chooseHTTPCompressionMethod); brotli and
# snappy are left out because the stand-in cannot produce them.
RESPONSE_COMPRESSION_PREFERENCE = ("zstd", "lz4", "gzip", "deflate", "xz", "bz2")


class ServerError(Exception):
    """An error as the server reports it: ``Code: N. DB::Exception: message. (NAME)``."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.message = message

    @property
    def text(self) -> str:
        # getExceptionMessage adds a full stop unless the message ends with one.
        stop = "" if self.message.endswith(".") else "."
        return f"Code: {self.code}. DB::Exception: {self.message}{stop} ({self.name})"

    @property
    def http_status(self) -> int:
        return HTTP_STATUS_BY_ERROR.get(self.name, 500)


_ENGINE_ERROR = re.compile(r"Code: (\d+)\. DB::Exception: (.*) \(([A-Z0-9_]+)\)", re.DOTALL)
_VERSION_SUFFIX = re.compile(r" \(version [^()]*(?:\([^()]*\))?\)\.?$")


def engine_error(error: BaseException) -> ServerError:
    """The server's form of an error the engine raised.

    The engine reports some errors wrapped in themselves, as a client shows a server's error
    (``Code: 164. DB::Exception: Code: 164. DB::Exception: ... (version V). (READONLY)``), and
    some with a version already; a server reports the inner one once, with its version added
    when sent, so wrapping and version are peeled off here.
    """
    text = str(error).strip()
    while match := _ENGINE_ERROR.fullmatch(_VERSION_SUFFIX.sub("", text)):
        code, message, name = match.groups()
        inner = _VERSION_SUFFIX.sub("", message)
        if not _ENGINE_ERROR.fullmatch(inner):
            return ServerError(int(code), name, message)
        text = inner
    return ServerError(1001, "STD_EXCEPTION", text)


@dataclass(frozen=True)
class User:
    """A user of the users file: a password and the settings profile of their queries."""

    name: str
    password: str
    profile: dict[str, str]


def load_users(users: Mapping[str, Mapping[str, Any]]) -> dict[str, User]:
    """Users from the users-file mapping; setting values are kept as the text a server reads."""
    loaded = {}
    for name, entry in users.items():
        profile = {key: _setting_text(value) for key, value in entry.get("profile", {}).items()}
        loaded[name] = User(name, str(entry.get("password", "")), profile)
    return loaded


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def escape_parameter(value: str) -> str:
    """A value in the escaped text form that query parameters are read in."""
    for plain, escaped in (
        ("\\", "\\\\"),
        ("\t", "\\t"),
        ("\n", "\\n"),
        ("\r", "\\r"),
        ("\0", "\\0"),
    ):
        value = value.replace(plain, escaped)
    return value


class Engine:
    """The embedded engine on one data folder.

    One connection stays open for the life of the process (the engine shuts down when its
    last connection closes); each request gets a connection of its own, because a server gives
    each query a fresh context made from the user's profile, and a connection's settings, once
    readonly, can never be reset.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = str(data_dir.resolve())
        self._anchor = _chdb.connect(self.path)
        self.version = self._rows("SELECT version()")[0][0]
        self._codes = {
            name: int(code)
            for code, name in self._rows(
                "SELECT number, errorCodeToName(number) FROM numbers(2000) "
                "WHERE errorCodeToName(number) != ''"
            )
        }
        # Settings the embedded engine changes at start-up (implicit_select, introspection...)
        # go back to the defaults a server starts its profiles from.
        self._resets = [
            f"{quote_identifier(name)} = DEFAULT"
            for (name,) in self._rows(
                "SELECT name FROM system.settings WHERE changed AND name != 'database'"
            )
        ]

    def _rows(self, sql: str) -> list[list[str]]:
        text = self._anchor.query(sql, "TabSeparated").bytes().decode()
        return [line.split("\t") for line in text.splitlines()]

    def connect(self) -> Any:
        return _chdb.connect(self.path)

    def error(self, name: str, message: str) -> ServerError:
        return ServerError(self._codes[name], name, message)

    def profile_statement(self, user: User) -> str | None:
        """One SET that gives a fresh connection the user's profile; readonly too, since the
        whole statement is checked before any of it applies."""
        assignments = self._resets + [
            f"{quote_identifier(key)} = {quote_string(value)}"
            for key, value in user.profile.items()
        ]
        return "SET " + ", ".join(assignments) if assignments else None

    def check_profiles(self, users: Mapping[str, User]) -> None:
        """Fail at start-up, not on every request, when a profile names an unknown setting."""
        for user in users.values():
            statement = self.profile_statement(user)
            if statement is None:
                continue
            connection = self.connect()
            try:
                connection.query(statement, "TabSeparated")
            except RuntimeError as error:
                raise SystemExit(
                    f"profile of user {user.name!r} is refused: {engine_error(error).text}"
                ) from error
            finally:
                connection.close()

    def close(self) -> None:
        self._anchor.close()


@dataclass
class _Session:
    """What a session keeps between requests: its SET and USE statements, replayed in order
    on each request's fresh connection."""

    statements: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    timeout: int = DEFAULT_SESSION_TIMEOUT
    expires: float = 0.0
    busy: bool = False


class Sessions:
    """Named sessions per user, locked while a request uses them, as the server's
    NamedSessionsStorage does."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], _Session] = {}

    def acquire(self, user: str, session_id: str, timeout: int, check: bool) -> _Session:
        with self._lock:
            now = time.monotonic()
            for key in [k for k, s in self._sessions.items() if not s.busy and s.expires < now]:
                del self._sessions[key]
            session = self._sessions.get((user, session_id))
            if session is None:
                if check:
                    raise self._engine.error("SESSION_NOT_FOUND", f"Session {session_id} not found")
                session = self._sessions[(user, session_id)] = _Session()
            elif session.busy:
                raise self._engine.error(
                    "SESSION_IS_LOCKED", f"Session {session_id} is locked by a concurrent client"
                )
            session.busy = True
            session.timeout = timeout
            return session

    def release(self, user: str, session_id: str, session: _Session, close: bool) -> None:
        with self._lock:
            session.busy = False
            session.expires = time.monotonic() + session.timeout
            if close:
                self._sessions.pop((user, session_id), None)


_TOKENS = re.compile(
    rb"""
    (?P<space>\s+)
    |(?P<comment>--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<literal>'(?:[^'\\]|\\.|'')*'?)
    |(?P<quoted>`(?:[^`\\]|\\.|``)*`?|"(?:[^"\\]|\\.|"")*"?)
    |(?P<heredoc>\$(?P<tag>\w*)\$.*?(?:\$(?P=tag)\$|\Z))
    |(?P<word>[A-Za-z_]\w*)
    |(?P<number>\d[\w.]*)
    |(?P<open>[(\[{])
    |(?P<close>[)\]}])
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _InlineData:
    """An INSERT's own data, split off as ParserInsertQuery does: the statement up to its
    FORMAT (or VALUES) clause, the input format, and where the data starts, in bytes."""

    statement_end: int
    input_format: str
    data_start: int


@dataclass(frozen=True)
class _KillQuery:
    """``KILL QUERY WHERE condition [SYNC|ASYNC|TEST]``, as ParserKillQueryQuery reads it."""

    condition: str
    mode: str


@dataclass(frozen=True)
class _Shape:
    """What the HTTP layer needs to know of a statement beyond the engine's classification:
    its first keyword, its FORMAT clause or inline data, the clauses a server refuses over
    HTTP, and a KILL QUERY's parts."""

    first_word: str
    output_format: str | None
    into_outfile: bool
    from_infile: bool
    inline: _InlineData | None
    kill_query: _KillQuery | None = None


def statement_shape(sql: bytes) -> _Shape:
    """Read the top level of one statement's tokens; an INSERT is read up to its data."""
    depth = 0
    top: list[tuple[str, str, re.Match[bytes]]] = []  # (kind, text with words upper-cased)
    inline = None
    for match in _TOKENS.finditer(sql):
        kind = match.lastgroup or ""
        if kind in ("space", "comment"):
            continue
        if kind in ("open", "close"):
            depth = depth + 1 if kind == "open" else max(depth - 1, 0)
            continue
        if depth:
            continue
        token = match.group().decode(errors="replace")
        top.append((kind, token.upper() if kind == "word" else token, match))
        if top[0][1] != "INSERT":
            continue
        if top[-1][1] in ("SELECT", "WITH") and kind == "word":
            break
        if top[-1][1] == "VALUES" and kind == "word":
            inline = _InlineData(match.start(), "Values", match.end())
            break
        if (
            len(top) > 3
            and kind in ("word", "quoted")
            and top[-2][:2] == ("word", "FORMAT")
            and top[-3][1] not in ("INTO", "TABLE", ".")
        ):
            name = token[1:-1] if kind == "quoted" else token
            inline = _InlineData(top[-2][2].start(), name, _data_start(sql, match.end()))
            break
    words = [token for _, token, _ in top]
    pairs = set(zip(words, words[1:], strict=False))
    return _Shape(
        first_word=words[0] if words else "",
        output_format=None if words[:1] == ["INSERT"] else _format_clause(top),
        into_outfile=("INTO", "OUTFILE") in pairs,
        from_infile=words[:1] == ["INSERT"] and ("FROM", "INFILE") in pairs,
        inline=inline,
        kill_query=_kill_query_parts(sql, top),
    )


def _kill_query_parts(sql: bytes, top: list[tuple[str, str, re.Match[bytes]]]) -> _KillQuery | None:
    """The condition and mode of ``KILL QUERY WHERE ...`` (not ON CLUSTER: no cluster here)."""
    if [token for _, token, _ in top[:3]] != ["KILL", "QUERY", "WHERE"]:
        return None
    end = len(top)
    if top[end - 1][1] == ";":
        end -= 1
    if end > 5 and top[end - 2][:2] == ("word", "FORMAT"):
        end -= 2
    mode = "ASYNC"
    if end > 4 and top[end - 1][1] in ("SYNC", "ASYNC", "TEST"):
        mode = top[end - 1][1]
        end -= 1
    stop = top[end][2].start() if end < len(top) else len(sql)
    condition = sql[top[2][2].end() : stop].decode(errors="replace").strip()
    return _KillQuery(condition, mode)


def _data_start(sql: bytes, position: int) -> int:
    """Data starts after the first newline, if there is one, or after the whitespace."""
    while position < len(sql) and sql[position] in b" \t\f\r\v":
        position += 1
    return position + 1 if sql[position : position + 1] == b"\n" else position


def _format_clause(top: list[tuple[str, str, re.Match[bytes]]]) -> str | None:
    """The last ``FORMAT name`` that ends the statement (or precedes SETTINGS or ';')."""
    for index in range(len(top) - 2, -1, -1):
        kind, token, _ = top[index]
        name_kind = top[index + 1][0]
        if kind != "word" or token != "FORMAT" or name_kind not in ("word", "quoted"):
            continue
        rest = top[index + 2 :]
        if not rest or rest[0][1] in (";", "SETTINGS"):
            name = top[index + 1][2].group().decode(errors="replace")
            return name[1:-1] if name_kind == "quoted" else name
    return None


def content_type(output_format: str) -> str:
    name = output_format.lower()
    if name in BINARY_FORMATS:
        return "application/octet-stream"
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        header = "present" if "withnames" in name else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if name.startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


def decompress_body(encoding: str, data: bytes, engine: Engine) -> bytes:
    """A request body in the Content-Encoding the server accepts (chooseCompressionMethod);
    bodies of several frames or members, as clients write them block by block, included."""
    method = encoding.strip().lower()
    if method in ("", "auto", "none"):
        return data
    decoders: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
        "gzip": ("ZLIB_INFLATE_FAILED", _gunzip),
        "gz": ("ZLIB_INFLATE_FAILED", _gunzip),
        "deflate": ("ZLIB_INFLATE_FAILED", zlib.decompress),
        "zstd": ("ZSTD_DECODER_FAILED", zstd.decompress),
        "zst": ("ZSTD_DECODER_FAILED", zstd.decompress),
        "lz4": ("LZ4_DECODER_FAILED", _lz4_frames),
        "xz": ("LZMA_STREAM_DECODER_FAILED", lzma.decompress),
        "lzma": ("LZMA_STREAM_DECODER_FAILED", lzma.decompress),
        "bz2": ("BZIP2_STREAM_DECODER_FAILED", bz2.decompress),
    }
    if method in decoders:
        error_name, decode = decoders[method]
        try:
            return decode(data)
        except (
            zlib.error,
            zstd.ZstdError,
            lzma.LZMAError,
            OSError,
            RuntimeError,
            ValueError,
            EOFError,
        ) as error:
            raise engine.error(error_name, f"Cannot decompress {method} data: {error}") from None
    if method in ("br", "brotli", "snappy"):
        raise engine.error("NOT_IMPLEMENTED", "Unsupported compression method")
    raise engine.error(
        "NOT_IMPLEMENTED",
        f"Unknown compression method '{encoding}'. Only 'auto', 'none', 'gzip', 'deflate', "
        "'br', 'xz', 'zstd', 'lz4', 'bz2', 'snappy' are supported as compression methods",
    )


def _gunzip(data: bytes) -> bytes:
    parts = []
    while data:
        decoder = zlib.decompressobj(wbits=31)
        parts.append(decoder.decompress(data))
        if not decoder.eof:
            raise EOFError("truncated gzip member")
        data = decoder.unused_data
    return b"".join(parts)


def _lz4_frames(data: bytes) -> bytes:
    parts = []
    while data:
        decoder = lz4.frame.LZ4FrameDecompressor()
        parts.append(decoder.decompress(data))
        if not decoder.eof:
            raise EOFError("truncated lz4 frame")
        data = decoder.unused_data
    return b"".join(parts)


class _Encoder:
    """Compresses a response body as one stream, the way the server wraps its output buffer."""

    def __init__(self, method: str, level: int) -> None:
        self._prefix = b""
        if method == "zstd":
            self._codec: Any = zstd.ZstdCompressor(level=level)
        elif method == "lz4":
            self._codec = lz4.frame.LZ4FrameCompressor(compression_level=level)
            self._prefix = self._codec.begin()
        elif method in ("gzip", "deflate"):
            self._codec = zlib.compressobj(level, zlib.DEFLATED, 31 if method == "gzip" else 15)
        elif method == "xz":
            self._codec = lzma.LZMACompressor(preset=min(max(level, 0), 9))
        else:
            self._codec = bz2.BZ2Compressor(min(max(level, 1), 9))

    def compress(self, data: bytes | memoryview) -> bytes:
        out, self._prefix = self._prefix + self._codec.compress(data), b""
        return out

    def flush(self) -> bytes:
        out, self._prefix = self._prefix + self._codec.flush(), b""
        return out


def choose_response_compression(accept_encoding: str) -> str | None:
    # Substring matches, as the server's chooseHTTPCompressionMethod does.
    return next((m for m in RESPONSE_COMPRESSION_PREFERENCE if m in accept_encoding), None)


def _join_arrow_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """One Arrow IPC stream out of the engine's per-block streams: each block comes as a
    whole stream (schema, batches, end marker), and a server sends one, so every schema but
    the first and every end marker but the last are dropped."""
    held: bytes | None = None
    for chunk in chunks:
        if held is None:
            held = chunk
            continue
        yield held[:-8] if held.endswith(ARROW_END_OF_STREAM) else held
        continuation, length = struct.unpack_from("<Ii", chunk)
        held = chunk[8 + length :] if continuation == 0xFFFFFFFF else chunk[4 + continuation :]
    if held is not None:
        yield held


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


@dataclass(frozen=True)
class _Running:
    """A query in flight: its user, and the native id of the thread the engine runs it on."""

    user: str
    thread: int


class StandInServer(ThreadingHTTPServer):
    """The threading HTTP server; requests run in parallel, each on its own engine
    connection (the engine serves concurrent connections)."""

    daemon_threads = True

    def __init__(self, port: int, engine: Engine, users: Mapping[str, User]) -> None:
        super().__init__((HOST, port), _Handler)
        self.engine = engine
        self.users = dict(users)
        self.sessions = Sessions(engine)
        self.display_name = socket.getfqdn()
        self._active = 0
        self._idle = threading.Condition()
        self._running: dict[str, _Running] = {}
        self._running_lock = threading.Lock()

    @contextlib.contextmanager
    def running(self, query_id: str, user: str) -> Iterator[None]:
        """A query under its id for its duration, as in the server's process list, which
        refuses an id that is running already (ProcessList::insert)."""
        with self._running_lock:
            if other := self._running.get(query_id):
                by = "" if other.user == user else f" by user {other.user}"
                raise self.engine.error(
                    "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING",
                    f"Query with id = {query_id} is already running{by}.",
                )
            self._running[query_id] = _Running(user, threading.get_native_id())
        try:
            yield
        finally:
            with self._running_lock:
                del self._running[query_id]

    def running_queries(self) -> dict[str, _Running]:
        with self._running_lock:
            return dict(self._running)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Count a request in flight for its duration."""
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for requests in flight, so the engine closes after its last query."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)


def serve(
    data_dir: Path,
    port: int,
    users: Mapping[str, Mapping[str, Any]],
    stop_on_stdin_eof: bool = False,
) -> None:
    """Open the engine, serve until SIGTERM or SIGINT (or the end of stdin, when asked: a
    parent that dies closes the pipe), then close the engine."""
    engine = Engine(data_dir)
    try:
        loaded = load_users(users)
        engine.check_profiles(loaded)
        server = StandInServer(port, engine, loaded)

        def stop(reason: str) -> None:
            logger.info("%s: stopping", reason)
            # shutdown() waits for serve_forever(), which runs in the main thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, lambda signum, _frame: stop(f"signal {signum}"))
        signal.signal(signal.SIGINT, lambda signum, _frame: stop(f"signal {signum}"))
        if stop_on_stdin_eof:

            def watch_stdin() -> None:
                # The raw descriptor: a thread blocked in sys.stdin would hold its lock, which
                # the interpreter needs at exit.
                while os.read(sys.stdin.fileno(), 65536):
                    pass
                stop("end of stdin")

            threading.Thread(target=watch_stdin, daemon=True).start()
        host, bound_port = server.server_address[:2]
        logger.info("engine %s on %s, users %s", engine.version, engine.path, sorted(loaded))
        print(f"listening {host}:{bound_port}", flush=True)
        server.serve_forever(poll_interval=0.2)
        server.server_close()
        if not server.wait_idle(timeout=10):
            logger.warning("requests still running at exit")
    finally:
        engine.close()
        logger.info("engine closed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="engine data folder")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--users",
        type=Path,
        help="users JSON (default: user 'default', no password, empty profile)",
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (start_server uses it, so that the stand-in does not "
        "outlive a test process that dies)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    users = json.loads(args.users.read_text()) if args.users else DEFAULT_USERS
    args.data.mkdir(parents=True, exist_ok=True)
    serve(args.data, args.port, users, args.stop_on_stdin_eof)


@dataclass
class ServerProcess:
    """A running stand-in: where it listens, and how to stop it."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then kill if it has not exited in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe:
                pipe.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    data_dir: Path,
    users: Mapping[str, Mapping[str, Any]],
    log_path: Path,
    *,
    port: int = 0,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start the stand-in in a process of its own and wait until it listens.

    The users are written next to the log (``<log>.users.json``); the stand-in's log (one
    line per request) goes to ``log_path``. Raises RuntimeError with the log's tail if it
    does not come up within ``timeout`` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    users_path = log_path.with_name(log_path.name + ".users.json")
    users_path.write_text(json.dumps(users))
    module = __name__ if __name__ != "__main__" else "agent_metrics_pipeline_tests.clickhouse_http"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", module, "--data", str(data_dir), "--port", str(port)),
                *("--users", str(users_path), "--stop-on-stdin-eof"),
            ],
            cwd=Path(__file__).resolve().parents[1],  # where the tests package imports from
            stdin=subprocess.PIPE,  # held open until stop(), or until this process dies
            stdout=subprocess.PIPE,
            stderr=log,
        )
    found: list[re.Match[bytes]] = []
    stdout = process.stdout
    assert stdout is not None

    def read_until_listening() -> None:
        for line in iter(stdout.readline, b""):
            if match := re.fullmatch(rb"listening (\S+):(\d+)\s*", line):
                found.append(match)
                return

    reader = threading.Thread(target=read_until_listening, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        timed_out = reader.is_alive()
        if timed_out:
            process.kill()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        state = (
            f"not listening after {timeout:.0f}s"
            if timed_out
            else f"exited with code {process.returncode}"
        )
        raise RuntimeError(f"ClickHouse HTTP stand-in {state}; log {log_path}:\n{tail}")
    host, port_text = found[0].groups()
    return ServerProcess(host.decode(), int(port_text), process, log_path)


if __name__ == "__main__":
    main()
