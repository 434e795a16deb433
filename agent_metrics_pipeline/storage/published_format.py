"""The published table: its columns and types, one day's rows, and the CSV bytes of a day.

Every day of a run is published on its own, so rows dated outside the run's days have nowhere
to go: they are refused wherever they could be dropped (``core.partitions.refuse_rows_outside``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection

import dagster as dg

from agent_metrics_pipeline.core.deferred import polars as pl

# The published columns and their types, as the catalog names them: the definitions read them
# when they load, which needs no polars (see ``core.deferred``).
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


def published_schema() -> dg.TableSchema:
    """The columns of the published CSV, for the catalog."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=COLUMN_DESCRIPTIONS[name])
            for name, kind in METRIC_TYPES.items()
        ]
    )


@functools.cache
def metrics_schema() -> pl.Schema:
    """The published columns' Polars types."""
    polars_types = {"string": pl.String, "float": pl.Float64, "int": pl.Int64, "date": pl.Date}
    return pl.Schema({name: polars_types[kind] for name, kind in METRIC_TYPES.items()})


def metrics_for_day(metrics: pl.DataFrame, day: dt.date) -> pl.DataFrame:
    return metrics.filter(pl.col("date") == day)


def dated_outside(days: Collection[dt.date]) -> pl.Expr:
    """Rows dated on none of ``days``."""
    return ~pl.col("date").is_in(list(days))


def to_csv_bytes(frame: pl.DataFrame) -> bytes:
    """UTF-8 CSV with a header row and ``\\n`` line ends; an empty frame gives just the header."""
    return frame.select(METRIC_COLUMNS).write_csv(line_terminator="\n").encode("utf-8")


def from_csv_bytes(data: bytes) -> pl.DataFrame:
    """Read a published file back with the published types (agent ids stay strings)."""
    return pl.read_csv(data, schema=metrics_schema())
