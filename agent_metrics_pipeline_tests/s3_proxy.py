"""A loopback proxy in front of the tests' S3 server that records each request the pipeline
sends, and refuses the ones a test says a real bucket would refuse.

moto evaluates neither bucket policies nor S3's condition keys (a policy that requires
encryption, the expected bucket owner): the proxy answers those requests with S3's own
AccessDenied, so the pipeline meets the refusal over the wire, as it would on AWS.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
)
# Headers of one hop, not of the request: the proxy sets its own.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "host"}


@dataclass(frozen=True)
class SentRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case

    @property
    def writes_object(self) -> bool:
        return self.method == "PUT" and "?" not in self.path


class RecordingS3Proxy:
    """Forwards every request to ``upstream``; ``refuse`` decides which get AccessDenied."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.sent: list[SentRequest] = []
        self.refuse: Callable[[SentRequest], bool] = lambda request: False
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _forward(self) -> None:
                body = self._body()
                request = SentRequest(
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                )
                with proxy._lock:
                    proxy.sent.append(request)
                if proxy.refuse(request):
                    self._answer(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                try:
                    headers = {
                        name: value
                        for name, value in self.headers.items()
                        if name.lower() not in HOP_HEADERS
                    }
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    kept = {
                        name: value
                        for name, value in response.getheaders()
                        if name.lower() not in HOP_HEADERS | {"content-length"}
                    }
                    self._answer(response.status, kept, payload)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

    def requests_to(self, bucket: str) -> list[SentRequest]:
        with self._lock:
            return [
                request
                for request in self.sent
                if request.path == f"/{bucket}"
                or request.path.startswith((f"/{bucket}/", f"/{bucket}?"))
            ]

    @contextmanager
    def running(self) -> Iterator[RecordingS3Proxy]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
