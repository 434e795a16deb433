"""The shape of the published metrics and the pure steps that produce and serialise it."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent_metrics_pipeline.deferred import polars as pl

# The published columns and their types, as the catalog names them: the definitions read them
# when they load, which needs no polars (see the package's __init__).
METRIC_TYPES = {
    "agent_id": "string",
    "avg_call_length_sec": "float",
    "p90_call_length_sec": "float",
    "total_calls": "int",
    "date": "date",
}
METRIC_COLUMNS = tuple(METRIC_TYPES)
COLUMN_DESCRIPTIONS = {
    "agent_id": "The agent, as spelled in the source's agent column.",
    "avg_call_length_sec": "Mean length of the agent's counted calls that day, in seconds.",
    "p90_call_length_sec": "90th percentile of those lengths (linear interpolation), in seconds.",
    "total_calls": "Calls counted: a counted status and a measurable length.",
    "date": "The day the calls started on, in the partitions' timezone.",
}


# Per agent, the calls of each counted status, in the measurement's order.
CALLS_PER_COUNTED_STATUS = "calls_per_counted_status"
# Per agent, the calls of a status spelled like a counted one without being one.
UNCOUNTED_VARIANT_CALLS = "uncounted_variant_calls"
UNMEASURABLE_COUNTS = (
    "null_agent_calls",
    "null_duration_calls",
    "negative_duration_calls",
    "non_finite_duration_calls",
)
# Counted by the metrics query; the call ids behind them come from the samples query.
SAMPLED_COUNTS = (*UNMEASURABLE_COUNTS, "overlong_calls")
DUPLICATE_COUNT = "duplicate_calls"
QUALITY_COUNTS = (*SAMPLED_COUNTS, DUPLICATE_COUNT)
SAMPLE_IDS = (
    "null_call_ids",
    "negative_call_ids",
    "non_finite_call_ids",
    "overlong_call_ids",
    "duplicate_call_ids",
)
SAMPLE_SIZE = 5


@functools.cache
def metrics_schema() -> pl.Schema:
    """The published columns' Polars types."""
    polars_types = {"string": pl.String, "float": pl.Float64, "int": pl.Int64, "date": pl.Date}
    return pl.Schema({name: polars_types[kind] for name, kind in METRIC_TYPES.items()})


@functools.cache
def samples_schema() -> pl.Schema:
    return pl.Schema({"date": pl.Date, **{name: pl.List(pl.String) for name in SAMPLE_IDS}})


@dataclass(frozen=True)
class SourceQuality:
    """Source calls the metrics could not (or should not) measure, from the same scan.

    ``per_day`` has a ``date`` column and one column per name in ``QUALITY_COUNTS``;
    ``samples`` has a ``date`` column and one list of a few call ids per name in ``SAMPLE_IDS``,
    for the days that have any, once fetched (by the samples query, the duplicate samples
    query, or both).
    """

    per_day: pl.DataFrame
    samples: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=samples_schema()))

    @property
    def unmeasurable_calls(self) -> int:
        return int(self.per_day.select(pl.sum_horizontal(UNMEASURABLE_COUNTS).sum()).item())

    @staticmethod
    def counts_any(raw: pl.DataFrame, names: Sequence[str] = SAMPLED_COUNTS) -> bool:
        """Whether the metrics query counted any call of ``names`` (by default unmeasurable or
        overlong calls), whose ids are then worth fetching."""
        return bool(raw.select(pl.sum_horizontal(names).sum()).item())

    def with_samples(self, samples: pl.DataFrame) -> SourceQuality:
        """These counts with the call ids of a samples query (one row per day, some of the
        ``SAMPLE_IDS`` columns), added to those already fetched."""
        fetched = pl.concat([self.samples, samples], how="diagonal_relaxed")
        merged = fetched.group_by("date").agg(
            pl.col(name).drop_nulls().first() for name in SAMPLE_IDS
        )
        return replace(self, samples=merged.cast(samples_schema()).sort("date"))

    def for_day(self, day: dt.date) -> SourceQuality:
        """The counts and samples of one day."""
        return SourceQuality(
            per_day=self.per_day.filter(pl.col("date") == day),
            samples=self.samples.filter(pl.col("date") == day),
        )

    def sample_ids(self, name: str) -> list[str]:
        """Up to ``SAMPLE_SIZE`` call ids of kind ``name`` (one of ``SAMPLE_IDS``)."""
        ids = self.samples.get_column(name).explode().drop_nulls()
        return [str(call_id) for call_id in ids.head(SAMPLE_SIZE)]


