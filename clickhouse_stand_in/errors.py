"""Errors as the server reports them: ``ServerError`` (``Code: N. DB::Exception: ...``) with
the HTTP status of its code, the engine's errors in that form (worded for the request's user),
and the hint texts the server adds to some answers."""

from __future__ import annotations

import re

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


NOT_FOUND_HINT = (
    "\n\nUse / or /ping for health checks.\n\nSend queries from your program with POST method "
    "or GET /?query=...\n"
)


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


def request_error(error: BaseException, user: str, method: str) -> ServerError:
    """The engine's error as the server words it to a request's user: the engine runs as
    ``default``, the server names the HTTP user, and adds a hint when GET made the query
    readonly."""
    parsed = engine_error(error)
    message = parsed.message
    if message.startswith("default: ") and user != "default":
        message = f"{user}: " + message[len("default: ") :]
    if method == "GET" and message.endswith(": Cannot execute query in readonly mode."):
        message += GET_READONLY_HINT
    return ServerError(parsed.code, parsed.name, message)
