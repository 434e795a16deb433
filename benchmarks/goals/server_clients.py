"""The client processes of goal 2 (see ``server_memory``), one function per kind of run.

Each is a fresh worker that imports this module, and through it what a client of the pipeline
imports and nothing of the harness's, then loads the definitions: the floor is ``idle``.
"""

from __future__ import annotations

import time

import polars as pl

from agent_metrics_pipeline.core.settings import Settings
from benchmarks import pipeline
from benchmarks.seeding import FIRST_DAY


def idle() -> dict:
    pipeline.definitions()
    return {}


def run_pipeline() -> dict:
    defs = pipeline.definitions()
    return {"seconds": pipeline.materialize(defs, FIRST_DAY)}


def counted_queries() -> dict:
    """A one-day run that counts the queries it sends; the harness counts the requests."""
    from agent_metrics_pipeline.clickhouse.session import ClickHouseSession

    queries = 0
    original = ClickHouseSession.query_polars

    def counted(self, sql, parameters=None):
        nonlocal queries
        queries += 1
        return original(self, sql, parameters)

    ClickHouseSession.query_polars = counted
    pipeline.materialize(pipeline.definitions(), FIRST_DAY)
    return {"queries": queries}


def client_side() -> dict:
    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    source = Settings.from_env().measurement.source
    agent, started_at, duration, status = (
        f"`{source.column(role)}`" for role in ("agent_id", "started_at", "duration_sec", "status")
    )
    started = time.perf_counter()
    calls = clickhouse.query_polars(
        f"SELECT {agent} AS agent_id, {duration} AS duration_sec, {status} AS status "
        f"FROM {source.qualified_name} WHERE {started_at} >= {{start:DateTime64(3, 'UTC')}} "
        f"AND {started_at} < {{end:DateTime64(3, 'UTC')}}",
        pipeline.window_parameters(FIRST_DAY),
    )
    metrics = (
        calls.filter(pl.col("status") == "Answered")
        .group_by("agent_id")
        .agg(
            pl.col("duration_sec").mean().round(2).alias("avg_call_length_sec"),
            pl.col("duration_sec").quantile(0.9, "linear").round(2).alias("p90_call_length_sec"),
            pl.len().alias("total_calls"),
        )
        .sort("agent_id")
    )
    seconds = time.perf_counter() - started
    assert metrics.height > 0
    return {"seconds": seconds, "rows_fetched": calls.height}