def shape_metrics(raw: pl.DataFrame) -> tuple[pl.DataFrame, SourceQuality]:
    """Split the query result into publishable metrics and source-quality counts.

    The group of calls without an agent and agents left with no measurable call carry no
    metrics; their calls are counted in the quality summary instead.
    """
    metrics = (
        raw.filter(pl.col("agent_id").is_not_null() & (pl.col("total_calls") > 0))
        .select(pl.col(name).cast(dtype) for name, dtype in metrics_schema().items())
        .sort("date", "agent_id")
    )
    per_day = (
        raw.group_by("date")
        .agg(pl.col(QUALITY_COUNTS).sum())
        .cast({"date": pl.Date, pl.selectors.numeric(): pl.Int64})
        .sort("date")
    )
    return metrics, SourceQuality(per_day=per_day)


def counted_status_calls(raw: pl.DataFrame, statuses: Sequence[str]) -> pl.DataFrame:
    """Calls per day of each counted status (``date``, ``status``, ``calls``; statuses without
    a call left out), from the metrics query's per-agent counts, which follow ``statuses``."""
    per_agent = pl.concat(
        [
            raw.select(
                pl.col("date").cast(pl.Date),
                pl.lit(status).alias("status"),
                pl.col(CALLS_PER_COUNTED_STATUS).list.get(position).cast(pl.Int64).alias("calls"),
            )
            for position, status in enumerate(statuses)
        ]
    )
    per_day = per_agent.group_by("date", "status").agg(pl.col("calls").sum())
    return per_day.filter(pl.col("calls") > 0).sort("date", "status")


# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_ESCAPE = "'"


def formula_like(agent_ids: pl.Expr) -> pl.Expr:
    return pl.any_horizontal(agent_ids.str.starts_with(prefix) for prefix in FORMULA_PREFIXES)


def escape_formula_agent_ids(metrics: pl.DataFrame) -> pl.DataFrame:
    """Agent ids a spreadsheet would run as a formula, prefixed with an apostrophe (shown as
    text, hidden by the spreadsheet), in the contract's order again."""
    agent_id = pl.col("agent_id")
    return metrics.with_columns(
        pl.when(formula_like(agent_id))
        .then(FORMULA_ESCAPE + agent_id)
        .otherwise(agent_id)
        .alias("agent_id")
    ).sort("date", "agent_id")


def calls_per_status(statuses: pl.DataFrame, day: dt.date | None = None) -> dict[str, int]:
    """Calls per status on ``day``, or over all the run's days, from per-day counts such as
    :func:`counted_status_calls`'s."""
    if day is not None:
        statuses = statuses.filter(pl.col("date") == day)
    totals = statuses.group_by("status").agg(pl.col("calls").sum()).sort("status")
    return {status: int(calls) for status, calls in totals.iter_rows()}


def metrics_for_day(metrics: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return metrics.filter(pl.col("date") == day)


class StagedDays:
    """A run's publishable rows, one Parquet file per day in a local folder.

    The step reads a chunk of days at a time and stages it here, so its memory follows the
    chunk; the IO manager reads one day at a time once every day passed its checks.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.days: list[dt.date] = []

    def _path(self, day: dt.date) -> Path:
        return self.folder / f"{day.isoformat()}.parquet"

    def stage(self, metrics: pl.DataFrame, days: Sequence[dt.date]) -> None:
        """Each of ``days``'s rows of ``metrics``; a row of another day has no file to go to."""
        stray = set(metrics.get_column("date").unique().to_list()) - set(days)
        if stray:
            raise ValueError(
                f"Rows dated {sorted(map(str, stray))} are outside the days read "
                f"{days[0]}..{days[-1]}; refusing to drop them."
            )
        for day in days:
            metrics_for_day(metrics, day).write_parquet(self._path(day))
            self.days.append(day)

    def day(self, day: dt.date) -> pl.DataFrame:
        return pl.read_parquet(self._path(day))


def to_csv_bytes(frame: pl.DataFrame) -> bytes:
    """UTF-8 CSV with a header row and ``\\n`` line ends; an empty frame gives just the header."""
    return frame.select(METRIC_COLUMNS).write_csv(line_terminator="\n").encode("utf-8")


def from_csv_bytes(data: bytes) -> pl.DataFrame:
    """Read a published file back with the published types (agent ids stay strings)."""
    return pl.read_csv(data, schema=metrics_schema())


def to_markdown(frame: pl.DataFrame) -> str:
    """A small Markdown table for run metadata in the UI."""
    if frame.is_empty():
        return "_no rows_"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])
