"""Named sessions that keep SET and USE statements between requests, and a request's session
from its parameters (``session_id``, ``session_timeout``, ``session_check``,
``close_session``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from clickhouse_stand_in.engine import Engine
from clickhouse_stand_in.request import Call

DEFAULT_SESSION_TIMEOUT = 60
MAX_SESSION_TIMEOUT = 3600


@dataclass
class Session:
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
        self._sessions: dict[tuple[str, str], Session] = {}

    @contextlib.contextmanager
    def held(self, call: Call) -> Iterator[Session | None]:
        """The session the request names, held for the request; None without a session_id."""
        if not call.has("session_id"):
            yield None
            return
        session_id = call.first("session_id")
        session = self._acquire(
            call.user.name,
            session_id,
            self._timeout(call),
            call.first("session_check") == "1",
        )
        try:
            yield session
        finally:
            self._release(
                call.user.name, session_id, session, call.first("close_session") in ("1", "true")
            )

    def _timeout(self, call: Call) -> int:
        if not call.has("session_timeout"):
            return DEFAULT_SESSION_TIMEOUT
        text = call.first("session_timeout")
        if not text.isdigit():
            raise self._engine.error(
                "INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{text}'"
            )
        if int(text) > MAX_SESSION_TIMEOUT:
            raise self._engine.error(
                "INVALID_SESSION_TIMEOUT",
                f"Session timeout '{text}' is larger than max_session_timeout: "
                f"{MAX_SESSION_TIMEOUT}. Maximum session timeout could be modified in "
                "configuration file.",
            )
        return int(text)

    def _acquire(self, user: str, session_id: str, timeout: int, check: bool) -> Session:
        with self._lock:
            now = time.monotonic()
            for key in [k for k, s in self._sessions.items() if not s.busy and s.expires < now]:
                del self._sessions[key]
            session = self._sessions.get((user, session_id))
            if session is None:
                if check:
                    raise self._engine.error("SESSION_NOT_FOUND", f"Session {session_id} not found")
                session = self._sessions[(user, session_id)] = Session()
            elif session.busy:
                raise self._engine.error(
                    "SESSION_IS_LOCKED", f"Session {session_id} is locked by a concurrent client"
                )
            session.busy = True
            session.timeout = timeout
            return session

    def _release(self, user: str, session_id: str, session: Session, close: bool) -> None:
        with self._lock:
            session.busy = False
            session.expires = time.monotonic() + session.timeout
            if close:
                self._sessions.pop((user, session_id), None)
