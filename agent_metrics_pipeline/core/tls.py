"""TLS to a ClickHouse server: the CA bundle the server's certificate is checked against, the
check itself, the client certificate and key of mutual TLS, and the name the server's
certificate must carry. Each file is read and tried at load, so a wrong path, a key that does
not match its certificate or an encrypted key stops the definitions from loading, naming the
variable, rather than every run at its first query.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from agent_metrics_pipeline.core.errors import ConfigError

# One label of a host name, as a certificate names it.
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _is_server_name(name: str) -> bool:
    """A host name or an IP address, without a port."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return all(HOST_LABEL.fullmatch(label) for label in name.removesuffix(".").split("."))
    return True


def _refuse_passphrase() -> bytes:
    """Called by OpenSSL only for an encrypted key, which clickhouse-connect cannot open."""
    raise ConfigError(
        "the client key is encrypted, and clickhouse-connect takes no passphrase: give "
        "CLICKHOUSE_CLIENT_KEY an unencrypted key (openssl pkey -in KEY -out PLAIN_KEY), "
        "readable only by the pipeline's user"
    )


def _read(variable: str, path: Path) -> str:
    """The file's text, or a ConfigError naming the variable; its content is never quoted."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{variable}={str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{variable}={str(path)!r} is a folder: name a PEM file") from None
    except PermissionError:
        raise ConfigError(
            f"{variable}={str(path)!r} cannot be read by this process (permission denied)"
        ) from None
    except OSError as error:
        raise ConfigError(f"{variable}={str(path)!r} cannot be read: {error.strerror}") from None


@dataclass(frozen=True)
class ClickHouseTls:
    """How the client checks the server it talks to over HTTPS, and how it shows who it is.

    Unset, the server's certificate is checked against the system's CA store, as OpenSSL finds
    it (what clickhouse-connect leaves to urllib3), and no client certificate is sent.
    """

    ca_cert: Path | None = None
    verify: bool = True
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    @property
    def variables_set(self) -> list[str]:
        """The variables that change what TLS does, as set."""
        given = {
            "CLICKHOUSE_CA_CERT": self.ca_cert is not None,
            "CLICKHOUSE_VERIFY=false": not self.verify,
            "CLICKHOUSE_CLIENT_CERT": self.client_cert is not None,
            "CLICKHOUSE_CLIENT_KEY": self.client_key is not None,
            "CLICKHOUSE_SERVER_NAME": self.server_name is not None,
        }
        return [name for name, is_set in given.items() if is_set]

    def check(self, secure: bool, password_set: bool) -> None:
        """Every file readable and usable as clickhouse-connect will use it; settings that
        cannot work together refused."""
        if self.variables_set and not secure:
            names = ", ".join(self.variables_set)
            verb = "applies" if len(self.variables_set) == 1 else "apply"
            raise ConfigError(
                f"{names} {verb} only over HTTPS, and CLICKHOUSE_SECURE is not true: set "
                "CLICKHOUSE_SECURE=true (and CLICKHOUSE_PORT to the server's HTTPS port, 8443 "
                f"by default), or unset {names}"
            )
        if self.server_name is not None and not _is_server_name(self.server_name):
            raise ConfigError(
                f"CLICKHOUSE_SERVER_NAME={self.server_name!r} must be a host name or an IP "
                "address, without a port, as in 'clickhouse.internal': the name the server's "
                "certificate carries"
            )
        if self.ca_cert is not None:
            self._check_ca_bundle(self.ca_cert)
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError(
                "CLICKHOUSE_CLIENT_KEY is set without CLICKHOUSE_CLIENT_CERT: set "
                "CLICKHOUSE_CLIENT_CERT to the client certificate the key belongs to"
            )
        if self.client_cert is not None:
            if password_set:
                raise ConfigError(
                    "CLICKHOUSE_PASSWORD and CLICKHOUSE_CLIENT_CERT are both set: with a client "
                    "certificate, CLICKHOUSE_USER is authenticated by it (a user with "
                    "<ssl_certificates> on the server) and no password is sent; unset "
                    "CLICKHOUSE_PASSWORD, or CLICKHOUSE_CLIENT_CERT and CLICKHOUSE_CLIENT_KEY"
                )
            self._check_client_pair(self.client_cert, self.client_key)

    @staticmethod
    def _check_ca_bundle(path: Path) -> None:
        _read("CLICKHOUSE_CA_CERT", path)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError as error:
            raise ConfigError(
                f"CLICKHOUSE_CA_CERT={str(path)!r} holds no usable CA certificate "
                f"({error.reason or error}): name a PEM bundle of the CA certificates that "
                "issue the server's certificate"
            ) from None

    @staticmethod
    def _check_client_pair(cert: Path, key: Path | None) -> None:
        cert_text = _read("CLICKHOUSE_CLIENT_CERT", cert)
        key_variable, key_text = (
            ("CLICKHOUSE_CLIENT_KEY", _read("CLICKHOUSE_CLIENT_KEY", key))
            if key is not None
            else ("CLICKHOUSE_CLIENT_CERT", cert_text)
        )
        if key is None and "PRIVATE KEY-----" not in cert_text:
            raise ConfigError(
                f"CLICKHOUSE_CLIENT_CERT={str(cert)!r} holds no private key: set "
                "CLICKHOUSE_CLIENT_KEY to the key's file, or put the key in the certificate's"
            )
        # "-----BEGIN ENCRYPTED PRIVATE KEY-----" (PKCS #8) or "Proc-Type: 4,ENCRYPTED" (PEM).
        if "ENCRYPTED" in key_text:
            raise ConfigError(
                f"{key_variable} holds an encrypted private key, and clickhouse-connect takes "
                "no passphrase: give it an unencrypted key (openssl pkey -in KEY -out "
                "PLAIN_KEY), readable only by the pipeline's user"
            )
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                cert, key, password=_refuse_passphrase
            )
        except ssl.SSLError as error:
            raise ConfigError(
                "CLICKHOUSE_CLIENT_CERT and CLICKHOUSE_CLIENT_KEY cannot be used together "
                f"({error.reason or error}): the certificate must come first, in PEM, and the "
                "key must be its own"
            ) from None
