"""Goal 4: memory is set by the chunk, never by the range or the size of a day.

- a 30-day range as one run peaks at most 1.5× one day of the same size;
- a 365-day range peaks no higher than the 30-day one (within 5 %, the noise of peak RSS);
- a day read in agent shards peaks no higher than the same day in one query;
- the range costs far fewer queries and less time than one run per day.

Embedded mode, so the engine's own memory is part of the process measured: each run is a fresh
worker process (``dg.materialize`` with the range's tags, as the CLI's ``--partition-range``
runs it) whose peak RSS is read at its end. As the CLI's, its instance is on disk (a temporary
one): an ephemeral instance would also hold every event of the run in an in-memory database,
which no deployment does, and a year's would grow with its days. Dagster itself still keeps a
run's events in the process until the run ends, and that part stays measured. Days are many
agents with few calls each (the shape where the rows a run holds, not the calls, dominate),
seeded as one day copied across the range. The query limits in force
(``AGENT_METRICS_MAX_CALLS_PER_QUERY`` and friends, passed on when set) are reported. The query
timeout is raised for these runs: what is measured is memory.

The embedded engine keeps some memory of every query it ran (a few MB each at this size, not
counted by its own memory tracker), so a long range in one process grows with its queries
whatever the pipeline holds. Two measurements tell the pipeline's part from the engine's:

- the engine alone: one worker runs the range's metrics queries one day at a time and nothing
  else, its peak RSS read after the first query, the range's and the year's;
- the server path: the same one day, range and year with the engine behind the ClickHouse HTTP
  stand-in (its own process, serving the same data folder, not counted), so the worker holds
  only what the pipeline holds.

The year takes minutes to seed and to run, so this goal is not part of the default run:
``--only range-memory``.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
from dataclasses import dataclass

import dagster as dg

from agent_metrics_pipeline.aggregate.queries import build_metrics_query
from agent_metrics_pipeline.aggregate.query_parts import DayWindow
from agent_metrics_pipeline.clickhouse.session import ClickHouseSession
from agent_metrics_pipeline.core.settings import Settings
from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import WorkerResult, peak_rss_bytes, run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, day_window, seed_calls, table_for
from benchmarks.services import clickhouse_stand_in

GOAL = "4"
RANGE_TARGET = 1.5
YEAR_TARGET = 1.05
SHARDED_TARGET = 1.05
SHARDS = 8
QUERY_TIMEOUT_SEC = 3600


@dataclass(frozen=True)
class Params:
    agents: int
    calls_per_day: int
    range_days: int
    long_days: int
    rounds: int  # of the one-day and range runs; the long range runs once


FULL = Params(agents=300_000, calls_per_day=1_500_000, range_days=30, long_days=365, rounds=2)
QUICK = Params(agents=5_000, calls_per_day=20_000, range_days=5, long_days=20, rounds=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    source = table_for(params.calls_per_day, params.long_days, params.agents)
    env = context.embedded_env(source, CLICKHOUSE_QUERY_TIMEOUT_SEC=str(QUERY_TIMEOUT_SEC))
    sharded_env = {**env, "AGENT_METRICS_AGENT_SHARDS": str(SHARDS)}
    seeding = run_worker(
        "benchmarks.goals.range_memory:seed",
        {"calls_per_day": params.calls_per_day, "days": params.long_days, "agents": params.agents},
        env,
        timeout=QUERY_TIMEOUT_SEC,
    )
    runs: dict[str, list[WorkerResult]] = {"day": [], "sharded": [], "range": [], "year": []}
    runs |= {"server day": [], "server range": [], "server year": []}

    def run(kind: str, days: int, worker_env: dict[str, str]) -> None:
        runs[kind].append(
            run_worker(
                "benchmarks.goals.range_memory:run_range",
                {"days": days},
                worker_env,
                timeout=QUERY_TIMEOUT_SEC,
            )
        )

    # The kinds alternate within each round; the long range sits between two rounds.
    for round_number in range(params.rounds):
        run("day", 1, env)
        run("sharded", 1, sharded_env)
        run("range", params.range_days, env)
        if round_number == 0:
            run("year", params.long_days, env)
    engine = run_worker(
        "benchmarks.goals.range_memory:engine_queries",
        {"days": params.long_days, "marks": [1, params.range_days, params.long_days]},
        env,
        timeout=QUERY_TIMEOUT_SEC,
    ).value
    # The stand-in serves the embedded runs' folder, which no worker holds open any more.
    with clickhouse_stand_in(
        context.subfolder("range-memory-server"), data=context.home / "clickhouse"
    ) as stand_in:
        server_env = {**env, **stand_in.reader_env()}
        run("server day", 1, server_env)
        run("server range", params.range_days, server_env)
        run("server year", params.long_days, server_env)
    day, sharded, range_, year, server_day, server_range, server_year = (
        _median_peak(runs[kind]) for kind in runs
    )
    engine_first, engine_range, engine_year = (
        engine[str(mark)] for mark in (1, params.range_days, params.long_days)
    )
    range_seconds = statistics.median(_seconds(runs["range"]))
    per_day_seconds = statistics.median(_seconds(runs["day"])) * params.range_days
    range_queries = runs["range"][0].value["queries"]
    per_day_queries = runs["day"][0].value["queries"] * params.range_days
    limits = runs["range"][0].value["limits"]
    size = f"{params.agents:,} agents, {params.calls_per_day / 1e6:g} M calls/day"
    return Section(
        rows=[
            Row(GOAL, f"peak RSS, one day ({size})", _peaks(runs["day"]), "MB"),
            _peak_row(
                f"peak RSS, {params.range_days}-day range as one run",
                runs["range"],
                range_ / day,
                RANGE_TARGET,
                "one day",
            ),
            _peak_row(
                f"peak RSS, {params.long_days}-day range as one run",
                runs["year"],
                year / range_,
                YEAR_TARGET,
                f"the {params.range_days}-day range",
            ),
            _peak_row(
                f"peak RSS, one day in {SHARDS} agent shards",
                runs["sharded"],
                sharded / day,
                SHARDED_TARGET,
                "one query",
            ),
            Row(
                GOAL,
                f"materialize, {params.range_days}-day range as one run",
                _seconds(runs["range"]),
                ratio=range_seconds / per_day_seconds,
                target=f"vs {params.range_days} × one day ({per_day_seconds:.1f} s)",
            ),
            Row(GOAL, "materialize, one day", _seconds(runs["day"])),
            Row(GOAL, f"materialize, one day in {SHARDS} shards", _seconds(runs["sharded"])),
            Row(GOAL, f"materialize, {params.long_days}-day range", _seconds(runs["year"])),
            Row(GOAL, "server path: peak RSS, one day", _peaks(runs["server day"]), "MB"),
            _peak_row(
                f"server path: peak RSS, {params.range_days}-day range as one run",
                runs["server range"],
                server_range / server_day,
                RANGE_TARGET,
                "one day",
            ),
            _peak_row(
                f"server path: peak RSS, {params.long_days}-day range as one run",
                runs["server year"],
                server_year / server_range,
                YEAR_TARGET,
                f"the {params.range_days}-day range",
            ),
            Row(GOAL, "engine alone: peak RSS after one query", [engine_first], "MB"),
            Row(
                GOAL,
                f"engine alone: peak RSS after {params.range_days} one-day queries",
                [engine_range],
                "MB",
                ratio=engine_range / engine_first,
                target="vs one query",
            ),
            Row(
                GOAL,
                f"engine alone: peak RSS after {params.long_days} one-day queries",
                [engine_year],
                "MB",
                ratio=engine_year / engine_range,
                target=f"vs {params.range_days} queries",
            ),
            Row(GOAL, "server path: materialize, one day", _seconds(runs["server day"])),
            Row(
                GOAL,
                f"server path: materialize, {params.long_days}-day range",
                _seconds(runs["server year"]),
            ),
            Row(GOAL, f"seeding {params.long_days} days", [seeding.value]),
        ],
        notes=[
            f"Goal {GOAL}: embedded engine (its memory counts), local CSV output, each run in a "
            f"fresh process; limits {limits}. Queries: {range_queries} for the "
            f"{params.range_days}-day range as one run, {per_day_queries} as one run per day.",
        ],
    )


def _peak_row(
    measurement: str, runs: list[WorkerResult], ratio: float, target: float, baseline: str
) -> Row:
    """A peak RSS held to at most ``target`` times its baseline's."""
    return Row(
        GOAL,
        measurement,
        _peaks(runs),
        "MB",
        ratio=ratio,
        target=f"≤ {target}× {baseline}",
        met=ratio <= target,
    )


