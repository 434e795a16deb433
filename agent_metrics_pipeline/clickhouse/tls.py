"""What a failed TLS connection to a ClickHouse server means, and the setting that fixes it.

clickhouse-connect wraps the fault in its OperationalError, urllib3's errors in between; the
cause is found by walking that chain to the ``ssl`` error, and read from its reason and
verification code (OpenSSL's names), not from the wording around it. Each of these faults
stays until a person changes a setting or a certificate, so none is retried.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from agent_metrics_pipeline.clickhouse.errors import ClickHouseQueryError

# X509_V_ERR_*: the server's chain does not end at a CA the client trusts.
UNTRUSTED_CODES = {2, 18, 19, 20, 21}
EXPIRED_CODE = 10
NOT_YET_VALID_CODE = 9
# Hostname and IP address mismatch, found by OpenSSL.
NAME_MISMATCH_CODES = {62, 64}
# The server's alerts when it requires a client certificate and got none.
CERTIFICATE_REQUIRED_REASONS = {"TLSV13_ALERT_CERTIFICATE_REQUIRED"}
# A TLS 1.2 server's alert when it requires a client certificate and got none, and when it
# shares no protocol version or cipher with the client.
HANDSHAKE_FAILURE_REASONS = {"SSLV3_ALERT_HANDSHAKE_FAILURE"}
# The server's alerts when it refuses the client certificate it got.
CLIENT_CERTIFICATE_REFUSED_REASONS = {
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
}
# What the client reads when the port answers in plain HTTP to its TLS greeting.
NOT_TLS_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"}
# How long the checks of a failed connection may take, at most, and how long the second one
# waits for the server's alert once the handshake is done.
PROBE_TIMEOUT_SEC = 5
ALERT_WAIT_SEC = 1


class ClickHouseTlsError(ClickHouseQueryError):
    """TLS between the pipeline and the ClickHouse server failed for a reason of
    configuration: a setting or a certificate must change."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and the errors urllib3 keeps as ``reason``."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(linked, BaseException):
                pending.append(linked)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _closed_without_answer(error: BaseException) -> bool:
    return any(
        isinstance(found, (http.client.RemoteDisconnected, ConnectionResetError))
        for found in _chain(error)
    )


def _dropped(error: BaseException) -> bool:
    """Closed without an answer, in plain HTTP or in the middle of TLS."""
    return _closed_without_answer(error) or any(
        isinstance(found, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) for found in _chain(error)
    )


