"""The embedded engine on one data folder, and the users of the users file with their
settings profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The engine's own connection type: chdb's public wrapper drops the last streaming chunk (which
# carries an empty result's schema) and rewords error texts.
from chdb import _chdb

from clickhouse_stand_in.errors import ServerError, engine_error
from clickhouse_stand_in.statements import quote_identifier, quote_string

DEFAULT_USERS: dict[str, dict[str, Any]] = {"default": {"password": "", "profile": {}}}


@dataclass(frozen=True)
class User:
    """A user of the users file: a password, or the client certificates they authenticate
    with, and the settings profile of their queries."""

    name: str
    password: str | None
    profile: dict[str, str]
    # CN:name, DNS:name or URI:name; a user with certificates has no password, as on a server.
    certificate_subjects: frozenset[str] = frozenset()


def load_users(users: Mapping[str, Mapping[str, Any]]) -> dict[str, User]:
    """Users from the users-file mapping; setting values are kept as the text a server reads.

    A user's ``ssl_certificates`` (``common_name`` and ``subject_alt_name`` lists, as in a
    server's users.xml) make them a certificate user."""
    loaded = {}
    for name, entry in users.items():
        profile = {key: _setting_text(value) for key, value in entry.get("profile", {}).items()}
        certificates = entry.get("ssl_certificates", {})
        subjects = frozenset(
            [f"CN:{common_name}" for common_name in certificates.get("common_name", [])]
            + list(certificates.get("subject_alt_name", []))
        )
        password = None if subjects else str(entry.get("password", ""))
        loaded[name] = User(name, password, profile, subjects)
    return loaded


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


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
