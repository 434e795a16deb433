"""What the request handler needs from the server that hosts it: the engine, the users, the
sessions, the server's display name, its list of queries in flight and its statement log. The
handler sees its server only as a ``Host``, so the server imports the handler and never the
reverse."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from clickhouse_stand_in.engine import Engine, User
from clickhouse_stand_in.sessions import Sessions


@dataclass(frozen=True)
class RunningQuery:
    """A query in flight: its user, and the native id of the thread the engine runs it on."""

    user: str
    thread: int


class Host(Protocol):
    """The server, as its request handler uses it."""

    @property
    def engine(self) -> Engine: ...

    @property
    def users(self) -> Mapping[str, User]: ...

    @property
    def sessions(self) -> Sessions: ...

    @property
    def display_name(self) -> str: ...

    def running(self, query_id: str, user: str) -> AbstractContextManager[None]:
        """A query under its id for its duration; an id that is running already is refused."""

    def running_queries(self) -> Mapping[str, RunningQuery]:
        """The queries in flight by their ids."""

    def tracking(self) -> AbstractContextManager[None]:
        """A request counted as in flight for its duration."""

    def record_statement(
        self, user: str, statement: str, parameters: Mapping[str, str], query_id: str
    ) -> None:
        """A statement about to run, in the statement log when the server keeps one."""
