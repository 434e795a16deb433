"""``python -m agent_metrics_pipeline.demo``: the whole pipeline on the embedded default."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import os
import sys
import tempfile
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import dagster as dg
from dagster._core.instance.ref import InstanceRef
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

import agent_metrics_pipeline.demo
from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.names import ASSET_NAME, OBSERVE_SENSOR_NAME
from agent_metrics_pipeline.core.partitions import format_days
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.demo.runs import (
    CODE_LOCATION_NAME,
    DEFINITIONS_MODULE,
    demo_days,
    demo_runs,
    failed_checks,
    launch,
    observe,
    wait_for,
)
from agent_metrics_pipeline.demo.sample_calls import seed_demo_calls
from agent_metrics_pipeline.storage.destination import csv_io_manager

DEMO_ENV_FILE = "demo.env"
DEMO_LOG_FILE = "demo.log"
START_DATE_VARIABLE = "AGENT_METRICS_START_DATE"
SUMMARY_ROWS = 10
LAUNCH_AT_ONCE = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
}


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
        recorded = observe(workspace, instance)
        print(
            f"  Observe the calls table (sensor {OBSERVE_SENSOR_NAME}, no run): {recorded} "
            "day(s) fingerprinted and recorded",
            file=out,
        )
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
    summary = (agent_metrics_pipeline.demo.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(description=summary)
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
        f"\nPublished {len(published)} days, {format_days(published)}, one file each:",
        file=out,
    )
    print(f"  {first_uri}", file=out)
    print("  ...", file=out)
    with pl.Config(tbl_rows=SUMMARY_ROWS, tbl_cols=-1):
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
