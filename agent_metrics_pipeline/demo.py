"""Runs the whole pipeline on the embedded default: no server to install, no credentials.

``python -m agent_metrics_pipeline.demo`` seeds five weeks of sample calls into the embedded
ClickHouse engine, then launches runs through the code location, as the UI does: a day seeded
with broken rows whose blocking checks fail so nothing is published for it, the seven days after
it in one run, then yesterday. It prints a short summary; Dagster's own log lines go to
``demo.log`` in the instance folder. With ``S3_BUCKET`` set, the files go to that bucket.

With ``DAGSTER_HOME`` set (``make demo`` sets it), the runs are recorded in that instance, the
one ``make dev`` opens, and ``demo.env`` there holds the first seeded day, so the UI's
partitions start where the sample data does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import os
import sys
import tempfile
import time
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

import dagster as dg

# The UI launches runs through these; the demo does the same, so its runs can be re-executed.
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.instance.ref import InstanceRef
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

from agent_metrics_pipeline.assets import ASSET_NAME, PREVIEW_ROWS
from agent_metrics_pipeline.automation import JOB_NAME
from agent_metrics_pipeline.clickhouse import ClickHouseResource
from agent_metrics_pipeline.config import ConfigError, Settings, SourceTable
from agent_metrics_pipeline.deferred import polars as pl
from agent_metrics_pipeline.definitions import clickhouse_resource, csv_io_manager
from agent_metrics_pipeline.sources import OBSERVE_JOB_NAME
from agent_metrics_pipeline.sql import source_table_ddl

SEED_DAYS = 35
SEED_AGENTS = 300
SEED_CALLS_PER_DAY = 20_000
RANGE_DAYS = 7
# Source rows no metric can be computed from, on the day before the range: the blocking
# checks stop that day, and the checks tab shows these call ids.
BROKEN_CALLS = (
    ("demo-broken-no-agent-1", None, 95.0),
    ("demo-broken-no-agent-2", None, 120.5),
    ("demo-broken-negative-1", "agent-007", -30.0),
)
DEMO_ENV_FILE = "demo.env"
DEMO_LOG_FILE = "demo.log"
START_DATE_VARIABLE = "AGENT_METRICS_START_DATE"
# The code location as `make dev` (pyproject's [tool.dg]) and workspace.yaml name it.
DEFINITIONS_MODULE = "agent_metrics_pipeline.definitions"
CODE_LOCATION_NAME = "agent_metrics_pipeline"
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
RUN_TIMEOUT_SEC = 600
LAUNCH_AT_ONCE = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
}


def seed_sample_calls(
    clickhouse: ClickHouseResource,
    source: SourceTable,
    first_day: dt.date,
    days: int,
    calls_per_day: int = SEED_CALLS_PER_DAY,
    agents: int = SEED_AGENTS,
    timezone: str = "UTC",
) -> int:
    """Create the source table if needed and fill it with deterministic sample calls, generated
    inside ClickHouse (replacing whatever it held).

    The calls cover whole days from ``first_day`` in ``timezone``, the partitions' timezone.

    Durations are log-normal (median about 2.5 minutes); about 80% of calls are answered.
    """
    col = source.column
    total = days * calls_per_day
    # leftPad cuts longer text to the width: the width must fit the largest agent number.
    id_width = max(3, len(str(agents - 1)))
    with clickhouse.get_client() as client:
        for statement in source_table_ddl(source):
            client.command(statement)
        client.command(f"TRUNCATE TABLE {source.qualified_name}")
        client.command(
            f"""
            INSERT INTO {source.qualified_name}
            SELECT
                concat('call-', toString(number)) AS `{col("call_id")}`,
                concat(
                    'agent-', leftPad(toString(sipHash64(number, 1) % {agents}), {id_width}, '0')
                ) AS `{col("agent_id")}`,
                toDateTime64({{first_day:String}}, 3, {{timezone:String}})
                    + toIntervalMillisecond(sipHash64(number, 2) % ({days} * 86400000))
                    AS `{col("started_at")}`,
                round(exp(5 + 0.7 * sqrt(-2 * log((sipHash64(number, 3) % 1000000 + 1) / 1000001))
                    * cos(2 * pi() * (sipHash64(number, 4) % 1000000) / 1000000)), 1)
                    AS `{col("duration_sec")}`,
                multiIf(sipHash64(number, 5) % 100 < 80, 'Answered',
                        sipHash64(number, 5) % 100 < 90, 'Missed',
                        sipHash64(number, 5) % 100 < 95, 'Voicemail', 'Abandoned')
                    AS `{col("status")}`
            FROM numbers({total})
            """,
            parameters={"first_day": f"{first_day.isoformat()} 00:00:00", "timezone": timezone},
        )
    return total


def add_broken_calls(
    clickhouse: ClickHouseResource, source: SourceTable, day: dt.date, timezone: str
) -> None:
    """Answered calls at noon on ``day`` without an agent or with a negative length."""
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=zoneinfo.ZoneInfo(timezone))
    rows = [(call_id, agent, noon, length, "Answered") for call_id, agent, length in BROKEN_CALLS]
    with clickhouse.get_client() as client:
        client.insert(source.qualified_name, rows, column_names=list(source.column_names))


def seed_demo_calls(settings: Settings, today: dt.date) -> int:
    """Sample calls for the demo's five weeks, the broken day's rows among them."""
    clickhouse = clickhouse_resource(settings)
    source = settings.measurement.source
    first_day, broken_day, _, _ = demo_days(today)
    seeded = seed_sample_calls(clickhouse, source, first_day, SEED_DAYS, timezone=settings.timezone)
    add_broken_calls(clickhouse, source, broken_day, settings.timezone)
    return seeded + len(BROKEN_CALLS)


def demo_days(today: dt.date) -> tuple[dt.date, dt.date, list[dt.date], dt.date]:
    """The first seeded day, the broken day, the range's days and yesterday."""
    yesterday = today - dt.timedelta(days=1)
    range_days = [yesterday - dt.timedelta(days=offset) for offset in range(RANGE_DAYS, 0, -1)]
    broken_day = range_days[0] - dt.timedelta(days=1)
    return today - dt.timedelta(days=SEED_DAYS), broken_day, range_days, yesterday


