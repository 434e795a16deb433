"""Statements as the HTTP layer reads them: quoting for the SQL it writes, and the shape of a
request's one statement from its top-level tokens (its FORMAT clause, an INSERT's inline data,
the clauses a server refuses over HTTP, a KILL QUERY's condition and mode)."""

from __future__ import annotations

import re
from dataclasses import dataclass


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
class InlineData:
    """An INSERT's own data, split off as ParserInsertQuery does: the statement up to its
    FORMAT (or VALUES) clause, the input format, and where the data starts, in bytes."""

    statement_end: int
    input_format: str
    data_start: int


@dataclass(frozen=True)
class KillQuery:
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
    inline: InlineData | None
    kill_query: KillQuery | None = None


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
            inline = InlineData(match.start(), "Values", match.end())
            break
        if (
            len(top) > 3
            and kind in ("word", "quoted")
            and top[-2][:2] == ("word", "FORMAT")
            and top[-3][1] not in ("INTO", "TABLE", ".")
        ):
            name = token[1:-1] if kind == "quoted" else token
            inline = InlineData(top[-2][2].start(), name, _data_start(sql, match.end()))
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


def _kill_query_parts(sql: bytes, top: list[tuple[str, str, re.Match[bytes]]]) -> KillQuery | None:
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
    return KillQuery(condition, mode)


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
