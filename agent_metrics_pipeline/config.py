"""The environment contract: every variable the pipeline reads, parsed and validated once.

Definitions load through :func:`Settings.from_env`, so a typo in a variable fails at load time
with a message naming the variable, instead of deep inside a run at 02:00.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SOURCE_COLUMN_ROLES = ("call_id", "agent_id", "started_at", "duration_sec", "status")
# Values of these variables are masked wherever an error message could carry them out.
SECRET_VARIABLES = ("CLICKHOUSE_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

DEFAULT_HOME = ".agent_metrics"
DEFAULT_START_DATE = "2025-01-01"
DEFAULT_STATUSES = ("Answered",)
DEFAULT_S3_PREFIX = "agent_metrics"
DEFAULT_MAX_CALL_LENGTH_SEC = 86_400.0
DEFAULT_FRESHNESS_DEADLINE_HOUR = 3  # UTC, an hour after the daily schedule
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY_SEC = 30
DEFAULT_UI_URL = "http://127.0.0.1:3000"


N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


class InvalidRowsPolicy(StrEnum):
    """What to do with source rows that cannot be measured (NULL agent, NULL/negative duration)."""

    FAIL = "fail"
    EXCLUDE = "exclude"


def validate_identifier(value: str, what: str) -> str:
    """Identifiers are spliced into SQL, so only plain names are accepted."""
    if not IDENTIFIER_PATTERN.match(value):
        raise ConfigError(
            f"{what} must be a plain identifier matching {IDENTIFIER_PATTERN.pattern}, "
            f"got {value!r}"
        )
    return value


def validate_timezone(name: str, what: str = "AGENT_METRICS_TIMEZONE") -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{what}={name!r} is not a known IANA timezone; use a name such as 'UTC' or "
            "'America/New_York'"
        ) from None
    return name


@dataclass(frozen=True)
class SourceTable:
    """Where the raw calls live and what their columns are called."""

    database: str = "default"
    table: str = "calls"
    columns: Mapping[str, str] = field(
        default_factory=lambda: {role: role for role in SOURCE_COLUMN_ROLES}
    )

    def __post_init__(self) -> None:
        validate_identifier(self.database, "the ClickHouse database (CLICKHOUSE_DATABASE)")
        validate_identifier(self.table, "the source table (AGENT_METRICS_SOURCE_TABLE)")
        missing = set(SOURCE_COLUMN_ROLES) - set(self.columns)
        if missing:
            raise ConfigError(f"source column mapping lacks {sorted(missing)}")
        for role, column in self.columns.items():
            validate_identifier(column, f"the {role} column (AGENT_METRICS_SOURCE_COLUMNS)")

    def column(self, role: str) -> str:
        return self.columns[role]


def parse_column_mapping(text: str) -> dict[str, str]:
    """Parse ``role=column,role=column`` overrides on top of the default column names."""
    columns = {role: role for role in SOURCE_COLUMN_ROLES}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, column = (piece.strip() for piece in item.partition("="))
        if not sep or role not in SOURCE_COLUMN_ROLES:
            raise ConfigError(
                f"AGENT_METRICS_SOURCE_COLUMNS entry {item!r} must look like ROLE=COLUMN with ROLE "
                f"one of {', '.join(SOURCE_COLUMN_ROLES)}"
            )
        columns[role] = column
    return columns


class _Environment:
    """Typed reads of environment variables; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def flag(self, name: str) -> bool:
        value = (self.text(name) or "false").lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={value!r} must be true or false")

    def number(self, name: str, default: N, minimum: N, maximum: N | None = None) -> N:
        """A whole number when ``default`` is an int, a decimal one when it is a float."""
        text = self.text(name)
        if text is None:
            return default
        try:
            value = type(default)(text)
            if not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            kind = "number" if isinstance(default, float) else "whole number"
            raise ConfigError(f"{name}={text!r} must be a {kind}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name}={text!r} must be {bounds}")
        return value

    def url(self, name: str) -> str | None:
        """Only the scheme is checked, and the value is never echoed: webhook URLs embed tokens."""
        value = self.text(name)
        if value is not None and not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must start with http:// or https://")
        return value


