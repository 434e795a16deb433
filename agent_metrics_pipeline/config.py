"""The environment contract, and the model of what is measured.

Definitions load through :func:`Settings.from_env`, so a typo in a variable fails at load time
with a message naming the variable, instead of deep inside a run at 02:00. Every default lives
once, on the dataclass field it belongs to: an unset variable leaves the field's default alone.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import math
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from agent_metrics_pipeline.chunking import MAX_AGENT_SHARDS, Chunking

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The source columns the metrics read, in the order of the source table's DDL.
SOURCE_COLUMN_ROLES = ("call_id", "agent_id", "started_at", "duration_sec", "status")
# Values of these variables are masked wherever an error message could carry them out.
SECRET_VARIABLES = ("CLICKHOUSE_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

DEFAULT_HOME = Path(".agent_metrics")
DEFAULT_CLICKHOUSE_PORT = 8123
DEFAULT_CONNECT_TIMEOUT_SEC = 10
# A day of 10 M calls aggregates in about a second; two minutes leave room for far bigger days.
DEFAULT_QUERY_TIMEOUT_SEC = 120
DEFAULT_S3_CONNECT_TIMEOUT_SEC = 10
DEFAULT_S3_READ_TIMEOUT_SEC = 30
DEFAULT_DATABASE = "default"
DEFAULT_S3_PREFIX = "agent_metrics"
# The package's extra that installs the embedded engine (chdb), and the module it brings.
EMBEDDED_ENGINE_EXTRA = "embedded"
EMBEDDED_ENGINE_MODULE = "chdb"


def embedded_engine_path(home: Path) -> Path:
    """Where the embedded ClickHouse engine keeps its data under ``AGENT_METRICS_HOME``."""
    return home / "clickhouse"


N = TypeVar("N", int, float)
E = TypeVar("E", bound=StrEnum)


class ConfigError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


class InvalidRowsPolicy(StrEnum):
    """What to do with source rows that cannot be measured (NULL agent, NULL/negative duration)."""

    FAIL = "fail"
    EXCLUDE = "exclude"


class DuplicateCallsPolicy(StrEnum):
    """What to do with counted rows that repeat a call id of the same day."""

    # Counting them takes a set of the day's call ids: about 4x the metrics query's time at
    # 10 M calls a day, so it is asked for, not paid by every run.
    IGNORE = "ignore"  # count every row, without looking for repeats
    WARN = "warn"  # count every row; the duplicate_calls check warns
    FAIL = "fail"  # the check fails the day: nothing is published
    COUNT_ONCE = "count_once"  # one row per call id counts; the check reports the rest


class ReadFinalPolicy(StrEnum):
    """When to read the source with FINAL (each row's latest version only)."""

    AUTO = "auto"  # when the server says the table keeps row versions (Replacing, Collapsing...)
    ALWAYS = "always"
    NEVER = "never"


class SpreadsheetSafety(StrEnum):
    """What to do with agent ids a spreadsheet would read as a formula."""

    WARN = "warn"  # published as they are; the spreadsheet_safe_agent_ids check warns
    ESCAPE = "escape"  # published with a leading apostrophe, as spreadsheets expect


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

    database: str = DEFAULT_DATABASE
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

    @property
    def column_names(self) -> tuple[str, ...]:
        """The source's column names, one per role, in the order of ``SOURCE_COLUMN_ROLES``."""
        return tuple(self.columns[role] for role in SOURCE_COLUMN_ROLES)

    @property
    def qualified_name(self) -> str:
        return f"`{self.database}`.`{self.table}`"


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


@dataclass(frozen=True)
class Measurement:
    """What is measured: which calls of which table count, and the bounds the checks apply.

    The asset closes over one of these, as it closes over its partitions: changing what is
    measured is a change of the definitions, visible in the UI, not run configuration.
    """

    source: SourceTable = field(default_factory=SourceTable)
    statuses: tuple[str, ...] = ("Answered",)
    invalid_rows: InvalidRowsPolicy = InvalidRowsPolicy.FAIL
    max_call_length_sec: float = 86_400.0
    min_calls_per_agent: int = 1
    duplicate_calls: DuplicateCallsPolicy = DuplicateCallsPolicy.IGNORE
    read_final: ReadFinalPolicy = ReadFinalPolicy.AUTO
    spreadsheet_safety: SpreadsheetSafety = SpreadsheetSafety.WARN

    def __post_init__(self) -> None:
        if not self.statuses:
            raise ConfigError("AGENT_METRICS_STATUSES must name at least one call status")
        # A status named twice counts once.
        object.__setattr__(self, "statuses", tuple(dict.fromkeys(self.statuses)))

    @property
    def fails_on_invalid_rows(self) -> bool:
        return self.invalid_rows is InvalidRowsPolicy.FAIL

    @property
    def escapes_formulas(self) -> bool:
        return self.spreadsheet_safety is SpreadsheetSafety.ESCAPE

    @property
    def counts_each_call_once(self) -> bool:
        return self.duplicate_calls is DuplicateCallsPolicy.COUNT_ONCE

    def describe(self) -> dict[str, str]:
        """Plain-text facts for the asset's definition metadata in the UI."""
        mapping = ", ".join(f"{role}={column}" for role, column in self.source.columns.items())
        return {
            "source_table": f"{self.source.database}.{self.source.table}",
            "source_columns": mapping,
            "counted_statuses": ", ".join(self.statuses),
            "invalid_rows_policy": self.invalid_rows.value,
            "max_call_length_sec": f"{self.max_call_length_sec:g}",
            "min_calls_per_agent": str(self.min_calls_per_agent),
            "duplicate_calls_policy": self.duplicate_calls.value,
            "read_final": self.read_final.value,
            "spreadsheet_safety": self.spreadsheet_safety.value,
        }


def _given(**values: Any) -> dict[str, Any]:
    """The values that were set, so unset variables fall back to the fields' own defaults."""
    return {name: value for name, value in values.items() if value is not None}


class _Environment:
    """Typed reads of environment variables; ``None`` when unset; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def flag(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={value!r} must be true or false")

    def number(self, name: str, kind: type[N], minimum: N, maximum: N | None = None) -> N | None:
        text = self.text(name)
        if text is None:
            return None
        try:
            value = kind(text)
            if not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            noun = "number" if kind is float else "whole number"
            raise ConfigError(f"{name}={text!r} must be a {noun}") from None
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

    def date(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} must be a date like 2025-01-01") from None
        return value

    def items(self, name: str) -> tuple[str, ...] | None:
        """A comma-separated list; set but holding no item is an error."""
        value = self.text(name)
        if value is None:
            return None
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if not items:
            raise ConfigError(f"{name} must name at least one value")
        return items

    def cron(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and len(value.split()) != 5:
            raise ConfigError(
                f"{name}={value!r} must be a cron schedule of five fields, as in '5 * * * *'"
            )
        return value

    def owners(self, name: str) -> tuple[str, ...] | None:
        """Dagster's owner format: an email address or ``team:NAME``."""
        owners = self.items(name)
        for owner in owners or ():
            if not (owner.startswith("team:") and len(owner) > 5) and "@" not in owner:
                raise ConfigError(
                    f"{name}: {owner!r} must be an email address or team:NAME, "
                    "as in 'team:data-platform,ana@example.com'"
                )
        return owners

    def choice(self, name: str, choices: type[E]) -> E | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            return choices(value.lower())
        except ValueError:
            names = [repr(choice.value) for choice in choices]
            allowed = " or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}"
            raise ConfigError(f"{name}={value.lower()!r} must be {allowed}") from None

    def s3_prefix(self, name: str) -> str | None:
        """A relative key prefix: surrounding slashes dropped, never climbing out of its root."""
        value = self.text(name)
        if value is None:
            return None
        prefix = value.strip("/")
        if not prefix or any(segment in ("", ".", "..") for segment in prefix.split("/")):
            raise ConfigError(
                f"{name}={value!r} must be a key prefix such as 'agent_metrics' or "
                "'exports/agents': not empty, no empty segment, no '.' or '..'"
            )
        return prefix


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
    gzip: bool = False
    rows_per_file: int | None = None
    # UTC, an hour after the daily schedule (02:00 UTC); never before it.
    freshness_deadline_hour: int = 3
    backfill_max_days_per_run: int | None = None
    chunking: Chunking = Chunking()
    schedule_lookback_days: int = 0
    observe_window_days: int = 30
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
        env = _Environment(os.environ if environ is None else environ)
        columns = env.text("AGENT_METRICS_SOURCE_COLUMNS")
        source = SourceTable(
            **_given(
                database=env.text("CLICKHOUSE_DATABASE"),
                table=env.text("AGENT_METRICS_SOURCE_TABLE"),
                columns=parse_column_mapping(columns) if columns else None,
            )
        )
        measurement = Measurement(
            source=source,
            **_given(
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
        )
        chunking = Chunking(
            **_given(
                max_days_per_query=env.number("AGENT_METRICS_MAX_DAYS_PER_QUERY", int, minimum=1),
                max_calls_per_query=env.number("AGENT_METRICS_MAX_CALLS_PER_QUERY", int, minimum=1),
                max_rows_per_query=env.number("AGENT_METRICS_MAX_ROWS_PER_QUERY", int, minimum=1),
                agent_shards=env.number(
                    "AGENT_METRICS_AGENT_SHARDS", int, minimum=1, maximum=MAX_AGENT_SHARDS
                ),
            )
        )
        home = env.text("AGENT_METRICS_HOME")
        timezone = env.text("AGENT_METRICS_TIMEZONE")
        ui_url = env.url("AGENT_METRICS_UI_URL")
        settings = cls(
            measurement=measurement,
            chunking=chunking,
            clickhouse_password_set=env.text("CLICKHOUSE_PASSWORD") is not None,
            secrets=tuple(value for name in SECRET_VARIABLES if (value := env.text(name))),
            **_given(
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
                max_retries=env.number("AGENT_METRICS_MAX_RETRIES", int, minimum=0),
                retry_delay_sec=env.number("AGENT_METRICS_RETRY_DELAY_SEC", int, minimum=0),
                alert_webhook_url=env.url("AGENT_METRICS_ALERT_WEBHOOK_URL"),
                ui_url=ui_url.rstrip("/") if ui_url else None,
                owners=env.owners("AGENT_METRICS_OWNERS"),
            ),
        )
        home_folders = [settings.home]
        if settings.embedded_clickhouse:
            home_folders.append(settings.embedded_clickhouse_path)
        if settings.s3_bucket is None:
            home_folders.append(settings.local_output_dir)
        _check_folders(*home_folders)
        return settings


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
