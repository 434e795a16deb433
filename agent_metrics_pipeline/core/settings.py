"""The environment contract: every setting the definitions need, read and validated at once.

Definitions load through :func:`Settings.from_env`, so a typo in a variable fails at load time
with a message naming the variable, instead of deep inside a run at 02:00. Every default lives
once, on the dataclass field it belongs to: an unset variable leaves the field's default alone.

``python -m agent_metrics_pipeline.core.settings`` checks the environment alone: one line and a
non-zero exit on a bad setting, before a command that would start servers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent_metrics_pipeline.core.environment import Environment, given, validate_timezone
from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.measurement import (
    MAX_AGENT_SHARDS,
    MAX_DAYS_PER_QUERY,
    Chunking,
    DuplicateCallsPolicy,
    InvalidRowsPolicy,
    Measurement,
    ReadFinalPolicy,
    SourceTable,
    SpreadsheetSafety,
    UsualVolume,
    parse_column_mapping,
)
from agent_metrics_pipeline.core.names import DEFAULT_S3_PREFIX
from agent_metrics_pipeline.core.tls import ClickHouseTls

# Values of these variables are masked wherever an error message could carry them out.
SECRET_VARIABLES = ("CLICKHOUSE_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

DEFAULT_HOME = Path(".agent_metrics")
DEFAULT_CLICKHOUSE_PORT = 8123
DEFAULT_CONNECT_TIMEOUT_SEC = 10
# A day of 10 M calls aggregates in about a second; two minutes leave room for far bigger days.
DEFAULT_QUERY_TIMEOUT_SEC = 120
DEFAULT_S3_CONNECT_TIMEOUT_SEC = 10
DEFAULT_S3_READ_TIMEOUT_SEC = 30
# The package's extra that installs the embedded engine (chdb), and the module it brings.
EMBEDDED_ENGINE_EXTRA = "embedded"
EMBEDDED_ENGINE_MODULE = "chdb"


# An AWS account id, as S3 compares it with the bucket's owner.
ACCOUNT_ID = re.compile(r"\d{12}")


class ServerSideEncryption(StrEnum):
    """How S3 encrypts the objects the pipeline writes, as the request header names it."""

    AES256 = "AES256"
    AWS_KMS = "aws:kms"
    AWS_KMS_DSSE = "aws:kms:dsse"


def embedded_engine_path(home: Path) -> Path:
    """Where the embedded ClickHouse engine keeps its data under ``AGENT_METRICS_HOME``."""
    return home / "clickhouse"


def _check_folders(*folders: Path) -> None:
    """Folders the pipeline will create must not already exist as files."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"AGENT_METRICS_HOME: {folder} exists and is not a folder; point "
                "AGENT_METRICS_HOME at a folder (it is created if missing)"
            )