@dataclass(frozen=True)
class TlsEndpoint:
    """The server's port as the client reaches it, with the client's TLS settings: what a
    failed connection is checked against, to tell a TLS fault from a server going away."""

    host: str
    port: int
    timeout: float
    server_name: str | None = None
    ca_cert: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def _name(self) -> str:
        """The name the certificate is checked against; Python sends it in the greeting
        (SNI) unless it is an address, as the client does."""
        return self.server_name or self.host

    def speaks_tls(self) -> bool:
        """Whether the port completes a TLS handshake, or refuses this client as a TLS server
        does, whatever its certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
                with context.wrap_socket(raw, server_hostname=self._name):
                    return True
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return False
        except ssl.SSLError as error:
            return (error.reason or "") not in NOT_TLS_REASONS
        except OSError:
            return False

    def handshake_refusal(self) -> str | None:
        """The reason of the alert the server ends a handshake of the client's own settings
        with, or None. A TLS 1.3 server refuses a missing client certificate only after the
        handshake, and a reset can overtake that alert on the client's request: a handshake
        that sends no request, then one short read, gets the alert itself."""
        context = ssl.create_default_context(cafile=self.ca_cert)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
                with context.wrap_socket(raw, server_hostname=self._name) as connection:
                    connection.settimeout(ALERT_WAIT_SEC)
                    connection.recv(1)
        except ssl.SSLError as error:
            return error.reason
        except OSError:
            return None
        return None


def tls_error(
    error: BaseException, description: str, secure: bool, endpoint: TlsEndpoint
) -> ClickHouseTlsError | None:
    """``error`` as a TLS fault saying what to fix, or None when it is none.

    The port is probed only for a connection dropped without an answer: what an HTTPS port
    does with a plain HTTP request, a server refusing a client certificate sometimes does, and
    a server going away does too.
    """
    if not secure:
        if _closed_without_answer(error) and endpoint.speaks_tls():
            return ClickHouseTlsError(
                f"The {description} closed the connection without an answer, and its port "
                "speaks TLS (HTTPS): set CLICKHOUSE_SECURE=true (with CLICKHOUSE_CA_CERT if "
                "the server's certificate comes from your own CA)."
            )
        return None
    from urllib3.util.ssl_match_hostname import CertificateError

    for found in _chain(error):
        if isinstance(found, ssl.SSLCertVerificationError):
            return _verification_error(found, description, endpoint.server_name)
        if isinstance(found, CertificateError):  # urllib3's own check of the name
            return _name_mismatch(description, str(found), endpoint.server_name)
        if (
            isinstance(found, ssl.SSLError)
            and found.reason
            and (fault := _handshake_error(found.reason, description))
        ):
            return fault
    if _dropped(error) and (reason := endpoint.handshake_refusal()):
        return _handshake_error(reason, description)
    return None


def _verification_error(
    error: ssl.SSLCertVerificationError, description: str, server_name: str | None
) -> ClickHouseTlsError:
    reason = error.verify_message or error.reason or str(error)
    if error.verify_code in NAME_MISMATCH_CODES:
        return _name_mismatch(description, reason, server_name)
    if error.verify_code == EXPIRED_CODE:
        return ClickHouseTlsError(
            f"The {description} presented an expired certificate ({reason}): the server's "
            "certificate must be renewed, or the CA certificate it chains to in "
            "CLICKHOUSE_CA_CERT; if neither has expired, this machine's clock is wrong."
        )
    if error.verify_code == NOT_YET_VALID_CODE:
        return ClickHouseTlsError(
            f"The {description} presented a certificate that is not valid yet ({reason}): "
            "check the clocks of this machine and of the server."
        )
    fix = (
        "set CLICKHOUSE_CA_CERT to a PEM bundle holding the CA that issued it (unset, the "
        "system's CA store is used)"
    )
    if error.verify_code in UNTRUSTED_CODES:
        return ClickHouseTlsError(
            f"The {description} presented a certificate this client does not trust ({reason}): "
            f"{fix}."
        )
    return ClickHouseTlsError(
        f"The certificate of the {description} failed verification ({reason}): {fix}, and "
        "check the certificate the server presents."
    )


def _name_mismatch(description: str, reason: str, server_name: str | None) -> ClickHouseTlsError:
    if server_name is not None:
        return ClickHouseTlsError(
            f"The {description} presented a certificate for another name than "
            f"CLICKHOUSE_SERVER_NAME={server_name!r} ({reason}): set CLICKHOUSE_SERVER_NAME to "
            "a name the certificate carries, or unset it to check CLICKHOUSE_HOST."
        )
    return ClickHouseTlsError(
        f"The {description} presented a certificate for another name ({reason}): set "
        "CLICKHOUSE_HOST to a name the certificate carries, or, when the host must be "
        "reached by another name (an IP address, a tunnel), CLICKHOUSE_SERVER_NAME to the "
        "name to check instead."
    )


def _handshake_error(reason: str, description: str) -> ClickHouseTlsError | None:
    if reason in CERTIFICATE_REQUIRED_REASONS:
        return ClickHouseTlsError(
            f"The {description} requires a client certificate, and none was sent ({reason}): "
            "set CLICKHOUSE_CLIENT_CERT and CLICKHOUSE_CLIENT_KEY to the certificate and key "
            "of a user the server authenticates by certificate."
        )
    if reason in HANDSHAKE_FAILURE_REASONS:
        return ClickHouseTlsError(
            f"The {description} ended the TLS handshake ({reason}): when it requires a client "
            "certificate, set CLICKHOUSE_CLIENT_CERT and CLICKHOUSE_CLIENT_KEY to the "
            "certificate and key of a user the server authenticates by certificate; otherwise "
            "it shares no TLS version or cipher with this client."
        )
    if reason in CLIENT_CERTIFICATE_REFUSED_REASONS:
        return ClickHouseTlsError(
            f"The {description} refused the client certificate ({reason}): "
            "CLICKHOUSE_CLIENT_CERT must be issued by a CA the server trusts, and valid now."
        )
    if reason in NOT_TLS_REASONS:
        return ClickHouseTlsError(
            f"The {description} does not speak TLS on this port ({reason}): set "
            "CLICKHOUSE_SECURE=false, or CLICKHOUSE_PORT to the server's HTTPS port (8443 "
            "by default)."
        )
    return None
