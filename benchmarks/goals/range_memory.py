"""Goal 4: memory stays bounded whatever the range: a 365-day range as one run peaks at most
1.5× a 30-day range.

Embedded mode, so the engine's own memory is part of the process measured: each range is
materialized by a fresh worker process (``dg.materialize`` with the range's tags, as the CLI's
``--partition-range`` runs it) whose peak RSS is read at its end. AGENT_METRICS_MAX_DAYS_PER_QUERY
is passed on when set, and the value the definitions read is reported. The query timeout is
raised for these runs: what is measured here is memory, and a year of calls on two cores may
take longer than the default two minutes.

The year takes minutes to seed and to run, so this goal is not part of the default run:
``--only range-memory``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from agent_metrics_pipeline.config import Settings
from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import WorkerResult, run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for

GOAL = "4"
TARGET = 1.5
AGENTS = 1000
QUERY_TIMEOUT_SEC = 3600


@dataclass(frozen=True)
class Params:
    long_days: int
    short_days: int
    calls_per_day: int
    short_runs: int  # the long range runs once


FULL = Params(long_days=365, short_days=30, calls_per_day=1_000_000, short_runs=2)
QUICK = Params(long_days=20, short_days=5, calls_per_day=20_000, short_runs=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    source = table_for(params.calls_per_day, params.long_days, AGENTS)
    env = context.embedded_env(source, CLICKHOUSE_QUERY_TIMEOUT_SEC=str(QUERY_TIMEOUT_SEC))
    seeding = run_worker(
        "benchmarks.goals.range_memory:seed",
        {"calls_per_day": params.calls_per_day, "days": params.long_days},
        env,
        timeout=QUERY_TIMEOUT_SEC,
    )
    runs: dict[int, list[WorkerResult]] = {params.short_days: [], params.long_days: []}
    # Short, long, short...: the long range sits between the short ones.
    order = [params.short_days, params.long_days] + [params.short_days] * (params.short_runs - 1)
    for days in order:
        runs[days].append(
            run_worker(
                "benchmarks.goals.range_memory:run_range",
                {"days": days},
                env,
                timeout=QUERY_TIMEOUT_SEC,
            )
        )
    short, long = runs[params.short_days], runs[params.long_days]
    ratio = statistics.median(_peaks(long)) / statistics.median(_peaks(short))
    used = long[0].value["max_days_per_query"]
    calls = f"{params.calls_per_day / 1e6:g} M calls/day"
    return Section(
        rows=[
            Row(GOAL, f"peak RSS, {params.short_days}-day range, {calls}", _peaks(short), "MB"),
            Row(
                GOAL,
                f"peak RSS, {params.long_days}-day range as one run",
                _peaks(long),
                "MB",
                ratio=ratio,
                target=f"≤ {TARGET}×",
                met=ratio <= TARGET,
            ),
            Row(GOAL, f"materialize, {params.short_days}-day range", _seconds(short)),
            Row(GOAL, f"materialize, {params.long_days}-day range", _seconds(long)),
            Row(GOAL, f"seeding {params.long_days} days × {calls}", [seeding.value]),
        ],
        notes=[
            f"Goal {GOAL}: embedded engine (its memory counts), {AGENTS} agents, local CSV "
            f"output; max days per query: {used}. The long range ran once, the short one "
            f"{params.short_runs} time(s), each in a fresh process.",
        ],
    )


def _peaks(runs: list[WorkerResult]) -> list[float]:
    return [run.peak_rss_bytes for run in runs]


def _seconds(runs: list[WorkerResult]) -> list[float]:
    return [run.value["seconds"] for run in runs]


def seed(calls_per_day: int, days: int) -> float:
    clickhouse = pipeline.clickhouse_of(pipeline.definitions())
    return seed_calls(clickhouse, calls_per_day, days, AGENTS)[1]


def run_range(days: int) -> dict:
    defs = pipeline.definitions()
    return {
        "seconds": pipeline.materialize(defs, FIRST_DAY, days),
        "max_days_per_query": pipeline.max_days_per_query(Settings.from_env()),
    }
