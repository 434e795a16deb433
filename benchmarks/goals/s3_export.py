"""Goal 6: one day at 5 M calls, end to end to S3, within 2× ClickHouse writing the same
aggregate to the same S3 server itself.

moto's S3 server runs on loopback. One worker process on the embedded engine runs, per round:
``INSERT INTO FUNCTION s3(...) SELECT <bare aggregate>`` through the resource's client, and
``dg.materialize`` of ``agent_metrics`` with the project's S3 IO manager (in-step checks and
Dagster's fixed cost included). A first round warms the process up and is dropped.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for
from benchmarks.services import moto_s3, s3_env

GOAL = "6"
TARGET = 2.0
BUCKET = "agent-metrics-bench"


@dataclass(frozen=True)
class Params:
    calls_per_day: int
    agents: int
    rounds: int


FULL = Params(calls_per_day=5_000_000, agents=2000, rounds=3)
QUICK = Params(calls_per_day=500_000, agents=2000, rounds=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    source = table_for(params.calls_per_day, agents=params.agents)
    with moto_s3(context.subfolder("s3"), BUCKET) as s3:
        result = run_worker(
            "benchmarks.goals.s3_export:work",
            {
                "calls_per_day": params.calls_per_day,
                "agents": params.agents,
                "rounds": params.rounds,
            },
            context.embedded_env(source, **s3_env(s3, BUCKET)),
        ).value
    clickhouse, full = result["clickhouse_s3"], result["materialize"]
    ratio = statistics.median(full) / statistics.median(clickhouse)
    calls = f"{params.calls_per_day / 1e6:g} M calls"
    return Section(
        rows=[
            Row(GOAL, f"ClickHouse INSERT INTO FUNCTION s3 (bare aggregate), {calls}", clickhouse),
            Row(
                GOAL,
                "dg.materialize agent_metrics to S3, one day",
                full,
                ratio=ratio,
                target=f"≤ {TARGET:g}×",
                met=ratio <= TARGET,
            ),
        ],
        notes=[
            f"Goal {GOAL}: moto S3 server on loopback; ClickHouse's object holds "
            f"{result['rows_written']} agent rows; seeding took {result['seed_sec']:.1f} s. "
            "Interleaved rounds after one warm-up round.",
        ],
    )


def work(calls_per_day: int, agents: int, rounds: int) -> dict:
    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    source, seed_sec = seed_calls(clickhouse, calls_per_day, agents=agents)
    sql, parameters = pipeline.bare_aggregate_sql(source, FIRST_DAY)
    url = f"{os.environ['S3_ENDPOINT_URL']}/{os.environ['S3_BUCKET']}/clickhouse/{FIRST_DAY}.csv"
    insert = (
        "INSERT INTO FUNCTION s3({url:String}, {key:String}, {secret:String}, 'CSVWithNames') "
        + sql
    )
    credentials = {
        "url": url,
        "key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    times: dict[str, list[float]] = {"clickhouse_s3": [], "materialize": []}
    for round_number in range(rounds + 1):
        started = time.perf_counter()
        with clickhouse.get_client() as client:
            # Each round overwrites the object, as each materialize overwrites its file.
            client.command(
                insert,
                parameters={**parameters, **credentials},
                settings={"s3_truncate_on_insert": 1},
            )
        measured = {
            "clickhouse_s3": time.perf_counter() - started,
            "materialize": pipeline.materialize(defs, FIRST_DAY),
        }
        if round_number:  # round 0 warms up
            for name, seconds in measured.items():
                times[name].append(seconds)
    with clickhouse.get_client() as client:
        # Read back, so a silently empty object cannot pass for a fast one.
        written = client.command(
            "SELECT count() FROM s3({url:String}, {key:String}, {secret:String}, 'CSVWithNames')",
            parameters=credentials,
        )
    return {**times, "seed_sec": seed_sec, "rows_written": int(written)}