@dataclass(frozen=True)
class Settings:
    """Everything the definitions need from the environment, already validated."""

    home: Path = Path(DEFAULT_HOME)
    timezone: str = "UTC"
    start_date: str = DEFAULT_START_DATE
    statuses: tuple[str, ...] = DEFAULT_STATUSES
    source: SourceTable = field(default_factory=SourceTable)
    invalid_rows: InvalidRowsPolicy = InvalidRowsPolicy.FAIL
    max_call_length_sec: float = DEFAULT_MAX_CALL_LENGTH_SEC
    min_calls_per_agent: int = 1
    clickhouse_host: str | None = None
    clickhouse_port: int = 8123
    clickhouse_user: str = "default"
    clickhouse_password_set: bool = False
    clickhouse_secure: bool = False
    s3_bucket: str | None = None
    s3_prefix: str = DEFAULT_S3_PREFIX
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    gzip: bool = False
    freshness_deadline_hour: int = DEFAULT_FRESHNESS_DEADLINE_HOUR
    backfill_max_days_per_run: int | None = None
    schedule_lookback_days: int = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_delay_sec: int = DEFAULT_RETRY_DELAY_SEC
    alert_webhook_url: str | None = field(default=None, repr=False)
    ui_url: str = DEFAULT_UI_URL
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_host is None

    @property
    def embedded_clickhouse_path(self) -> Path:
        return self.home / "clickhouse"

    @property
    def local_output_dir(self) -> Path:
        return self.home / "output"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Environment(os.environ if environ is None else environ)

        start_date = env.text("AGENT_METRICS_START_DATE") or DEFAULT_START_DATE
        try:
            dt.date.fromisoformat(start_date)
        except ValueError:
            raise ConfigError(
                f"AGENT_METRICS_START_DATE={start_date!r} must be a date like 2025-01-01"
            ) from None

        statuses_text = env.text("AGENT_METRICS_STATUSES") or ",".join(DEFAULT_STATUSES)
        statuses = tuple(s.strip() for s in statuses_text.split(",") if s.strip())
        if not statuses:
            raise ConfigError("AGENT_METRICS_STATUSES must name at least one call status")

        policy_text = (env.text("AGENT_METRICS_INVALID_ROWS") or "fail").lower()
        try:
            policy = InvalidRowsPolicy(policy_text)
        except ValueError:
            raise ConfigError(
                f"AGENT_METRICS_INVALID_ROWS={policy_text!r} must be 'fail' or 'exclude'"
            ) from None

        prefix = (env.text("S3_PREFIX") or DEFAULT_S3_PREFIX).strip("/")
        if not prefix:
            raise ConfigError("S3_PREFIX must not be empty or only slashes")

        max_days = env.number("AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN", 0, minimum=1)
        return cls(
            home=Path(env.text("AGENT_METRICS_HOME") or DEFAULT_HOME),
            timezone=validate_timezone(env.text("AGENT_METRICS_TIMEZONE") or "UTC"),
            start_date=start_date,
            statuses=statuses,
            source=SourceTable(
                database=env.text("CLICKHOUSE_DATABASE") or "default",
                table=env.text("AGENT_METRICS_SOURCE_TABLE") or "calls",
                columns=parse_column_mapping(env.text("AGENT_METRICS_SOURCE_COLUMNS") or ""),
            ),
            invalid_rows=policy,
            max_call_length_sec=env.number(
                "AGENT_METRICS_MAX_CALL_LENGTH_SEC", DEFAULT_MAX_CALL_LENGTH_SEC, minimum=0.0
            ),
            min_calls_per_agent=env.number("AGENT_METRICS_MIN_CALLS_PER_AGENT", 1, minimum=1),
            clickhouse_host=env.text("CLICKHOUSE_HOST"),
            clickhouse_port=env.number("CLICKHOUSE_PORT", 8123, minimum=1, maximum=65535),
            clickhouse_user=env.text("CLICKHOUSE_USER") or "default",
            clickhouse_password_set=env.text("CLICKHOUSE_PASSWORD") is not None,
            clickhouse_secure=env.flag("CLICKHOUSE_SECURE"),
            s3_bucket=env.text("S3_BUCKET"),
            s3_prefix=prefix,
            s3_endpoint_url=env.text("S3_ENDPOINT_URL"),
            aws_region=env.text("AWS_REGION"),
            gzip=env.flag("AGENT_METRICS_GZIP"),
            freshness_deadline_hour=env.number(
                "AGENT_METRICS_FRESHNESS_DEADLINE_HOUR",
                DEFAULT_FRESHNESS_DEADLINE_HOUR,
                minimum=0,
                maximum=23,
            ),
            backfill_max_days_per_run=max_days or None,
            schedule_lookback_days=env.number("AGENT_METRICS_SCHEDULE_LOOKBACK_DAYS", 0, minimum=0),
            max_retries=env.number("AGENT_METRICS_MAX_RETRIES", DEFAULT_MAX_RETRIES, minimum=0),
            retry_delay_sec=env.number(
                "AGENT_METRICS_RETRY_DELAY_SEC", DEFAULT_RETRY_DELAY_SEC, minimum=0
            ),
            alert_webhook_url=env.url("AGENT_METRICS_ALERT_WEBHOOK_URL"),
            ui_url=(env.url("AGENT_METRICS_UI_URL") or DEFAULT_UI_URL).rstrip("/"),
            secrets=tuple(value for name in SECRET_VARIABLES if (value := env.text(name))),
        )
