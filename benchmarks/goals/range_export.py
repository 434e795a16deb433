"""Goal 11: a month to S3 at ClickHouse's own export speed: a 30-day range as one in-process run
within 1.3× ClickHouse writing the same aggregate to the same S3 server itself, partitioned by
day, at 50 k and at 300 k agents a day.

moto's S3 server runs on loopback. One worker process per size on the embedded engine runs, per
round: ``INSERT INTO FUNCTION s3('…/{_partition_id}.csv', …) PARTITION BY date SELECT …`` (per
agent and day: average and p90 rounded to 2 decimals, calls, sorted by agent: the published
rows) through the resource's client, and ``dg.materialize`` of ``agent_metrics`` over the 30
days with the project's S3 IO manager (in-step checks and Dagster's fixed cost included). A first
round warms the process up and is dropped; the rounds interleave.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import boto3

from agent_metrics_pipeline.core.settings import Settings
from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, day_window, seed_calls, table_for
from benchmarks.services import moto_s3, s3_env

GOAL = "11"
TARGET = 1.3
BUCKET = "agent-metrics-bench-range"
DAYS = 30


@dataclass(frozen=True)
class Size:
    calls_per_day: int
    agents: int


@dataclass(frozen=True)
class Params:
    sizes: tuple[Size, ...]
    days: int
    rounds: int


FULL = Params(sizes=(Size(1_000_000, 50_000), Size(1_500_000, 300_000)), days=DAYS, rounds=3)
QUICK = Params(sizes=(Size(20_000, 2_000),), days=3, rounds=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    rows: list[Row] = []
    notes: list[str] = []
    for size in params.sizes:
        source = table_for(size.calls_per_day, params.days, size.agents)
        with moto_s3(context.subfolder(f"s3-{size.agents}"), BUCKET) as s3:
            result = run_worker(
                "benchmarks.goals.range_export:work",
                {
                    "calls_per_day": size.calls_per_day,
                    "agents": size.agents,
                    "days": params.days,
                    "rounds": params.rounds,
                },
                context.embedded_env(source, **s3_env(s3, BUCKET)),
            ).value
        export, run = result["clickhouse_export"], result["materialize"]
        ratio = statistics.median(run) / statistics.median(export)
        shape = (
            f"{params.days} days × {size.calls_per_day / 1e6:g} M calls, "
            f"{size.agents / 1000:g} k agents a day"
        )
        rows += [
            Row(GOAL, f"ClickHouse s3() export PARTITION BY date, {shape}", export),
            Row(
                GOAL,
                f"dg.materialize agent_metrics to S3, the same {params.days} days as one run",
                run,
                ratio=ratio,
                target=f"≤ {TARGET:g}×",
                met=ratio <= TARGET,
            ),
        ]
        notes.append(
            f"Goal {GOAL} ({size.agents:,} agents): moto S3 on loopback; ClickHouse wrote "
            f"{result['objects']} objects of {result['rows_written']:,} agent rows in all, the "
            f"pipeline {result['published']} files; seeding took {result['seed_sec']:.1f} s."
        )
    return Section(rows, notes)


def export_sql(source, days: int) -> tuple[str, dict[str, object]]:
    """The published rows of ``days`` days, partitioned by day, as ClickHouse writes them."""
    agent, started_at, duration, status = (
        f"`{source.column(role)}`" for role in ("agent_id", "started_at", "duration_sec", "status")
    )
    start, end = day_window(FIRST_DAY, days)
    sql = f"""
INSERT INTO FUNCTION s3({{url:String}}, {{key:String}}, {{secret:String}}, 'CSVWithNames')
PARTITION BY date
SELECT {agent} AS agent_id,
       round(avg({duration}), 2) AS avg_call_length_sec,
       round(quantileExactInclusive(0.9)({duration}), 2) AS p90_call_length_sec,
       count() AS total_calls,
       toDate({started_at}, 'UTC') AS date
FROM {source.qualified_name}
WHERE {started_at} >= {{start:DateTime64(3, 'UTC')}} AND {started_at} < {{end:DateTime64(3, 'UTC')}}
  AND {status} = 'Answered'
GROUP BY date, agent_id
ORDER BY date, agent_id
"""
    window = {"start": f"{start:%Y-%m-%d %H:%M:%S}", "end": f"{end:%Y-%m-%d %H:%M:%S}"}
    return sql, window


def work(calls_per_day: int, agents: int, days: int, rounds: int) -> dict:
    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    source, seed_sec = seed_calls(clickhouse, calls_per_day, days, agents)
    sql, window = export_sql(source, days)
    folder = f"{os.environ['S3_ENDPOINT_URL']}/{os.environ['S3_BUCKET']}/clickhouse"
    credentials = {
        "key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
    }
    times: dict[str, list[float]] = {"clickhouse_export": [], "materialize": []}
    for round_number in range(rounds + 1):
        started = time.perf_counter()
        with clickhouse.get_client() as client:
            # Each round overwrites the objects, as each run overwrites its files.
            client.command(
                sql,
                parameters={**window, **credentials, "url": f"{folder}/{{_partition_id}}.csv"},
                settings={"s3_truncate_on_insert": 1},
            )
        measured = {
            "clickhouse_export": time.perf_counter() - started,
            "materialize": pipeline.materialize(defs, FIRST_DAY, days),
        }
        if round_number:  # round 0 warms up
            for name, seconds in measured.items():
                times[name].append(seconds)
    # Read back, so a silently empty export or run cannot pass for a fast one.
    with clickhouse.get_client() as client:
        written = client.query(
            "SELECT count(DISTINCT _file), count() FROM "
            "s3({url:String}, {key:String}, {secret:String}, 'CSVWithNames')",
            parameters={**credentials, "url": f"{folder}/*.csv"},
        ).result_rows[0]
    settings = Settings.from_env()
    listing = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.aws_region
    ).list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{settings.s3_prefix}/")
    published = listing["KeyCount"]
    if written[0] != days or published != days:
        raise RuntimeError(f"expected {days} objects each, got {written[0]} and {published}")
    return {
        **times,
        "seed_sec": seed_sec,
        "objects": int(written[0]),
        "rows_written": int(written[1]),
        "published": published,
    }
