"""The HTTP request handler: its routes (``/ping`` and ``/`` for health checks, ``/`` with a
query, the server's answer to any other path), a query request from its body to its answer,
every error sent with its status, and one log line per request."""

from __future__ import annotations

import logging
import time
import traceback
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from clickhouse_stand_in.authentication import authenticate
from clickhouse_stand_in.errors import NOT_FOUND_HINT, ServerError
from clickhouse_stand_in.host import Host
from clickhouse_stand_in.query import process_query
from clickhouse_stand_in.reply import Reply
from clickhouse_stand_in.request import parse_call, read_body
from clickhouse_stand_in.tls import certificate_subjects

logger = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT = 30  # seconds an idle keep-alive connection stays open


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_TIMEOUT
    disable_nagle_algorithm = True  # small responses would otherwise wait for delayed ACKs
    server: Host

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own messages (malformed requests, timeouts) go to the debug log."""
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        started = time.monotonic()
        host = self.server
        engine = host.engine
        reply = Reply(self, host.display_name, engine.version)
        user_name = sql_head = "-"
        with host.tracking():
            try:
                url = urlsplit(self.path)
                if url.path == "/ping" or (
                    url.path == "/" and self.command == "GET" and not url.query
                ):
                    reply.plain(200, "Ok.\n")
                    return
                if url.path != "/":
                    read_body(self, engine)
                    reply.plain(
                        404,
                        f"There is no handle {url.path}{NOT_FOUND_HINT}",
                        "text/plain; charset=UTF-8",
                    )
                    return
                params = parse_qsl(url.query, keep_blank_values=True)
                body = read_body(self, engine)
                subjects = certificate_subjects(self.connection)
                user = authenticate(self.headers, params, host.users, engine, subjects)
                user_name = user.name
                call = parse_call(self, engine, user, params, body)
                sql_head = call.sql[:200].decode(errors="replace")
                process_query(host, call, reply)
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

    def _send_error(self, reply: Reply, error: ServerError) -> None:
        try:
            reply.error(error)
        except OSError:
            self.close_connection = True