@dataclass(frozen=True)
class Settings:
    """Everything the definitions need from the environment, already validated."""

    home: Path = DEFAULT_HOME
    timezone: str = "UTC"
    start_date: str = "2025-01-01"
    measurement: Measurement = field(default_factory=Measurement)
    clickhouse_host: str | None = None
    clickhouse_port: int = DEFAULT_CLICKHOUSE_PORT
    clickhouse_user: str = "default"
    clickhouse_password_set: bool = False
    clickhouse_secure: bool = False
    clickhouse_tls: ClickHouseTls = ClickHouseTls()
    clickhouse_connect_timeout_sec: int = DEFAULT_CONNECT_TIMEOUT_SEC
    clickhouse_query_timeout_sec: int = DEFAULT_QUERY_TIMEOUT_SEC
    s3_bucket: str | None = None
    s3_prefix: str = DEFAULT_S3_PREFIX
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    s3_connect_timeout_sec: int = DEFAULT_S3_CONNECT_TIMEOUT_SEC
    s3_read_timeout_sec: int = DEFAULT_S3_READ_TIMEOUT_SEC
    # Retries at the write, with backoff: the step is not retried for S3 faults.
    s3_max_retries: int = 4
    # Unset, S3 applies the bucket's default encryption.
    s3_server_side_encryption: ServerSideEncryption | None = None
    s3_sse_kms_key_id: str | None = None
    s3_expected_bucket_owner: str | None = None
    gzip: bool = False
    rows_per_file: int | None = None
    # UTC, an hour after the daily schedule (02:00 UTC); never before it.
    freshness_deadline_hour: int = 3
    backfill_max_days_per_run: int | None = None
    chunking: Chunking = Chunking()
    schedule_lookback_days: int = 0
    observe_window_days: int = 30
    # Today as a partition, published as partial and refreshed at most this often.
    publish_today: bool = False
    today_refresh_minutes: int = 60
    observe_cron: str = "5 * * * *"
    max_retries: int = 3
    retry_delay_sec: int = 30
    alert_webhook_url: str | None = field(default=None, repr=False)
    ui_url: str = "http://127.0.0.1:3000"
    owners: tuple[str, ...] = ("team:data-platform",)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_host is None

    @property
    def embedded_clickhouse_path(self) -> Path:
        return embedded_engine_path(self.home)

    @property
    def local_output_dir(self) -> Path:
        return self.home / "output"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Environment(os.environ if environ is None else environ)
        columns = env.text("AGENT_METRICS_SOURCE_COLUMNS")
        source = SourceTable(
            **given(
                database=env.text("CLICKHOUSE_DATABASE"),
                table=env.text("AGENT_METRICS_SOURCE_TABLE"),
                columns=parse_column_mapping(columns) if columns else None,
            )
        )
        measurement = Measurement(
            source=source,
            **given(
                statuses=env.items("AGENT_METRICS_STATUSES"),
                invalid_rows=env.choice("AGENT_METRICS_INVALID_ROWS", InvalidRowsPolicy),
                max_call_length_sec=env.number(
                    "AGENT_METRICS_MAX_CALL_LENGTH_SEC", float, minimum=0.0
                ),
                min_calls_per_agent=env.number("AGENT_METRICS_MIN_CALLS_PER_AGENT", int, minimum=1),
                duplicate_calls=env.choice("AGENT_METRICS_DUPLICATE_CALLS", DuplicateCallsPolicy),
                read_final=env.choice("AGENT_METRICS_READ_FINAL", ReadFinalPolicy),
                spreadsheet_safety=env.choice(
                    "AGENT_METRICS_SPREADSHEET_SAFETY", SpreadsheetSafety
                ),
            ),
            usual_volume=UsualVolume(
                **given(
                    min_share=env.number(
                        "AGENT_METRICS_USUAL_VOLUME_MIN_SHARE", float, minimum=0.0, maximum=1.0
                    ),
                    weeks=env.number("AGENT_METRICS_USUAL_VOLUME_WEEKS", int, minimum=2),
                    hold_back=env.flag("AGENT_METRICS_HOLD_BACK_PARTIAL_DAYS"),
                    quiet_days=env.dates("AGENT_METRICS_QUIET_DAYS"),
                )
            ),
        )
        chunking = Chunking(
            **given(
                max_days_per_query=env.number(
                    "AGENT_METRICS_MAX_DAYS_PER_QUERY",
                    int,
                    minimum=1,
                    maximum=MAX_DAYS_PER_QUERY,
                ),
                max_calls_per_query=env.number("AGENT_METRICS_MAX_CALLS_PER_QUERY", int, minimum=1),
                max_rows_per_query=env.number("AGENT_METRICS_MAX_ROWS_PER_QUERY", int, minimum=1),
                agent_shards=env.number(
                    "AGENT_METRICS_AGENT_SHARDS", int, minimum=1, maximum=MAX_AGENT_SHARDS
                ),
            )
        )
        ca_cert, client_cert, client_key = (
            env.text("CLICKHOUSE_CA_CERT"),
            env.text("CLICKHOUSE_CLIENT_CERT"),
            env.text("CLICKHOUSE_CLIENT_KEY"),
        )
        clickhouse_tls = ClickHouseTls(
            **given(
                ca_cert=Path(ca_cert) if ca_cert else None,
                verify=env.flag("CLICKHOUSE_VERIFY"),
                client_cert=Path(client_cert) if client_cert else None,
                client_key=Path(client_key) if client_key else None,
                server_name=env.text("CLICKHOUSE_SERVER_NAME"),
            )
        )
        encryption = env.choice("S3_SERVER_SIDE_ENCRYPTION", ServerSideEncryption)
        kms_key = env.text("S3_SSE_KMS_KEY_ID")
        if kms_key is not None and encryption is None:
            encryption = ServerSideEncryption.AWS_KMS  # a key says which mode
        home = env.text("AGENT_METRICS_HOME")
        timezone = env.text("AGENT_METRICS_TIMEZONE")
        ui_url = env.url("AGENT_METRICS_UI_URL")
        settings = cls(
            measurement=measurement,
            chunking=chunking,
            clickhouse_tls=clickhouse_tls,
            clickhouse_password_set=env.text("CLICKHOUSE_PASSWORD") is not None,
            secrets=tuple(value for name in SECRET_VARIABLES if (value := env.text(name))),
            **given(
                home=Path(home) if home else None,
                timezone=validate_timezone(timezone) if timezone else None,
                start_date=env.date("AGENT_METRICS_START_DATE"),
                clickhouse_host=env.text("CLICKHOUSE_HOST"),
                clickhouse_port=env.number("CLICKHOUSE_PORT", int, minimum=1, maximum=65535),
                clickhouse_user=env.text("CLICKHOUSE_USER"),
                clickhouse_secure=env.flag("CLICKHOUSE_SECURE"),
                clickhouse_connect_timeout_sec=env.number(
                    "CLICKHOUSE_CONNECT_TIMEOUT_SEC", int, minimum=1
                ),
                clickhouse_query_timeout_sec=env.number(
                    "CLICKHOUSE_QUERY_TIMEOUT_SEC", int, minimum=1
                ),
                s3_bucket=env.text("S3_BUCKET"),
                s3_prefix=env.s3_prefix("S3_PREFIX"),
                s3_endpoint_url=env.text("S3_ENDPOINT_URL"),
                aws_region=env.text("AWS_REGION"),
                s3_connect_timeout_sec=env.number("S3_CONNECT_TIMEOUT_SEC", int, minimum=1),
                s3_read_timeout_sec=env.number("S3_READ_TIMEOUT_SEC", int, minimum=1),
                s3_max_retries=env.number("S3_MAX_RETRIES", int, minimum=0),
                s3_server_side_encryption=encryption,
                s3_sse_kms_key_id=kms_key,
                s3_expected_bucket_owner=env.text("S3_EXPECTED_BUCKET_OWNER"),
                gzip=env.flag("AGENT_METRICS_GZIP"),
                rows_per_file=env.number("AGENT_METRICS_ROWS_PER_FILE", int, minimum=1),
                freshness_deadline_hour=env.number(
                    "AGENT_METRICS_FRESHNESS_DEADLINE_HOUR", int, minimum=3, maximum=23
                ),
                backfill_max_days_per_run=env.number(
                    "AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN", int, minimum=1
                ),
                schedule_lookback_days=env.number(
                    "AGENT_METRICS_SCHEDULE_LOOKBACK_DAYS", int, minimum=0
                ),
                observe_window_days=env.number("AGENT_METRICS_OBSERVE_WINDOW_DAYS", int, minimum=1),
                observe_cron=env.cron("AGENT_METRICS_OBSERVE_CRON"),
                publish_today=env.flag("AGENT_METRICS_PUBLISH_TODAY"),
                today_refresh_minutes=env.number(
                    "AGENT_METRICS_TODAY_REFRESH_MINUTES", int, minimum=1
                ),
                max_retries=env.number("AGENT_METRICS_MAX_RETRIES", int, minimum=0),
                retry_delay_sec=env.number("AGENT_METRICS_RETRY_DELAY_SEC", int, minimum=0),
                alert_webhook_url=env.url("AGENT_METRICS_ALERT_WEBHOOK_URL"),
                ui_url=ui_url.rstrip("/") if ui_url else None,
                owners=env.owners("AGENT_METRICS_OWNERS"),
            ),
        )
        _check_encryption(settings)
        clickhouse_tls.check(settings.clickhouse_secure, settings.clickhouse_password_set)
        home_folders = [settings.home]
        if settings.embedded_clickhouse:
            home_folders.append(settings.embedded_clickhouse_path)
        if settings.s3_bucket is None:
            home_folders.append(settings.local_output_dir)
        _check_folders(*home_folders)
        return settings


