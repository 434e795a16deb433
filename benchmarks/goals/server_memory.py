"""Goal 2: in server mode, the client's memory does not grow with the calls of a day, and
pushing the aggregate down beats pulling the calls.

The project's ClickHouse HTTP stand-in runs in a process of its own (its memory is the server's,
not the client's); the pipeline reads as the tests' ``readonly=1`` user. Every client run is a
fresh worker process (``server_clients``) whose peak RSS is read at its end:

- floor: the same worker, importing the same modules and loading the same definitions, then
  doing nothing;
- pipeline: ``dg.materialize`` of ``agent_metrics`` for one day (local CSV output), at each size;
- client side: every call of the day (the columns the metrics need) fetched over HTTP into
  Polars through the same resource, filtered and aggregated there (mean, linear p90, count);
- requests: a one-day run that counts the queries it sends, while the stand-in's log counts the
  HTTP requests it gets: one per query, plus the client's greeting once per step.

The kinds alternate within each round. Times are of the work inside the worker, without the
interpreter's start-up and imports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from benchmarks.context import Context
from benchmarks.processes import WorkerResult, project_env, run_worker
from benchmarks.report import MB, Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for
from benchmarks.services import clickhouse_stand_in

GOAL = "2"
FLATNESS = 1.10
SPEED_TARGET = 3.0
MEMORY_TARGET = 10.0
# What clickhouse-connect asks a server when its client opens: version and time zone, settings,
# a check. The pipeline opens one client per step.
GREETING_REQUESTS = 3
AGENTS = 2000
# The client processes import only this module, so that their floor is a client's, not the
# harness's (which loads the engine to run the stand-in).
CLIENT_MODULE = "benchmarks.goals.server_clients"


@dataclass(frozen=True)
class Params:
    sizes: tuple[int, ...]  # calls per day, ascending; client side measured at the last
    rounds: int


FULL = Params(sizes=(100_000, 1_000_000, 10_000_000), rounds=3)
QUICK = Params(sizes=(10_000, 300_000), rounds=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    largest = params.sizes[-1]
    folder = context.subfolder("server-memory")
    with clickhouse_stand_in(folder / "stand-in") as stand_in:

        def env(calls_per_day: int) -> dict[str, str]:
            return project_env(
                AGENT_METRICS_HOME=str(folder / "client-home"),
                AGENT_METRICS_START_DATE=FIRST_DAY.isoformat(),
                AGENT_METRICS_SOURCE_TABLE=table_for(calls_per_day, agents=AGENTS).table,
                **stand_in.reader_env(),
            )

        seed_sec = run_worker(
            "benchmarks.goals.server_memory:seed",
            {"host": stand_in.host, "port": stand_in.port, "sizes": list(params.sizes)},
            env(largest),
        ).value
        runs: dict[str, list[WorkerResult]] = {}
        for _ in range(params.rounds):
            kinds = [
                ("floor", "idle", largest),
                *((f"pipeline {size}", "run_pipeline", size) for size in params.sizes),
                ("client side", "client_side", largest),
            ]
            for kind, function, size in kinds:
                result = run_worker(f"{CLIENT_MODULE}:{function}", {}, env(size))
                runs.setdefault(kind, []).append(result)
        before = stand_in.requests_of_the_reader()
        queries = run_worker(f"{CLIENT_MODULE}:counted_queries", {}, env(params.sizes[0]))
        requests = stand_in.requests_of_the_reader() - before
    return _section(params, runs, seed_sec, queries.value["queries"], requests)


def _section(
    params: Params,
    runs: dict[str, list[WorkerResult]],
    seed_sec: float,
    queries: int,
    requests: int,
) -> Section:
    def peaks(kind: str) -> list[float]:
        return [run.peak_rss_bytes for run in runs[kind]]

    def seconds(kind: str) -> list[float]:
        return [run.value["seconds"] for run in runs[kind]]

    def above_floor(kind: str) -> list[float]:
        return [run - floor for run, floor in zip(peaks(kind), peaks("floor"), strict=True)]

    largest = f"pipeline {params.sizes[-1]}"
    at = f"{params.sizes[-1] / 1e6:g} M calls"
    size_medians = [statistics.median(peaks(f"pipeline {size}")) for size in params.sizes]
    flatness = max(size_medians) / min(size_medians)
    speedup = statistics.median(seconds("client side")) / statistics.median(seconds(largest))
    pipeline_above = statistics.median(above_floor(largest))
    # A pipeline that stays within a megabyte of its floor counts as one megabyte.
    memory_ratio = statistics.median(above_floor("client side")) / max(pipeline_above, MB)
    rows = [Row(GOAL, "client peak RSS, floor (same imports, nothing run)", peaks("floor"), "MB")]
    rows += [
        Row(GOAL, f"client peak RSS, pipeline at {size:,} calls", peaks(f"pipeline {size}"), "MB")
        for size in params.sizes
    ]
    rows += [
        Row(
            GOAL,
            f"pipeline peak RSS, largest / smallest of the {len(params.sizes)} sizes",
            ratio=flatness,
            target=f"≤ {FLATNESS:.2f}× (±10%)",
            met=flatness <= FLATNESS,
        ),
        Row(GOAL, f"pipeline materialize, {at}", seconds(largest)),
        Row(
            GOAL,
            f"client side: fetch every call + Polars aggregate, {at}",
            seconds("client side"),
            ratio=speedup,
            target=f"≥ {SPEED_TARGET:g}× slower",
            met=speedup >= SPEED_TARGET,
        ),
        Row(GOAL, f"pipeline peak RSS above floor, {at}", above_floor(largest), "MB"),
        Row(
            GOAL,
            f"client side peak RSS above floor, {at}",
            above_floor("client side"),
            "MB",
            ratio=memory_ratio,
            target=f"≥ {MEMORY_TARGET:g}× more",
            met=memory_ratio >= MEMORY_TARGET,
        ),
    ]
    rows += [
        Row(GOAL, "server path, one day: queries the run sent", [queries], ""),
        Row(GOAL, "server path, one day: HTTP requests the server got", [requests], ""),
        Row(
            GOAL,
            "requests per query, the client's greeting (3 requests a step) aside",
            ratio=(requests - GREETING_REQUESTS) / queries,
            target="1",
            met=requests - GREETING_REQUESTS == queries,
        ),
    ]
    fetched = runs["client side"][0].value["rows_fetched"]
    notes = [
        f"Goal {GOAL}: ClickHouse HTTP stand-in on loopback (its own process, not counted); "
        f"the client side fetched {fetched:,} rows. Seeding took {seed_sec:.1f} s. "
        f"{params.rounds} round(s), kinds alternating; each run a fresh process.",
    ]
    return Section(rows, notes)


def seed(host: str, port: int, sizes: list[int]) -> float:
    """Seed one table per size as the stand-in's ``default`` user, who may write; the seconds
    it took."""
    writer = ClickHouseResource(host=host, port=port)
    return sum(seed_calls(writer, size, agents=AGENTS)[1] for size in sizes)
