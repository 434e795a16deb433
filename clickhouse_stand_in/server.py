"""The stand-in's process: the threading HTTP(S) server over the engine with its list of
queries in flight, ``serve``, which runs it until told to stop, and ``start_server``, which
starts that process from Python and waits until it listens."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from clickhouse_stand_in.engine import Engine, User, load_users
from clickhouse_stand_in.handler import Handler
from clickhouse_stand_in.host import RunningQuery
from clickhouse_stand_in.sessions import Sessions
from clickhouse_stand_in.tls import TlsConfig, handshake

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"


class StandInServer(ThreadingHTTPServer):
    """The threading HTTP server; requests run in parallel, each on its own engine
    connection (the engine serves concurrent connections). Its handler sees it as a ``Host``.

    With a TLS context it serves HTTPS only, as a server's ``https_port`` does: each
    connection's handshake runs on its request's thread, so a slow or failing client never
    holds up accepting the next."""

    daemon_threads = True

    def __init__(
        self,
        port: int,
        engine: Engine,
        users: Mapping[str, User],
        statement_log: Path | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__((HOST, port), Handler)
        self.tls = tls
        self.engine = engine
        self.users = dict(users)
        self.sessions = Sessions(engine)
        self.display_name = socket.getfqdn()
        self._active = 0
        self._idle = threading.Condition()
        self._running: dict[str, RunningQuery] = {}
        self._running_lock = threading.Lock()
        self._statement_log = statement_log
        self._statement_log_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.tls is None:
            return connection, address
        return self.tls.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        ), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and (failed := handshake(request)):
            logger.info("%s TLS handshake failed: %s", client_address[0], failed)
            return
        super().finish_request(request, client_address)

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
            self._running[query_id] = RunningQuery(user, threading.get_native_id())
        try:
            yield
        finally:
            with self._running_lock:
                del self._running[query_id]

    def record_statement(
        self, user: str, statement: str, parameters: Mapping[str, str], query_id: str
    ) -> None:
        """One JSON line per statement, appended and flushed at once, so a reader of the log
        sees every statement that ran before it looked."""
        if self._statement_log is None:
            return
        line = json.dumps(
            {
                "user": user,
                "statement": statement,
                "parameters": dict(parameters),
                "query_id": query_id,
            }
        )
        with self._statement_log_lock, self._statement_log.open("a") as log:
            log.write(line + "\n")

    def running_queries(self) -> dict[str, RunningQuery]:
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
    statement_log: Path | None = None,
    tls: TlsConfig | None = None,
) -> None:
    """Open the engine, serve (HTTPS with ``tls``) until SIGTERM or SIGINT (or the end of
    stdin, when asked: a parent that dies closes the pipe), then close the engine. With
    ``statement_log``, every statement a request runs is appended to that file (see
    ``StandInServer.record_statement``)."""
    engine = Engine(data_dir)
    try:
        loaded = load_users(users)
        engine.check_profiles(loaded)
        server = StandInServer(
            port, engine, loaded, statement_log, tls.server_context() if tls else None
        )

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
        logger.info(
            "engine %s on %s, users %s, %s",
            *(engine.version, engine.path, sorted(loaded)),
            "HTTPS" if tls else "HTTP",
        )
        print(f"listening {host}:{bound_port}", flush=True)
        server.serve_forever(poll_interval=0.2)
        server.server_close()
        if not server.wait_idle(timeout=10):
            logger.warning("requests still running at exit")
    finally:
        engine.close()
        logger.info("engine closed")


@dataclass
class ServerProcess:
    """A running stand-in: where it listens, over HTTPS or not, and how to stop it."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    secure: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

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
    statement_log: Path | None = None,
    tls: TlsConfig | None = None,
) -> ServerProcess:
    """Start the stand-in in a process of its own and wait until it listens, over HTTPS
    with ``tls``.

    The users are written next to the log (``<log>.users.json``); the stand-in's log (one
    line per request) goes to ``log_path``; with ``statement_log``, each statement it runs is
    appended there as a JSON line. Raises RuntimeError with the log's tail if it
    does not come up within ``timeout`` seconds.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    users_path = log_path.with_name(log_path.name + ".users.json")
    users_path.write_text(json.dumps(users))
    module = __package__  # its __main__ runs main()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", module, "--data", str(data_dir), "--port", str(port)),
                *("--users", str(users_path), "--stop-on-stdin-eof"),
                *(("--statement-log", str(statement_log)) if statement_log else ()),
                *(tls.arguments() if tls else []),
            ],
            cwd=Path(__file__).resolve().parents[1],  # where the package imports from
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
    return ServerProcess(host.decode(), int(port_text), process, log_path, tls is not None)
