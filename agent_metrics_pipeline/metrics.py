"""The shape of the published metrics and the pure steps that produce and serialise it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

METRICS_SCHEMA = pl.Schema(
    {
        "agent_id": pl.String,
        "avg_call_length_sec": pl.Float64,
        "p90_call_length_sec": pl.Float64,
        "total_calls": pl.Int64,
        "date": pl.Date,
    }
)
METRIC_COLUMNS = tuple(METRICS_SCHEMA.names())


@dataclass(frozen=True)
class SourceQuality:
    """Counts of source calls the metrics could not measure, per day, from the same scan."""

    # date, null_agent_calls, null_duration_calls, negative_duration_calls, overlong_calls
    per_day: pl.DataFrame
    sample_call_ids: tuple[str, ...]
    sample_overlong_call_ids: tuple[str, ...] = ()

    @property
    def unmeasurable_calls(self) -> int:
        return int(
            self.per_day.select(
                pl.sum_horizontal(
                    "null_agent_calls", "null_duration_calls", "negative_duration_calls"
                ).sum()
            ).item()
        )


def shape_metrics(raw: pl.DataFrame) -> tuple[pl.DataFrame, SourceQuality]:
    """Split the query result into publishable metrics and source-quality counts.

    Rows of the NULL-agent group and agents left with no measurable call carry no metrics;
    their calls are counted in the quality summary instead.
    """
    is_null_agent = pl.col("agent_id").is_null()
    metrics = (
        raw.filter(~is_null_agent & (pl.col("total_calls") > 0))
        .select(pl.col(name).cast(dtype) for name, dtype in METRICS_SCHEMA.items())
        .sort("date", "agent_id")
    )
    per_day = (
        raw.group_by("date")
        .agg(
            pl.col("source_calls").filter(is_null_agent).sum().alias("null_agent_calls"),
            pl.col("null_duration_calls").filter(~is_null_agent).sum(),
            pl.col("negative_duration_calls").filter(~is_null_agent).sum(),
            pl.col("overlong_calls").sum(),
        )
        .cast({"date": pl.Date, pl.selectors.numeric(): pl.Int64})
        .sort("date")
    )

    def sample(column: str) -> tuple[str, ...]:
        return tuple(raw.select(pl.col(column).explode().drop_nulls().head(10)).to_series())

    return metrics, SourceQuality(
        per_day=per_day,
        sample_call_ids=sample("unmeasurable_call_ids"),
        sample_overlong_call_ids=sample("overlong_call_ids"),
    )


def metrics_for_day(metrics: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return metrics.filter(pl.col("date") == day)


def to_csv_bytes(frame: pl.DataFrame) -> bytes:
    """UTF-8 CSV with a header row and ``\\n`` line ends; an empty frame gives just the header."""
    return frame.select(METRIC_COLUMNS).write_csv(line_terminator="\n").encode("utf-8")


def from_csv_bytes(data: bytes) -> pl.DataFrame:
    """Read a published file back with the published types (agent ids stay strings)."""
    return pl.read_csv(data, schema=METRICS_SCHEMA)


def to_markdown(frame: pl.DataFrame) -> str:
    """A small Markdown table for run metadata in the UI."""
    if frame.is_empty():
        return "_no rows_"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])
