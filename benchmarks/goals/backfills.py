"""Goal 3: backfills as users launch them, one run for the range against one run per day.

Through the UI's path: ``dagster dev`` (webserver and daemon) on a free loopback port, with a
temporary DAGSTER_HOME holding the project's instance settings (``dagster.yaml``), and a
partition backfill launched over its GraphQL API once the daemons are up, timed from the launch
to the end of its last run (the runs' own end times). Once with the default single-run policy,
once with one run per day (``AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN=1``); each needs its own
``dagster dev``, since the policy is read when the definitions load.

Through the CLI: one ``dagster asset materialize --partition-range FIRST...LAST`` call against
single ``--partition DAY`` calls, each a fresh process with its own instance. Running thirty
single calls would take most of the run's time budget, so a few are run and their total is
scaled to thirty; the output says so. The steps of a one-day CLI run are counted from
its STEP_START events in the instance (and the distinct pids that logged them).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    backfill_to_its_end,
    graphql,
)
from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import materialize_with_cli, run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for
from benchmarks.services import dagster_dev

GOAL = "3"
TARGET = 10.0
# Dagster's backfill daemon waits this long between its loops; no setting reaches it.
BACKFILL_LOOP_SEC = 30
AGENTS = 1000
BACKFILL_TIMEOUT_SEC = 900
CLI_TIMEOUT_SEC = 600

DAEMONS = """
{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }
"""
# The daemons that take a backfill to its runs' start.
BACKFILL_DAEMONS = {"BACKFILL", "QUEUED_RUN_COORDINATOR"}


@dataclass(frozen=True)
class Params:
    days: int
    calls_per_day: int
    single_cli_calls: int  # measured; their total is scaled to `days` calls


FULL = Params(days=30, calls_per_day=1_000_000, single_cli_calls=5)
QUICK = Params(days=3, calls_per_day=10_000, single_cli_calls=1)


@dataclass(frozen=True)
class Backfill:
    wall_sec: float
    runs: int
    steps_per_run: list[int]


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    source = table_for(params.calls_per_day, params.days, AGENTS)
    env = context.embedded_env(source)
    seed_sec = run_worker(
        "benchmarks.goals.backfills:seed",
        {"calls_per_day": params.calls_per_day, "days": params.days},
        env,
    ).value
    days = [FIRST_DAY + dt.timedelta(days=offset) for offset in range(params.days)]
    folder = context.subfolder("backfills")

    single = _backfill(env, _dagster_home(folder / "single-run"), days)
    per_day_env = {**env, "AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN": "1"}
    per_day = _backfill(per_day_env, _dagster_home(folder / "run-per-day"), days)

    cli_home = _dagster_home(folder / "cli")
    cli_env = {**env, "DAGSTER_HOME": str(cli_home)}
    range_sec = materialize_with_cli(
        cli_env, folder, ["--partition-range", f"{days[0]}...{days[-1]}"], CLI_TIMEOUT_SEC
    )
    single_secs = [
        materialize_with_cli(cli_env, folder, ["--partition", str(day)], CLI_TIMEOUT_SEC)
        for day in days[: params.single_cli_calls]
    ]
    steps, pids = _one_day_steps(cli_home)

    backfill_ratio = per_day.wall_sec / single.wall_sec
    scale = params.days / len(single_secs)
    singles_total = sum(single_secs) * scale
    cli_ratio = singles_total / range_sec
    n = params.days
    rows = [
        Row(GOAL, f"backfill {n} days via dagster dev, single run", [single.wall_sec]),
        Row(
            GOAL,
            f"backfill {n} days via dagster dev, one run per day ({per_day.runs} runs)",
            [per_day.wall_sec],
            ratio=backfill_ratio,
            target=f"≥ {TARGET:g}× slower",
            met=backfill_ratio >= TARGET,
        ),
        Row(GOAL, f"CLI --partition-range, {n} days", [range_sec]),
        Row(
            GOAL,
            f"backfill {n} days via dagster dev, single run, beyond the CLI's range (one of each)",
            [single.wall_sec - range_sec],
            target=f"≤ {BACKFILL_LOOP_SEC} s (a backfill-daemon loop)",
            met=single.wall_sec - range_sec <= BACKFILL_LOOP_SEC,
        ),
        Row(GOAL, "CLI --partition, one day", single_secs),
        Row(
            GOAL,
            f"CLI --partition × {n} (sum of {len(single_secs)} × {scale:g}, extrapolated)",
            [singles_total],
            ratio=cli_ratio,
            target=f"≥ {TARGET:g}× slower",
            met=cli_ratio >= TARGET,
        ),
        Row(
            GOAL,
            f"steps of a one-day CLI run ({', '.join(sorted(set(steps)))})",
            [len(steps)],
            unit="",
            target="1",
            met=len(steps) == 1,
        ),
    ]
    notes = [
        f"Goal {GOAL}: {n} days × {params.calls_per_day:,} calls ({AGENTS} agents), embedded "
        f"engine, local CSV output; seeding took {seed_sec:.1f} s. One repetition of each "
        "backfill and of the range call (each takes minutes). Steps per run: single-run "
        f"backfill {single.steps_per_run}, run-per-day backfill "
        f"{sorted(set(per_day.steps_per_run))}; the one-day CLI run's steps were logged by "
        f"{pids} distinct process(es).",
    ]
    return Section(rows, notes)


def seed(calls_per_day: int, days: int) -> float:
    clickhouse = pipeline.clickhouse_of(pipeline.definitions())
    return seed_calls(clickhouse, calls_per_day, days, AGENTS)[1]


def _dagster_home(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # The project's instance settings, as its own end-to-end test uses them: one slot per pool.
    shutil.copy(DEV_INSTANCE_SETTINGS, folder / "dagster.yaml")
    return folder


def _backfill(env: dict[str, str], dagster_home: Path, days: list[dt.date]) -> Backfill:
    with dagster_dev({**env, "DAGSTER_HOME": str(dagster_home)}, dagster_home) as url:
        _wait_for_daemons(url)
        launched_at = time.time()
        state, runs = backfill_to_its_end(url, days, BACKFILL_TIMEOUT_SEC)
    failed = [run["runId"] for run in runs if run["status"] != "SUCCESS"]
    if failed or state not in ("COMPLETED", "COMPLETED_SUCCESS"):
        raise RuntimeError(f"backfill {state}; runs not successful: {failed}")
    return Backfill(
        wall_sec=max(run["endTime"] for run in runs) - launched_at,
        runs=len(runs),
        steps_per_run=[len(run["stepStats"]) for run in runs],
    )


def _wait_for_daemons(url: str) -> None:
    """The webserver answers before the daemon is up; a launch then would be timed from
    before the daemon could see it."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT_SEC
    while True:
        statuses = graphql(url, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
        healthy = {status["daemonType"] for status in statuses if status["healthy"]}
        if BACKFILL_DAEMONS <= healthy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemons not healthy after {BACKFILL_TIMEOUT_SEC} s: {statuses}")
        time.sleep(1)


def _one_day_steps(dagster_home: Path) -> tuple[list[str], int]:
    """The step keys started by the last one-day run of the instance, and the distinct pids
    that logged those starts."""
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        run = next(run for run in instance.get_runs() if "dagster/partition" in run.tags)
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        pids = {entry.dagster_event.pid for entry in starts if entry.dagster_event}
        return [entry.step_key or "" for entry in starts], len(pids)
    finally:
        instance.dispose()
