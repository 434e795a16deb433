"""The environment contract: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.measurement import (
    Chunking,
    DuplicateCallsPolicy,
    InvalidRowsPolicy,
    ReadFinalPolicy,
    SpreadsheetSafety,
)
from agent_metrics_pipeline.core.settings import ServerSideEncryption, Settings


def test_defaults_are_the_embedded_engine_and_a_local_folder():
    settings = Settings.from_env({})
    assert settings.clickhouse_host is None
    assert settings.s3_bucket is None
    assert settings.embedded_clickhouse_path == Path(".agent_metrics/clickhouse")
    assert settings.local_output_dir == Path(".agent_metrics/output")
    assert settings.timezone == "UTC"
    assert settings.measurement.statuses == ("Answered",)
    assert settings.measurement.invalid_rows is InvalidRowsPolicy.FAIL
    assert settings.s3_prefix == "agent_metrics"


def test_every_variable_is_read():
    settings = Settings.from_env(
        {
            "AGENT_METRICS_HOME": "/data/am",
            "AGENT_METRICS_TIMEZONE": "Europe/Paris",
            "AGENT_METRICS_START_DATE": "2024-03-01",
            "AGENT_METRICS_STATUSES": "Answered, Transferred ,",
            "AGENT_METRICS_SOURCE_TABLE": "cdr",
            "AGENT_METRICS_SOURCE_COLUMNS": "agent_id=agent, duration_sec=talk_time",
            "AGENT_METRICS_INVALID_ROWS": "EXCLUDE",
            "AGENT_METRICS_DUPLICATE_CALLS": "Count_Once",
            "AGENT_METRICS_READ_FINAL": "always",
            "AGENT_METRICS_SPREADSHEET_SAFETY": "escape",
            "AGENT_METRICS_MAX_CALL_LENGTH_SEC": "7200",
            "AGENT_METRICS_MIN_CALLS_PER_AGENT": "3",
            "AGENT_METRICS_GZIP": "true",
            "AGENT_METRICS_FRESHNESS_DEADLINE_HOUR": "6",
            "AGENT_METRICS_SCHEDULE_LOOKBACK_DAYS": "2",
            "AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN": "4",
            "AGENT_METRICS_MAX_DAYS_PER_QUERY": "7",
            "AGENT_METRICS_MAX_CALLS_PER_QUERY": "2000000",
            "AGENT_METRICS_MAX_ROWS_PER_QUERY": "100000",
            "AGENT_METRICS_AGENT_SHARDS": "16",
            "AGENT_METRICS_ROWS_PER_FILE": "1000000",
            "AGENT_METRICS_MAX_RETRIES": "5",
            "AGENT_METRICS_RETRY_DELAY_SEC": "7",
            "AGENT_METRICS_ALERT_WEBHOOK_URL": "https://hooks.example/T0KEN",
            "AGENT_METRICS_UI_URL": "https://dagster.example/",
            "AGENT_METRICS_OWNERS": "team:call-center, ana@example.com",
            "AWS_SECRET_ACCESS_KEY": "aws-secret",
            "CLICKHOUSE_HOST": "ch.internal",
            "CLICKHOUSE_PORT": "8443",
            "CLICKHOUSE_USER": "reader",
            "CLICKHOUSE_PASSWORD": "x",
            "CLICKHOUSE_DATABASE": "telephony",
            "CLICKHOUSE_SECURE": "1",
            "S3_BUCKET": "metrics",
            "S3_PREFIX": "/daily/agents/",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "S3_SERVER_SIDE_ENCRYPTION": "AWS:KMS",
            "S3_SSE_KMS_KEY_ID": "alias/agent-metrics",
            "S3_EXPECTED_BUCKET_OWNER": "123456789012",
            "AWS_REGION": "eu-west-3",
        }
    )
    assert settings.home == Path("/data/am")
    assert settings.timezone == "Europe/Paris"
    assert settings.start_date == "2024-03-01"
    assert settings.measurement.statuses == ("Answered", "Transferred")
    assert settings.measurement.source.database == "telephony"
    assert settings.measurement.source.table == "cdr"
    assert settings.measurement.source.column("agent_id") == "agent"
    assert settings.measurement.source.column("duration_sec") == "talk_time"
    assert settings.measurement.source.column("status") == "status"
    assert settings.measurement.invalid_rows is InvalidRowsPolicy.EXCLUDE
    assert settings.measurement.duplicate_calls is DuplicateCallsPolicy.COUNT_ONCE
    assert settings.measurement.read_final is ReadFinalPolicy.ALWAYS
    assert settings.measurement.spreadsheet_safety is SpreadsheetSafety.ESCAPE
    assert settings.measurement.max_call_length_sec == 7200.0
    assert settings.measurement.min_calls_per_agent == 3
    assert settings.gzip is True
    assert settings.freshness_deadline_hour == 6
    assert settings.schedule_lookback_days == 2
    assert settings.backfill_max_days_per_run == 4
    assert settings.chunking == Chunking(
        max_days_per_query=7,
        max_calls_per_query=2_000_000,
        max_rows_per_query=100_000,
        agent_shards=16,
    )
    assert settings.rows_per_file == 1_000_000
    assert (settings.max_retries, settings.retry_delay_sec) == (5, 7)
    assert settings.alert_webhook_url == "https://hooks.example/T0KEN"
    assert settings.ui_url == "https://dagster.example"
    assert settings.owners == ("team:call-center", "ana@example.com")
    assert set(settings.secrets) == {"x", "aws-secret"}
    assert "T0KEN" not in repr(settings) and "aws-secret" not in repr(settings)
    assert (settings.clickhouse_host, settings.clickhouse_port) == ("ch.internal", 8443)
    assert settings.clickhouse_user == "reader"
    assert settings.clickhouse_password_set and settings.clickhouse_secure
    assert settings.s3_bucket == "metrics"
    assert settings.s3_prefix == "daily/agents"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.aws_region == "eu-west-3"
    assert settings.s3_server_side_encryption is ServerSideEncryption.AWS_KMS
    assert settings.s3_sse_kms_key_id == "alias/agent-metrics"
    assert settings.s3_expected_bucket_owner == "123456789012"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENT_METRICS_TIMEZONE", "Mars/Olympus"),
        ("AGENT_METRICS_START_DATE", "01/02/2025"),
        ("AGENT_METRICS_STATUSES", " , "),
        ("AGENT_METRICS_SOURCE_TABLE", "calls; DROP TABLE calls"),
        ("AGENT_METRICS_SOURCE_COLUMNS", "agent_id=agent`x"),
        ("AGENT_METRICS_SOURCE_COLUMNS", "caller=agent"),
        ("AGENT_METRICS_INVALID_ROWS", "ignore"),
        ("AGENT_METRICS_DUPLICATE_CALLS", "drop"),
        ("AGENT_METRICS_READ_FINAL", "sometimes"),
        ("AGENT_METRICS_SPREADSHEET_SAFETY", "strip"),
        ("AGENT_METRICS_MAX_CALL_LENGTH_SEC", "-1"),
        ("AGENT_METRICS_MAX_CALL_LENGTH_SEC", "nan"),
        ("AGENT_METRICS_MAX_CALL_LENGTH_SEC", "inf"),
        ("AGENT_METRICS_MIN_CALLS_PER_AGENT", "zero"),
        ("CLICKHOUSE_PORT", "http"),
        ("CLICKHOUSE_DATABASE", "my-db"),
        ("CLICKHOUSE_SECURE", "maybe"),
        ("S3_PREFIX", "///"),
        ("S3_PREFIX", "../../escaped"),
        ("S3_PREFIX", "daily//agents"),
        ("S3_PREFIX", "daily/./agents"),
        ("CLICKHOUSE_CONNECT_TIMEOUT_SEC", "0"),
        ("CLICKHOUSE_QUERY_TIMEOUT_SEC", "soon"),
        ("AGENT_METRICS_FRESHNESS_DEADLINE_HOUR", "24"),
        ("AGENT_METRICS_FRESHNESS_DEADLINE_HOUR", "2"),
        ("AGENT_METRICS_OWNERS", "call-center"),
        ("AGENT_METRICS_OWNERS", "team:"),
        ("AGENT_METRICS_SCHEDULE_LOOKBACK_DAYS", "-1"),
        ("AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN", "0"),
        ("AGENT_METRICS_MAX_CALLS_PER_QUERY", "0"),
        ("AGENT_METRICS_MAX_DAYS_PER_QUERY", "61"),
        ("AGENT_METRICS_AGENT_SHARDS", "2048"),
        ("AGENT_METRICS_ROWS_PER_FILE", "some"),
        ("AGENT_METRICS_MAX_RETRIES", "many"),
        ("AGENT_METRICS_RETRY_DELAY_SEC", "-5"),
        ("AGENT_METRICS_ALERT_WEBHOOK_URL", "hooks.example/T0KEN"),
        ("S3_SERVER_SIDE_ENCRYPTION", "aes-256"),
        ("S3_EXPECTED_BUCKET_OWNER", "my-account"),
    ],
)
def test_bad_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable) as raised:
        Settings.from_env({variable: value})
    if variable == "AGENT_METRICS_ALERT_WEBHOOK_URL":
        assert value not in str(raised.value), "webhook URLs carry tokens"


@pytest.mark.parametrize("inside", ["", "clickhouse", "output"])
def test_a_home_that_is_a_file_is_refused_at_load(tmp_path, inside):
    home = tmp_path / "home"
    (home / inside).parent.mkdir(parents=True, exist_ok=True)
    (home / inside).write_text("not a folder")
    with pytest.raises(ConfigError, match="AGENT_METRICS_HOME") as raised:
        Settings.from_env({"AGENT_METRICS_HOME": str(home)})
    assert "not a folder" in str(raised.value)


def test_a_kms_key_alone_selects_aws_kms_and_refuses_aes256():
    settings = Settings.from_env({"S3_SSE_KMS_KEY_ID": "alias/agent-metrics"})
    assert settings.s3_server_side_encryption is ServerSideEncryption.AWS_KMS
    with pytest.raises(ConfigError, match="S3_SSE_KMS_KEY_ID"):
        Settings.from_env(
            {"S3_SSE_KMS_KEY_ID": "alias/agent-metrics", "S3_SERVER_SIDE_ENCRYPTION": "aes256"}
        )
