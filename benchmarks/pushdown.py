"""Pushdown vs. pulling the calls: what the pipeline holds in memory, and how long a day takes.

    uv run python benchmarks/pushdown.py [--calls-per-day 100000 1000000 4000000] [--agents 300]

For each day size it times the pipeline's query (aggregation in ClickHouse, one row per agent)
against a baseline measured in the same run on the same rows: fetching the day's calls into
Polars and aggregating there, as the script this project replaced did. It prints the bytes each
approach hands to Python and the ratios. A 7-day range in one query is also compared with seven
single-day queries. Runs on the embedded engine in a temporary folder; nothing else is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import polars as pl

from agent_metrics_pipeline.clickhouse import ClickHouseResource
from agent_metrics_pipeline.config import Measurement, SourceTable
from agent_metrics_pipeline.demo import seed_sample_calls
from agent_metrics_pipeline.metrics import shape_metrics
from agent_metrics_pipeline.sql import build_metrics_query

FIRST_DAY = dt.date(2026, 11, 1)
RANGE_DAYS = 7
REPEATS = 3
T = TypeVar("T")


def day_window(day: dt.date, days: int = 1) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=days)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Median wall time over REPEATS runs, and the last result."""
    times, result = [], None
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    assert result is not None
    return statistics.median(times), result


def pipeline_query(clickhouse: ClickHouseResource, source: SourceTable, day: dt.date, days: int):
    start, end = day_window(day, days)
    sql, parameters = build_metrics_query(Measurement(source=source), start, end, "UTC")
    return clickhouse.query_polars(sql, parameters)


def pull_calls(
    clickhouse: ClickHouseResource, source: SourceTable, day: dt.date
) -> tuple[pl.DataFrame, int]:
    """The baseline: the day's calls into Polars, aggregated there. Returns the raw frame's size."""
    start, end = day_window(day)
    calls = clickhouse.query_polars(
        f"SELECT agent_id, duration_sec FROM {source.qualified_name} "
        "WHERE started_at >= {start:DateTime64(3, 'UTC')} "
        "AND started_at < {end:DateTime64(3, 'UTC')} AND status = 'Answered'",
        {"start": start.strftime("%Y-%m-%d %H:%M:%S"), "end": end.strftime("%Y-%m-%d %H:%M:%S")},
    )
    metrics = calls.group_by("agent_id").agg(
        pl.col("duration_sec").mean().round(2).alias("avg_call_length_sec"),
        pl.col("duration_sec")
        .quantile(0.9, interpolation="linear")
        .round(2)
        .alias("p90_call_length_sec"),
        pl.len().alias("total_calls"),
    )
    return metrics, calls.estimated_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls-per-day", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--agents", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="agent-metrics-bench-") as folder:
        clickhouse = ClickHouseResource(embedded_path=folder)
        print(
            f"{'calls/day':>10} {'pipeline s':>11} {'pull s':>8} {'time ratio':>10} "
            f"{'pipeline bytes':>15} {'pull bytes':>12} {'bytes ratio':>11}"
        )
        for calls_per_day in args.calls_per_day:
            source = SourceTable(table=f"calls_{calls_per_day}")
            seed_sample_calls(
                clickhouse, source, FIRST_DAY, RANGE_DAYS, calls_per_day, agents=args.agents
            )
            pipeline_s, raw = timed(partial(pipeline_query, clickhouse, source, FIRST_DAY, 1))
            pull_s, (_, pull_bytes) = timed(partial(pull_calls, clickhouse, source, FIRST_DAY))
            metrics, _ = shape_metrics(raw)
            pipeline_bytes = raw.estimated_size()
            print(
                f"{calls_per_day:>10} {pipeline_s:>11.3f} {pull_s:>8.3f} "
                f"{pull_s / pipeline_s:>9.1f}x {pipeline_bytes:>15} {pull_bytes:>12} "
                f"{pull_bytes / pipeline_bytes:>10.0f}x   ({metrics.height} agents)"
            )

        source = SourceTable(table=f"calls_{args.calls_per_day[-1]}")
        range_s, _ = timed(lambda: pipeline_query(clickhouse, source, FIRST_DAY, RANGE_DAYS))
        days_s, _ = timed(
            lambda: pl.concat(
                pipeline_query(clickhouse, source, FIRST_DAY + dt.timedelta(days=i), 1)
                for i in range(RANGE_DAYS)
            )
        )
        print(
            f"\n{RANGE_DAYS}-day range at {args.calls_per_day[-1]} calls/day: one query "
            f"{range_s:.3f}s, {RANGE_DAYS} single-day queries {days_s:.3f}s "
            f"(ratio {days_s / range_s:.2f}x)"
        )


if __name__ == "__main__":
    main()
