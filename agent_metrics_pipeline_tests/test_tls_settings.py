"""The TLS settings of ClickHouse, checked at load: each file read and tried as clickhouse-connect
will use it, so a wrong one stops the definitions with one line naming the variable and its
fix, never the content of a key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_metrics_pipeline.clickhouse.resource import clickhouse_resource
from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline_tests.certificates import TestCertificates, make_certificates
from agent_metrics_pipeline_tests.helpers import REPO_ROOT

SECURE = {"CLICKHOUSE_HOST": "clickhouse.internal", "CLICKHOUSE_SECURE": "true"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def refusal(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(environ)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_the_tls_settings_are_read_into_the_settings(certificates):
    settings = Settings.from_env(
        {
            **SECURE,
            "CLICKHOUSE_CA_CERT": str(certificates.ca),
            "CLICKHOUSE_CLIENT_CERT": str(certificates.client_cert),
            "CLICKHOUSE_CLIENT_KEY": str(certificates.client_key),
            "CLICKHOUSE_SERVER_NAME": "clickhouse.example",
            "CLICKHOUSE_VERIFY": "true",
        }
    )
    tls = settings.clickhouse_tls
    assert (tls.ca_cert, tls.client_cert, tls.client_key) == (
        certificates.ca,
        certificates.client_cert,
        certificates.client_key,
    )
    assert tls.server_name == "clickhouse.example" and tls.verify


def test_the_resource_carries_the_tls_settings_to_the_client(certificates):
    settings = Settings.from_env(
        {
            **SECURE,
            "CLICKHOUSE_CLIENT_CERT": str(certificates.client_combined),
            "CLICKHOUSE_SERVER_NAME": "clickhouse.example",
            "CLICKHOUSE_VERIFY": "false",
        }
    )
    resource = clickhouse_resource(settings)
    assert (resource.secure, resource.verify, resource.ca_cert) == (True, False, None)
    assert (resource.client_cert, resource.client_key, resource.server_name) == (
        str(certificates.client_combined),
        None,
        "clickhouse.example",
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"CLICKHOUSE_CA_CERT": "{missing}"}, "CLICKHOUSE_CA_CERT='{missing}': no such file"),
        ({"CLICKHOUSE_CA_CERT": "{folder}"}, "is a folder"),
        ({"CLICKHOUSE_CA_CERT": "{client_key}"}, "holds no usable CA certificate"),
        (
            {"CLICKHOUSE_CLIENT_KEY": "{client_key}"},
            "CLICKHOUSE_CLIENT_KEY is set without CLICKHOUSE_CLIENT_CERT",
        ),
        ({"CLICKHOUSE_CLIENT_CERT": "{client_cert}"}, "holds no private key"),
        (
            {"CLICKHOUSE_CLIENT_CERT": "{client_cert}", "CLICKHOUSE_CLIENT_KEY": "{missing}"},
            "CLICKHOUSE_CLIENT_KEY='{missing}': no such file",
        ),
        (
            {
                "CLICKHOUSE_CLIENT_CERT": "{client_cert}",
                "CLICKHOUSE_CLIENT_KEY": "{client_encrypted_key}",
            },
            "CLICKHOUSE_CLIENT_KEY holds an encrypted private key, and clickhouse-connect takes "
            "no passphrase",
        ),
        (
            {"CLICKHOUSE_CLIENT_CERT": "{client_cert}", "CLICKHOUSE_CLIENT_KEY": "{server}"},
            "CLICKHOUSE_CLIENT_CERT and CLICKHOUSE_CLIENT_KEY cannot be used together",
        ),
        (
            {"CLICKHOUSE_CLIENT_CERT": "{client_combined}", "CLICKHOUSE_PASSWORD": "pw"},
            "CLICKHOUSE_PASSWORD and CLICKHOUSE_CLIENT_CERT are both set",
        ),
        ({"CLICKHOUSE_SERVER_NAME": "https://x/"}, "CLICKHOUSE_SERVER_NAME='https://x/' must be"),
        (
            {"CLICKHOUSE_SERVER_NAME": "clickhouse.internal:8443"},
            "CLICKHOUSE_SERVER_NAME='clickhouse.internal:8443' must be",
        ),
        ({"CLICKHOUSE_SERVER_NAME": "a..b"}, "CLICKHOUSE_SERVER_NAME='a..b' must be"),
        ({"CLICKHOUSE_VERIFY": "maybe"}, "CLICKHOUSE_VERIFY='maybe' must be true or false"),
    ],
)
def test_a_bad_tls_setting_is_refused_naming_its_variable(
    certificates, tmp_path, variables, expected
):
    paths = {
        "missing": str(tmp_path / "missing.pem"),
        "folder": str(tmp_path),
        **{name: str(getattr(certificates, name)) for name in TestCertificates.__annotations__},
    }
    environ = {**SECURE, **{name: value.format(**paths) for name, value in variables.items()}}
    message = refusal(environ)
    assert expected.format(**paths) in message
    assert "BEGIN" not in message, "never the content of a certificate or key"


def test_tls_settings_without_https_are_refused_naming_the_secure_setting(certificates):
    message = refusal(
        {
            "CLICKHOUSE_HOST": "clickhouse.internal",
            "CLICKHOUSE_CA_CERT": str(certificates.ca),
            "CLICKHOUSE_VERIFY": "false",
        }
    )
    assert message.startswith(
        "CLICKHOUSE_CA_CERT, CLICKHOUSE_VERIFY=false apply only over HTTPS, and "
        "CLICKHOUSE_SECURE is not true: set CLICKHOUSE_SECURE=true"
    )


def test_an_unreadable_key_is_refused_naming_its_variable(certificates, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    key = tmp_path / "unreadable.key"
    key.write_bytes(certificates.client_key.read_bytes())
    key.chmod(0)
    message = refusal(
        {
            **SECURE,
            "CLICKHOUSE_CLIENT_CERT": str(certificates.client_cert),
            "CLICKHOUSE_CLIENT_KEY": str(key),
        }
    )
    assert "CLICKHOUSE_CLIENT_KEY" in message and "permission denied" in message


def test_the_settings_check_stops_on_an_encrypted_key_with_one_line(
    certificates, project_env: dict[str, str]
):
    """What `make dev` runs first; an encrypted key is refused before OpenSSL could ask a
    terminal for its passphrase."""
    environ = {
        **project_env,
        **SECURE,
        "CLICKHOUSE_CLIENT_CERT": str(certificates.client_cert),
        "CLICKHOUSE_CLIENT_KEY": str(certificates.client_encrypted_key),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent_metrics_pipeline.core.settings"],
        cwd=REPO_ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Configuration error: CLICKHOUSE_CLIENT_KEY holds an encrypted")
    assert Path(certificates.client_encrypted_key).read_text().splitlines()[1] not in line