class DemoRun(NamedTuple):
    """One run the demo launches: what it does, and the tags that select its days."""

    title: str
    job_name: str
    tags: dict[str, str]
    fails_on_purpose: bool = False


def demo_runs(today: dt.date) -> list[DemoRun]:
    """The broken day first, yesterday last: the latest materialization is a healthy day."""
    _, broken_day, range_days, yesterday = demo_days(today)
    first, last = range_days[0].isoformat(), range_days[-1].isoformat()
    return [
        DemoRun("Observe the calls table", OBSERVE_JOB_NAME, {}),
        DemoRun(
            f"{broken_day} (broken rows on purpose)",
            JOB_NAME,
            {PARTITION_TAG: broken_day.isoformat()},
            fails_on_purpose=True,
        ),
        DemoRun(
            f"{first}...{last} as one run",
            JOB_NAME,
            {RANGE_START_TAG: first, RANGE_END_TAG: last},
        ),
        DemoRun(f"{yesterday}", JOB_NAME, {PARTITION_TAG: yesterday.isoformat()}),
    ]


LAUNCH_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}
"""


def launch(workspace: WorkspaceProcessContext, run: DemoRun) -> str:
    """Launch ``run`` as the UI's Materialize button does: through the code location, so the
    run can be re-executed from the UI."""
    from dagster_graphql.cli import execute_query

    params = {
        "selector": {
            "repositoryLocationName": CODE_LOCATION_NAME,
            "repositoryName": SINGLETON_REPOSITORY_NAME,
            "pipelineName": run.job_name,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in run.tags.items()]},
    }
    answer = execute_query(workspace, LAUNCH_MUTATION, {"executionParams": params})
    launched = (answer.get("data") or {}).get("launchPipelineExecution") or {}
    if launched.get("__typename") != "LaunchRunSuccess":
        raise RuntimeError(f"Could not launch {run.title}: {launched or answer.get('errors')}")
    return launched["run"]["runId"]


def wait_for(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        time.sleep(0.5)
    raise TimeoutError(f"Run {run_id} did not finish within {RUN_TIMEOUT_SEC} s")


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    return sorted(
        {
            record.event_log_entry.dagster_event.asset_check_evaluation_data.check_name
            for record in records
            if not record.event_log_entry.dagster_event.asset_check_evaluation_data.passed
        }
    )


def run_demo(settings: Settings, today: dt.date, instance: dg.DagsterInstance, out: TextIO) -> bool:
    """Seed sample calls, then launch the demo's runs one after another; True when each ended
    as planned (the broken day failing)."""
    # Seeding opens the engine's folder, which one process at a time may hold: the runs, each
    # in a process of its own, open it after the seeding process has ended.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seeded = pool.apply(seed_demo_calls, (settings, today))
    first_day = demo_days(today)[0]
    print(f"Seeded {seeded:,} sample calls from {first_day} into the embedded engine.", file=out)
    as_planned = True
    target = ModuleTarget(
        module_name=DEFINITIONS_MODULE,
        attribute=None,
        working_directory=os.getcwd(),
        location_name=CODE_LOCATION_NAME,
    )
    with WorkspaceProcessContext(instance, target) as workspace:
        for demo_run in demo_runs(today):
            run_id = launch(workspace, demo_run)
            run = wait_for(instance, run_id)
            succeeded = run.status == dg.DagsterRunStatus.SUCCESS
            as_planned &= succeeded != demo_run.fails_on_purpose
            outcome = "succeeded" if succeeded else "failed"
            if demo_run.fails_on_purpose and not succeeded:
                checks = ", ".join(failed_checks(instance, run_id))
                outcome = f"failed on purpose: checks {checks} failed, nothing published"
            print(f"  {demo_run.title}: {outcome} (run {run_id[:8]})", file=out)
    return as_planned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        return 2
    if settings.clickhouse_host is not None:
        print(
            "The demo replaces the source table with sample data, so it only runs on the "
            "embedded engine: unset CLICKHOUSE_HOST.",
            file=sys.stderr,
        )
        return 2
    today = dt.datetime.now(zoneinfo.ZoneInfo(settings.timezone)).date()
    first_day = demo_days(today)[0]
    # The code location the runs go through reads the same environment.
    os.environ[START_DATE_VARIABLE] = first_day.isoformat()
    settings = dataclasses.replace(settings, start_date=first_day.isoformat())
    dagster_home = os.environ.get("DAGSTER_HOME")
    with contextlib.ExitStack() as stack:
        if not dagster_home:
            dagster_home = stack.enter_context(tempfile.TemporaryDirectory())
            os.environ["DAGSTER_HOME"] = dagster_home
            print("DAGSTER_HOME is not set: the runs are not kept (`make demo` keeps them).")
        log_path = Path(dagster_home) / DEMO_LOG_FILE
        terminal = stack.enter_context(terminal_apart_from_the_log(log_path))
        # The instance `make dev` opens, with runs launched at once: no daemon drains a queue.
        ref = InstanceRef.from_dir(dagster_home, overrides=LAUNCH_AT_ONCE)
        instance = stack.enter_context(dg.DagsterInstance.from_ref(ref))
        as_planned = run_demo(settings, today, instance, terminal)
        (Path(dagster_home) / DEMO_ENV_FILE).write_text(
            f"{START_DATE_VARIABLE}={first_day.isoformat()}\n"
        )
        print_summary(settings, today, log_path, terminal)
    return 0 if as_planned else 1


@contextlib.contextmanager
def terminal_apart_from_the_log(log_path: Path) -> Iterator[TextIO]:
    """Send this process's output, and its children's (the code server, each run), to
    ``log_path``; yield the terminal for the demo's own summary. An error reaches the terminal
    once the block is left."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    with log_path.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for target, original in zip((1, 2), saved, strict=True):
                os.dup2(original, target)
                os.close(original)
            terminal.close()


def print_summary(settings: Settings, today: dt.date, log_path: Path, out: TextIO) -> None:
    _, broken_day, range_days, yesterday = demo_days(today)
    io_manager = csv_io_manager(settings)
    published = [*range_days, yesterday]
    first_uri = io_manager.uri(io_manager.object_key(ASSET_NAME, published[0].isoformat()))
    print(
        f"\nPublished {len(published)} days, {published[0]}...{published[-1]}, one file each:",
        file=out,
    )
    print(f"  {first_uri}", file=out)
    print("  ...", file=out)
    with pl.Config(tbl_rows=PREVIEW_ROWS, tbl_cols=-1):
        frame = io_manager.load_day(ASSET_NAME, yesterday.isoformat())
        print(f"\n{yesterday}:\n{frame}", file=out)
    print(
        f"\n{broken_day} was seeded with broken rows: its blocking checks failed and nothing "
        "was published for it, on purpose.",
        file=out,
    )
    print(f"Dagster's log of every run: {log_path}", file=out)
    print(
        "`make dev` opens the UI on these runs: Assets > agent_metrics > Checks shows each "
        f"day's results ({broken_day} failed, with its call ids).",
        file=out,
    )


if __name__ == "__main__":
    sys.exit(main())
