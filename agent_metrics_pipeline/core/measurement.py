"""The model of what is measured: the source table and its columns, which calls count, the
bounds the checks apply, and the limits of one query (days, calls, agent shards).

The asset closes over a :class:`Measurement`, as it closes over its partitions: changing what is
measured is a change of the definitions, visible in the UI, not run configuration.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from agent_metrics_pipeline.core.errors import ConfigError

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The source columns the metrics read, in the order of the source table's DDL.
SOURCE_COLUMN_ROLES = ("call_id", "agent_id", "started_at", "duration_sec", "status")
DEFAULT_DATABASE = "default"


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
class UsualVolume:
    """When a day is partial: its calls, as stored, against the median of the same weekday in
    the ``weeks`` before it; below ``min_share`` of it the ``usual_volume`` check fails, and
    with ``hold_back`` the day is not published. ``quiet_days`` are known to be quiet."""

    min_share: float = 0.5
    weeks: int = 4
    hold_back: bool = False
    quiet_days: tuple[dt.date, ...] = ()
    # Set for one run by an operator (the run tag PUBLISH_PARTIAL_TAG): the day is published
    # whatever its volume.
    published_on_purpose: bool = False
    # Set for one run: the run's days that had not ended when it read them, partial by nature.
    running_days: tuple[dt.date, ...] = ()

    def reference_days(self, day: dt.date) -> list[dt.date]:
        """The same weekday in each of the weeks before ``day``, newest first."""
        return [day - dt.timedelta(weeks=week) for week in range(1, self.weeks + 1)]


@dataclass(frozen=True)
class Measurement:
    """What is measured: which calls of which table count, and the bounds the checks apply."""

    source: SourceTable = field(default_factory=SourceTable)
    statuses: tuple[str, ...] = ("Answered",)
    invalid_rows: InvalidRowsPolicy = InvalidRowsPolicy.FAIL
    max_call_length_sec: float = 86_400.0
    min_calls_per_agent: int = 1
    duplicate_calls: DuplicateCallsPolicy = DuplicateCallsPolicy.IGNORE
    read_final: ReadFinalPolicy = ReadFinalPolicy.AUTO
    spreadsheet_safety: SpreadsheetSafety = SpreadsheetSafety.WARN
    usual_volume: UsualVolume = field(default_factory=UsualVolume)

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

    def catalog_metadata(self) -> dict[str, str]:
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
            "usual_volume": (
                f"at least {self.usual_volume.min_share:g} of the median of the same weekday "
                f"over {self.usual_volume.weeks} weeks; "
                + ("held back below it" if self.usual_volume.hold_back else "flagged below it")
            ),
        }


# Ten million calls hold about 110 MB of quantile state: bounded, and still few queries.
DEFAULT_MAX_CALLS_PER_QUERY = 10_000_000
# Half a million agent-days are about 200 MB in the step at their peak: a day of 300 k agents
# is then a chunk of its own, while 2 000 agents share a query for the whole range.
DEFAULT_MAX_ROWS_PER_QUERY = 500_000
DEFAULT_MAX_DAYS_PER_QUERY = 30
# Each day is a branch of its chunk's query, up to 2.4 KB of SQL: 60 stay well within
# ClickHouse's default max_query_size (256 KiB).
MAX_DAYS_PER_QUERY = 60
# Past this a shard holds a thousandth of a day: a limit that still rejects it is not about size.
MAX_AGENT_SHARDS = 1024


@dataclass(frozen=True)
class Chunking:
    """The limits of one query: days, calls, rows (agent-days), and the fewest agent
    shards to use."""

    max_days_per_query: int = DEFAULT_MAX_DAYS_PER_QUERY
    max_calls_per_query: int = DEFAULT_MAX_CALLS_PER_QUERY
    max_rows_per_query: int = DEFAULT_MAX_ROWS_PER_QUERY
    agent_shards: int = 1

    def catalog_metadata(self) -> dict[str, int]:
        return {
            "max_days_per_query": self.max_days_per_query,
            "max_calls_per_query": self.max_calls_per_query,
            "max_rows_per_query": self.max_rows_per_query,
            "agent_shards": self.agent_shards,
        }