def _median_peak(runs: list[WorkerResult]) -> float:
    return statistics.median(_peaks(runs))


def _peaks(runs: list[WorkerResult]) -> list[float]:
    return [run.peak_rss_bytes for run in runs]


def _seconds(runs: list[WorkerResult]) -> list[float]:
    return [run.value["seconds"] for run in runs]


def seed(calls_per_day: int, days: int, agents: int) -> float:
    clickhouse = pipeline.clickhouse_of(pipeline.definitions())
    return seed_calls(clickhouse, calls_per_day, days, agents)[1]


def engine_queries(days: int, marks: list[int]) -> dict[str, int]:
    """The peak RSS after each of ``marks`` queries, running one day's metrics query per day
    from FIRST_DAY on the embedded engine, and nothing else."""
    clickhouse = pipeline.clickhouse_of(pipeline.definitions())
    measurement = Settings.from_env().measurement
    peaks = {}
    for number in range(1, days + 1):
        day = FIRST_DAY + dt.timedelta(days=number - 1)
        clickhouse.query_polars(
            *build_metrics_query(measurement, [DayWindow(day, *day_window(day))], "UTC")
        )
        if number in marks:
            peaks[str(number)] = peak_rss_bytes()
    return peaks


def run_range(days: int) -> dict:
    defs = pipeline.definitions()
    queries = 0
    query_polars = ClickHouseSession.query_polars

    def counted(self: ClickHouseSession, *args: object, **kwargs: object) -> object:
        nonlocal queries
        queries += 1
        return query_polars(self, *args, **kwargs)

    ClickHouseSession.query_polars = counted  # type: ignore[method-assign]
    with (
        tempfile.TemporaryDirectory(prefix="range-memory-instance-") as home,
        dg.DagsterInstance.local_temp(home) as instance,
    ):
        seconds = pipeline.materialize(defs, FIRST_DAY, days, instance)
    return {
        "seconds": seconds,
        "queries": queries,
        "limits": Settings.from_env().chunking.catalog_metadata(),
    }
