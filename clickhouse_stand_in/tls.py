"""HTTPS for the stand-in: the server's certificate, client certificates checked against a CA
as a server's ``verificationMode`` asks (``relaxed``: when sent, ``strict``: always), the
handshake on the request's own thread, and the names a client certificate carries, which
certificate users are matched on."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A client that never finishes its handshake must not hold a request thread for long.
HANDSHAKE_TIMEOUT_SEC = 10
# How long a failed handshake's connection is drained for the client to read the alert.
DRAIN_TIMEOUT_SEC = 5
CLIENT_VERIFICATION_MODES = {"relaxed": ssl.CERT_OPTIONAL, "strict": ssl.CERT_REQUIRED}
# The newest protocol the server speaks, as a server's disableProtocols limits it.
MAXIMUM_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TlsConfig:
    """The server's certificate chain and key, and the CA its clients' certificates are
    checked against (none: client certificates are not asked for), and the newest protocol
    version it speaks."""

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None
    client_verification: str = "relaxed"
    maximum_version: str = "1.3"

    def arguments(self) -> list[str]:
        """The command line's options for this configuration."""
        options = ["--certfile", str(self.certfile), "--keyfile", str(self.keyfile)]
        options += ["--tls-max-version", self.maximum_version]
        if self.client_ca is not None:
            options += ["--client-ca", str(self.client_ca)]
            options += ["--client-verification", self.client_verification]
        return options

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        context.maximum_version = MAXIMUM_VERSIONS[self.maximum_version]
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = CLIENT_VERIFICATION_MODES[self.client_verification]
        return context


def handshake(connection: ssl.SSLSocket) -> ssl.SSLError | OSError | None:
    """Complete the server's side of the handshake; the error when it fails.

    A failed handshake's alert is in flight when the server gives up; closing at once, with the
    client's request unread, would send a reset that can overtake it, so the client would see
    "connection reset" instead of the alert. The connection is drained until the client closes.
    """
    connection.settimeout(HANDSHAKE_TIMEOUT_SEC)
    try:
        connection.do_handshake()
    except (ssl.SSLError, OSError) as error:
        _drain(connection)
        return error
    connection.settimeout(None)
    return None


def _drain(connection: ssl.SSLSocket) -> None:
    """Read what the client still sends, unencrypted (a failed TLS layer is gone), until it
    closes, or DRAIN_TIMEOUT_SEC in all: a client that keeps sending does not hold the thread."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SEC
    try:
        connection.shutdown(socket.SHUT_WR)  # drops the TLS layer: reads below are plain
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(65536):
                break
    except OSError:
        pass


def certificate_subjects(connection: Any) -> frozenset[str]:
    """The subjects of the client's certificate in the users file's spelling, as
    extractSSLCertificateSubjects reads them: ``CN:name`` and the alternative names ``DNS:...``
    and ``URI:...``. Empty over plain HTTP or without a verified client certificate."""
    if not isinstance(connection, ssl.SSLSocket):
        return frozenset()
    certificate = connection.getpeercert()
    if not certificate:
        return frozenset()
    subjects = {
        f"CN:{value}"
        for name in certificate.get("subject", ())
        for key, value in name
        if key == "commonName"
    }
    subjects |= {
        f"{kind}:{value}"
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "URI")
    }
    return frozenset(subjects)
