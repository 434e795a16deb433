"""Goal 7: a day too large for the server's per-query memory limit publishes the same bytes.

A day of 40 M calls over 2 000 agents needs about 450 MB of query memory in one query. The
ClickHouse HTTP stand-in serves it to two users that differ only in their settings profile: one
without a memory limit, one with ``max_memory_usage`` of 250 MB, as production profiles set it.
Each materializes the day in a fresh worker process into its own output folder; the limited run
reads the day in agent shards (the count it settled on is reported) and must publish a file
byte-identical to the unlimited one. The time it costs is the ratio.

Not in the default run (seeding 40 M calls takes about a minute): ``--only memory-limit``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.names import ASSET_NAME
from agent_metrics_pipeline.core.settings import Settings
from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import project_env, run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for
from benchmarks.services import STAND_IN_USERS, clickhouse_stand_in

GOAL = "7"
AGENTS = 2000
LIMITED_USER = "profile_limited"
PASSWORD = "l1mited-Pa55"
QUERY_TIMEOUT_SEC = 1800


@dataclass(frozen=True)
class Params:
    calls: int
    max_memory_usage: int


FULL = Params(calls=40_000_000, max_memory_usage=250 * 2**20)
QUICK = Params(calls=2_000_000, max_memory_usage=20 * 2**20)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    folder = context.subfolder("memory-limit")
    users = {
        **STAND_IN_USERS,
        "unlimited": {"password": PASSWORD, "profile": {"readonly": "1"}},
        LIMITED_USER: {
            "password": PASSWORD,
            "profile": {"readonly": "1", "max_memory_usage": str(params.max_memory_usage)},
        },
    }
    with clickhouse_stand_in(folder / "stand-in", users) as stand_in:

        def env(user: str) -> dict[str, str]:
            return project_env(
                AGENT_METRICS_HOME=str(folder / user),
                AGENT_METRICS_START_DATE=FIRST_DAY.isoformat(),
                AGENT_METRICS_SOURCE_TABLE=table_for(params.calls, agents=AGENTS).table,
                CLICKHOUSE_HOST=stand_in.host,
                CLICKHOUSE_PORT=str(stand_in.port),
                CLICKHOUSE_USER=user,
                CLICKHOUSE_PASSWORD=PASSWORD,
                CLICKHOUSE_QUERY_TIMEOUT_SEC=str(QUERY_TIMEOUT_SEC),
            )

        seeding = run_worker(
            "benchmarks.goals.memory_limit:seed",
            {"host": stand_in.host, "port": stand_in.port, "calls": params.calls},
            env("unlimited"),
            timeout=QUERY_TIMEOUT_SEC,
        )
        unlimited = run_worker(
            "benchmarks.goals.memory_limit:run_day", {}, env("unlimited"), QUERY_TIMEOUT_SEC
        )
        limited = run_worker(
            "benchmarks.goals.memory_limit:run_day", {}, env(LIMITED_USER), QUERY_TIMEOUT_SEC
        )
    same = limited.value["sha256"] == unlimited.value["sha256"]
    limit = f"{params.max_memory_usage / 2**20:g} MB"
    ratio = limited.value["seconds"] / unlimited.value["seconds"]
    return Section(
        rows=[
            Row(
                GOAL,
                f"one day of {params.calls / 1e6:g} M calls, no memory limit",
                [unlimited.value["seconds"]],
            ),
            Row(
                GOAL,
                f"the same day under a {limit} per-query limit, "
                f"{limited.value['agent_shards']} agent shards",
                [limited.value["seconds"]],
                ratio=ratio,
                target="same bytes as without the limit",
                met=same,
            ),
            Row(GOAL, f"seeding {params.calls / 1e6:g} M calls", [seeding.value]),
        ],
        notes=[
            f"Goal {GOAL}: ClickHouse HTTP stand-in on loopback, {AGENTS} agents; the limited "
            f"run's file {'equals' if same else 'DIFFERS FROM'} the unlimited run's "
            f"(sha256 {limited.value['sha256'][:12]}…, {limited.value['rows']} rows).",
        ],
    )


def seed(host: str, port: int, calls: int) -> float:
    return seed_calls(ClickHouseResource(host=host, port=port), calls, agents=AGENTS)[1]


def run_day() -> dict:
    defs = pipeline.definitions()
    started = time.perf_counter()
    result = dg.materialize(
        [pipeline.agent_metrics(defs)],
        resources=defs.resources,
        partition_key=FIRST_DAY.isoformat(),
    )
    seconds = time.perf_counter() - started
    (materialization,) = result.get_asset_materialization_events()
    settings = Settings.from_env()
    day = FIRST_DAY.isoformat()
    output = Path(
        settings.local_output_dir, settings.s3_prefix, day, f"{ASSET_NAME}_{day}.csv"
    ).read_bytes()
    return {
        "seconds": seconds,
        "sha256": hashlib.sha256(output).hexdigest(),
        "rows": output.count(b"\n") - 1,
        "agent_shards": materialization.materialization.metadata["agent_shards"].value,
    }