def _check_encryption(settings: Settings) -> None:
    """A KMS key goes with a KMS mode, and a bucket owner is an account id: S3 would refuse
    every write otherwise."""
    if (
        settings.s3_sse_kms_key_id
        and settings.s3_server_side_encryption is ServerSideEncryption.AES256
    ):
        raise ConfigError(
            "S3_SSE_KMS_KEY_ID is set, but S3_SERVER_SIDE_ENCRYPTION is AES256, which uses no "
            "KMS key: set S3_SERVER_SIDE_ENCRYPTION to 'aws:kms' or 'aws:kms:dsse' to encrypt "
            "with that key, or unset S3_SSE_KMS_KEY_ID"
        )
    owner = settings.s3_expected_bucket_owner
    if owner is not None and not ACCOUNT_ID.fullmatch(owner):
        raise ConfigError(
            f"S3_EXPECTED_BUCKET_OWNER={owner!r} must be the 12-digit AWS account id that owns "
            "the bucket, as in '123456789012'"
        )


def require_clickhouse_engine(settings: Settings) -> Settings:
    """Fail at load, not in the first run, when the embedded engine is asked for but absent.

    A production install leaves the engine out (about 530 MB); without CLICKHOUSE_HOST the
    definitions would still pick it. Only the module's presence is looked up: importing it
    costs seconds.
    """
    if settings.embedded_clickhouse and importlib.util.find_spec(EMBEDDED_ENGINE_MODULE) is None:
        raise ConfigError(
            "CLICKHOUSE_HOST is unset, which selects the embedded ClickHouse engine, but it is "
            f"not installed: set CLICKHOUSE_HOST to your ClickHouse server, or install the "
            f"package with its '{EMBEDDED_ENGINE_EXTRA}' extra "
            f"(pip install 'agent-metrics-pipeline[{EMBEDDED_ENGINE_EXTRA}]', "
            f"uv sync --extra {EMBEDDED_ENGINE_EXTRA})"
        )
    return settings


def main() -> int:
    """Check the environment's settings: one line naming what to fix, and exit 2, when one is
    wrong."""
    try:
        require_clickhouse_engine(Settings.from_env())
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
