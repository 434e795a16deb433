"""Certificates made at test time (trustme): a CA of the tests' own, the server certificates a
ClickHouse server may present (right, expired, for another host), a client certificate of
mutual TLS, and another CA, which issued none of them but a client certificate of the same
name. Nothing is kept between test sessions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

# The name the client certificate carries, which a certificate user's <ssl_certificates> lists.
CLIENT_COMMON_NAME = "metrics-cert-reader"
# The only name the wrong-host certificate carries.
OTHER_HOST = "clickhouse.elsewhere.test"


@dataclass(frozen=True)
class TestCertificates:
    """PEM files: each server certificate holds its chain and its key."""

    __test__ = False  # not a test class, whatever its name

    ca: Path
    other_ca: Path
    server: Path
    expired_server: Path
    other_host_server: Path
    client_cert: Path
    client_key: Path
    # The client certificate and its key in one file.
    client_combined: Path
    client_encrypted_key: Path
    # The same name from the other CA, with its key: a client certificate the server refuses.
    foreign_client: Path


def make_certificates(folder: Path) -> TestCertificates:
    """A CA and the certificates it issues, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    expired = ca.issue_cert(
        "127.0.0.1",
        "localhost",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 1, 1, tzinfo=dt.UTC),
    )
    other_host = ca.issue_cert(OTHER_HOST)
    client = ca.issue_cert(CLIENT_COMMON_NAME, common_name=CLIENT_COMMON_NAME)
    foreign = other_ca.issue_cert(CLIENT_COMMON_NAME, common_name=CLIENT_COMMON_NAME)

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    key = client.private_key_pem.bytes()
    cert = b"".join(blob.bytes() for blob in client.cert_chain_pems)
    return TestCertificates(
        ca=write("ca.pem", ca.cert_pem.bytes()),
        other_ca=write("other-ca.pem", other_ca.cert_pem.bytes()),
        server=write("server.pem", server.private_key_and_cert_chain_pem.bytes()),
        expired_server=write("expired.pem", expired.private_key_and_cert_chain_pem.bytes()),
        other_host_server=write(
            "other-host.pem", other_host.private_key_and_cert_chain_pem.bytes()
        ),
        client_cert=write("client.crt", cert),
        client_key=write("client.key", key),
        client_combined=write("client.pem", cert + key),
        client_encrypted_key=write("client-encrypted.key", _encrypted(key)),
        foreign_client=write("foreign-client.pem", foreign.private_key_and_cert_chain_pem.bytes()),
    )


def _encrypted(key_pem: bytes) -> bytes:
    """The key as PKCS #8 under a passphrase, as `openssl pkey -aes256` writes it."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
