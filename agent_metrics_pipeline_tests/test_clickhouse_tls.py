"""ClickHouse over TLS, with real handshakes on loopback: the HTTP stand-in serves HTTPS with
certificates made at test time, and the pipeline, configured through its settings, publishes
the bytes it publishes over plain HTTP, with the CA setting and with mutual TLS. Each fault of
configuration fails the run with one message naming what to fix; none is retried.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource, clickhouse_resource
from agent_metrics_pipeline.clickhouse.tls import ClickHouseTlsError
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline_tests.certificates import (
    CLIENT_COMMON_NAME,
    OTHER_HOST,
    TestCertificates,
    make_certificates,
)
from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    STAND_IN_USERS,
    Bucket,
    S3Server,
    create_calls_table,
    failure_message,
    insert_calls,
    key_for,
    materialize,
    measuring,
    observe,
    random_calls,
    register_writer,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics
from clickhouse_stand_in import ServerProcess, TlsConfig, start_server

DAY = dt.date(2026, 11, 20)
# A read-only user the server authenticates by the client certificate's common name.
CERT_READER = "metrics_cert_reader"
TLS_USERS = {
    **STAND_IN_USERS,
    CERT_READER: {
        "ssl_certificates": {"common_name": [CLIENT_COMMON_NAME]},
        "profile": STAND_IN_USERS[READER]["profile"],
    },
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def _https_stand_in(
    folder: Path, certfile: Path, client_ca: Path, verification: str, maximum_version: str = "1.3"
):
    return start_server(
        folder / "data",
        TLS_USERS,
        folder / "server.log",
        tls=TlsConfig(certfile, certfile, client_ca, verification, maximum_version),
    )


@pytest.fixture(scope="module")
def https_stand_in(tmp_path_factory, certificates) -> Iterator[ServerProcess]:
    """HTTPS with the test CA's certificate for 127.0.0.1; client certificates are checked when
    sent (a server's verificationMode relaxed), so password and certificate users both log in."""
    folder = tmp_path_factory.mktemp("https-stand-in")
    server = _https_stand_in(folder, certificates.server, certificates.ca, "relaxed")
    yield server
    server.stop()


def server_settings(server: ServerProcess, **variables: str) -> dict[str, str]:
    return {"CLICKHOUSE_HOST": server.host, "CLICKHOUSE_PORT": str(server.port), **variables}


def resource_from(environ: dict[str, str]) -> ClickHouseResource:
    """The resource the settings make, its password given directly rather than through the
    process's environment, which the settings pass it by."""
    resource = clickhouse_resource(Settings.from_env(environ))
    fields = {name: getattr(resource, name) for name in type(resource).model_fields}
    return ClickHouseResource(**{**fields, "password": environ.get("CLICKHOUSE_PASSWORD", "")})


def with_ca(server: ServerProcess, certificates: TestCertificates, **variables: str) -> dict:
    """The settings of the password reader over HTTPS, trusting the test CA."""
    reader = {
        "CLICKHOUSE_SECURE": "true",
        "CLICKHOUSE_CA_CERT": str(certificates.ca),
        "CLICKHOUSE_USER": READER,
        "CLICKHOUSE_PASSWORD": READER_PASSWORD,
    }
    return server_settings(server, **{**reader, **variables})


def with_client_certificate(
    server: ServerProcess,
    certificates: TestCertificates,
    certificate: Path,
    user: str = CERT_READER,
    **variables: str,
) -> dict:
    """The settings of ``user`` logging in by ``certificate`` over HTTPS, trusting the test CA."""
    return server_settings(
        server,
        CLICKHOUSE_SECURE="true",
        CLICKHOUSE_CA_CERT=str(certificates.ca),
        CLICKHOUSE_USER=user,
        CLICKHOUSE_CLIENT_CERT=str(certificate),
        **variables,
    )


@pytest.fixture(scope="module")
def source(server_clickhouse, https_stand_in, certificates, stand_in) -> SourceTable:
    """The same calls in a table on the plain HTTP stand-in and on the HTTPS one."""
    if stand_in is None:
        pytest.skip("compares the HTTPS stand-in with the HTTP one")
    table = SourceTable(table=f"calls_tls_{uuid.uuid4().hex[:12]}")
    calls = random_calls(DAY - dt.timedelta(days=1), days=3, calls_per_day=200, seed=23)
    https_admin = resource_from(
        server_settings(
            https_stand_in, CLICKHOUSE_SECURE="true", CLICKHOUSE_CA_CERT=str(certificates.ca)
        )
    )
    https_reader = resource_from(with_ca(https_stand_in, certificates))
    register_writer(https_reader, https_admin)
    for engine in (server_clickhouse, https_reader):
        create_calls_table(engine, table)
        insert_calls(engine, table, calls)
    return table


def publish(clickhouse: ClickHouseResource, source: SourceTable, bucket: Bucket, **options):
    return materialize(clickhouse, measuring(source), bucket.io_manager(), str(DAY), **options)


@pytest.fixture(scope="module")
def plain_http_day(server_clickhouse, source, s3_server: S3Server) -> bytes:
    """The day as the pipeline publishes it over plain HTTP, checked against the oracle."""
    bucket = Bucket(f"plain-{uuid.uuid4().hex[:12]}", s3_server)
    s3_server.client().create_bucket(Bucket=bucket.name)
    publish(server_clickhouse, source, bucket)
    published = bucket.get(key_for(DAY))
    calls = random_calls(DAY - dt.timedelta(days=1), days=3, calls_per_day=200, seed=23)
    assert_csv_matches(published, expected_metrics(calls)[DAY], DAY)
    return published


def test_the_ca_setting_publishes_the_bytes_of_plain_http(
    https_stand_in, certificates, source, plain_http_day, bucket
):
    publish(resource_from(with_ca(https_stand_in, certificates)), source, bucket)
    assert bucket.get(key_for(DAY)) == plain_http_day


@pytest.mark.parametrize("key_apart", [True, False], ids=["key-file", "key-in-cert-file"])
def test_mutual_tls_publishes_the_bytes_of_plain_http_as_the_certificate_s_user(
    https_stand_in, certificates, source, plain_http_day, bucket, key_apart
):
    environ = (
        with_client_certificate(
            https_stand_in,
            certificates,
            certificates.client_cert,
            CLICKHOUSE_CLIENT_KEY=str(certificates.client_key),
        )
        if key_apart
        else with_client_certificate(https_stand_in, certificates, certificates.client_combined)
    )
    logged_before = https_stand_in.log_path.read_text().count(f" {CERT_READER} POST status=200")
    publish(resource_from(environ), source, bucket)
    assert bucket.get(key_for(DAY)) == plain_http_day
    logged = https_stand_in.log_path.read_text().count(f" {CERT_READER} POST status=200")
    assert logged > logged_before, "the server authenticated the certificate's user"


def assert_fails_naming(
    resource: ClickHouseResource, source: SourceTable, bucket: Bucket, *expected: str
) -> str:
    """The run fails once, at once (not retried), with a message holding ``expected``; a
    direct query raises the same permanent error."""
    result = publish(resource, source, bucket, raise_on_error=False)
    message = failure_message(result)
    for text in expected:
        assert text in message, message
    assert READER_PASSWORD not in message
    assert not bucket.keys()
    retries = [
        event
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert not retries, "a TLS fault of configuration is not retried"
    with pytest.raises(ClickHouseTlsError):
        resource.query_polars("SELECT 1")
    return message


def test_a_ca_that_did_not_issue_the_certificate_names_the_ca_setting(
    https_stand_in, certificates, source, bucket
):
    wrong = with_ca(https_stand_in, certificates, CLICKHOUSE_CA_CERT=str(certificates.other_ca))
    assert_fails_naming(
        resource_from(wrong), source, bucket, "does not trust", "CLICKHOUSE_CA_CERT"
    )
    without = with_ca(https_stand_in, certificates)
    del without["CLICKHOUSE_CA_CERT"]  # the default bundle lacks the test CA
    assert_fails_naming(resource_from(without), source, bucket, "CLICKHOUSE_CA_CERT")


def test_plain_http_to_the_https_port_names_the_secure_setting(
    https_stand_in, certificates, source, bucket
):
    plain = server_settings(
        https_stand_in, CLICKHOUSE_USER=READER, CLICKHOUSE_PASSWORD=READER_PASSWORD
    )
    assert_fails_naming(
        resource_from(plain), source, bucket, "port speaks TLS", "CLICKHOUSE_SECURE=true"
    )


def test_https_to_a_plain_http_port_names_the_secure_setting(
    stand_in, certificates, source, bucket
):
    environ = with_ca(stand_in, certificates)
    assert_fails_naming(
        resource_from(environ), source, bucket, "does not speak TLS", "CLICKHOUSE_SECURE=false"
    )


def test_a_wrong_server_name_names_the_server_name_setting(
    https_stand_in, certificates, source, bucket
):
    wrong = with_ca(https_stand_in, certificates, CLICKHOUSE_SERVER_NAME=OTHER_HOST)
    assert_fails_naming(
        resource_from(wrong), source, bucket, "another name", "CLICKHOUSE_SERVER_NAME"
    )


@pytest.fixture
def fault_server(tmp_path, certificates, request) -> Iterator[ServerProcess]:
    """A stand-in of its own, presenting the certificate the test asks for (or requiring
    client certificates)."""
    kind = request.param
    certfile = {
        "expired": certificates.expired_server,
        "other-host": certificates.other_host_server,
    }.get(kind, certificates.server)
    verification = "strict" if kind.startswith("client-certificate-required") else "relaxed"
    maximum_version = "1.2" if kind.endswith("tls-1.2") else "1.3"
    server = _https_stand_in(tmp_path, certfile, certificates.ca, verification, maximum_version)
    yield server
    server.stop()


@pytest.mark.parametrize("fault_server", ["expired"], indirect=True)
def test_an_expired_server_certificate_says_to_renew_it(fault_server, certificates, source, bucket):
    assert_fails_naming(
        resource_from(with_ca(fault_server, certificates)),
        source,
        bucket,
        "expired certificate",
        "renewed",
    )


@pytest.mark.parametrize("fault_server", ["other-host"], indirect=True)
def test_a_certificate_for_another_host_is_reached_with_the_server_name_setting(
    fault_server, certificates, source, bucket
):
    environ = with_ca(fault_server, certificates)
    assert_fails_naming(
        resource_from(environ), source, bucket, "another name", "CLICKHOUSE_SERVER_NAME"
    )
    named = resource_from({**environ, "CLICKHOUSE_SERVER_NAME": OTHER_HOST})
    assert named.query_polars("SELECT 1 AS one").item() == 1
    # Verification off checks neither the issuer nor the name.
    unchecked = {**environ, "CLICKHOUSE_VERIFY": "false"}
    del unchecked["CLICKHOUSE_CA_CERT"]
    assert resource_from(unchecked).query_polars("SELECT 1 AS one").item() == 1


@pytest.mark.parametrize(
    ("fault_server", "expected"),
    [
        ("client-certificate-required", "requires a client certificate"),
        ("client-certificate-required-tls-1.2", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ],
    indirect=["fault_server"],
)
def test_a_server_requiring_a_client_certificate_names_the_client_settings(
    fault_server, certificates, source, bucket, expected
):
    assert_fails_naming(
        resource_from(with_ca(fault_server, certificates)),
        source,
        bucket,
        expected,
        "CLICKHOUSE_CLIENT_CERT",
    )
    with_certificate = with_client_certificate(
        fault_server, certificates, certificates.client_combined
    )
    assert resource_from(with_certificate).query_polars("SELECT 1 AS one").item() == 1


@pytest.mark.parametrize("fault_server", ["client-certificate-required"], indirect=True)
def test_a_dropped_connection_to_a_server_requiring_a_client_certificate_is_told_apart(
    fault_server, certificates
):
    """A TLS 1.3 server refuses a missing certificate after the handshake; a reset can overtake
    its alert on the request, which then looks like a server gone away. The resource asks the
    port again, without a request, and gets the alert."""
    resource = resource_from(with_ca(fault_server, certificates))
    dropped = OperationalError("Error executing HTTP request")
    dropped.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    fault = resource.translate(dropped)
    assert isinstance(fault, ClickHouseTlsError)
    assert "requires a client certificate" in str(fault) and "CLICKHOUSE_CLIENT_CERT" in str(fault)


def test_a_dropped_connection_to_a_server_that_accepts_the_client_is_not_a_tls_fault(
    https_stand_in, certificates
):
    resource = resource_from(with_ca(https_stand_in, certificates))
    dropped = OperationalError("Error executing HTTP request")
    dropped.__cause__ = ConnectionResetError(104, "Connection reset by peer")
    assert not isinstance(resource.translate(dropped), ClickHouseTlsError)


def _verification_warnings(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if entry.level == logging.WARNING and "CLICKHOUSE_VERIFY=false" in entry.user_message
    ]


# urllib3 says it too, once per request; the pipeline's own warning is the one to find.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_turned_off_still_works_and_warns_in_every_run(
    https_stand_in, certificates, source, plain_http_day, bucket
):
    environ = with_ca(https_stand_in, certificates, CLICKHOUSE_VERIFY="false")
    del environ["CLICKHOUSE_CA_CERT"]  # nothing to check the certificate against
    resource = resource_from(environ)
    with dg.DagsterInstance.ephemeral() as instance:
        runs = [publish(resource, source, bucket, instance=instance) for _ in range(2)]
        warnings = [_verification_warnings(instance, run.run_id) for run in runs]
    assert bucket.get(key_for(DAY)) == plain_http_day
    for in_run in warnings:
        (warning,) = in_run
        assert "not checked" in warning and "CLICKHOUSE_CA_CERT" in warning
        assert READER_PASSWORD not in warning
    verified = resource_from(with_ca(https_stand_in, certificates))
    with dg.DagsterInstance.ephemeral() as instance:
        run = publish(verified, source, bucket, instance=instance)
        assert _verification_warnings(instance, run.run_id) == []


def test_a_certificate_the_user_does_not_list_names_the_certificate(
    https_stand_in, certificates, source, bucket
):
    """A password user logging in by certificate: the server refuses the credentials."""
    environ = with_client_certificate(
        https_stand_in, certificates, certificates.client_combined, user=READER
    )
    result = publish(resource_from(environ), source, bucket, raise_on_error=False)
    message = failure_message(result)
    assert "rejected the credentials" in message and "CLICKHOUSE_CLIENT_CERT" in message
    assert "<ssl_certificates>" in message


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verification_turned_off_warns_in_every_tick_of_the_observation(
    https_stand_in, certificates, source, capfd
):
    """A sensor's resources are set up for each tick; the tick's log (the console here, the
    tick's own log under the daemon) gets the warning."""
    environ = with_ca(https_stand_in, certificates, CLICKHOUSE_VERIFY="false")
    del environ["CLICKHOUSE_CA_CERT"]
    resource = resource_from(environ)
    defs = build_definitions(
        Settings(start_date=str(DAY - dt.timedelta(days=3)), measurement=measuring(source))
    )
    capfd.readouterr()
    with dg.DagsterInstance.ephemeral() as instance:
        cursor = None
        for _ in range(2):
            cursor = observe(defs, instance, resource, cursor).cursor
    logged = capfd.readouterr().err
    assert logged.count("WARNING - resource:clickhouse - CLICKHOUSE_VERIFY=false") == 2, logged


def test_a_client_certificate_from_another_ca_is_refused_naming_the_setting(
    https_stand_in, certificates, source, bucket
):
    environ = with_client_certificate(https_stand_in, certificates, certificates.foreign_client)
    assert_fails_naming(
        resource_from(environ),
        source,
        bucket,
        "refused the client certificate",
        "CLICKHOUSE_CLIENT_CERT",
    )
