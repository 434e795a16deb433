"""Runs the whole pipeline on the embedded default: no server to install, no credentials.

``python -m agent_metrics_pipeline.demo`` seeds five weeks of sample calls into the embedded
ClickHouse engine, materializes yesterday, then the seven days before it in one run, then a day
seeded with broken rows whose blocking checks fail so nothing is published for it. It prints
where the CSV files are. With ``S3_BUCKET`` set, the files go to that bucket instead.

With ``DAGSTER_HOME`` set (``make demo`` sets it), the runs are recorded in that instance, the
one ``make dev`` opens, and ``demo.env`` there holds the first seeded day, so the UI's
partitions start where the sample data does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import sys
import zoneinfo
from pathlib import Path

import dagster as dg
import polars as pl

from agent_metrics_pipeline.assets import ASSET_NAME, CSV_IO_MANAGER_KEY, PREVIEW_ROWS
from agent_metrics_pipeline.automation import JOB_NAME
from agent_metrics_pipeline.clickhouse import ClickHouseResource
from agent_metrics_pipeline.config import ConfigError, Settings, SourceTable
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.io_managers import DailyCsvIOManager
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

logger = logging.getLogger("agent_metrics_pipeline.demo")


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


def run_demo(
    defs: dg.Definitions,
    settings: Settings,
    today: dt.date,
    instance: dg.DagsterInstance,
) -> dg.ExecuteInProcessResult:
    """Seed sample calls, observe them, then materialize yesterday, the seven days before it,
    and the broken day.

    Returns the broken day's run, which fails on purpose.
    """
    clickhouse = defs.resources["clickhouse"]
    assert isinstance(clickhouse, ClickHouseResource)
    yesterday = today - dt.timedelta(days=1)
    range_start = yesterday - dt.timedelta(days=RANGE_DAYS)
    range_end = yesterday - dt.timedelta(days=1)
    broken_day = range_start - dt.timedelta(days=1)
    first_day = today - dt.timedelta(days=SEED_DAYS)
    source = settings.measurement.source

    seeded = seed_sample_calls(clickhouse, source, first_day, SEED_DAYS, timezone=settings.timezone)
    add_broken_calls(clickhouse, source, broken_day, settings.timezone)
    logger.info("Seeded %s sample calls from %s into %s", seeded, first_day, clickhouse.description)

    # Fingerprint the source first, so each published day records the one it was built from.
    defs.resolve_job_def(OBSERVE_JOB_NAME).execute_in_process(instance=instance)
    job = defs.resolve_job_def(JOB_NAME)
    job.execute_in_process(partition_key=yesterday.isoformat(), instance=instance)
    job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": range_start.isoformat(),
            "dagster/asset_partition_range_end": range_end.isoformat(),
        },
    )
    return job.execute_in_process(
        partition_key=broken_day.isoformat(), instance=instance, raise_on_error=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    # The demo's own progress lines only; Dagster logs its runs itself.
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.INFO)
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
    first_day = today - dt.timedelta(days=SEED_DAYS)
    settings = dataclasses.replace(settings, start_date=first_day.isoformat())
    defs = build_definitions(settings)
    dagster_home = os.environ.get("DAGSTER_HOME")
    if dagster_home:
        with dg.DagsterInstance.get() as instance:
            broken = run_demo(defs, settings, today, instance)
        env_file = Path(dagster_home) / DEMO_ENV_FILE
        env_file.write_text(f"AGENT_METRICS_START_DATE={first_day.isoformat()}\n")
    else:
        logger.info("DAGSTER_HOME is not set: the runs are not kept (`make demo` keeps them)")
        broken = run_demo(defs, settings, today, dg.DagsterInstance.ephemeral())

    io_manager = defs.resources[CSV_IO_MANAGER_KEY]
    assert isinstance(io_manager, DailyCsvIOManager)
    days = [today - dt.timedelta(days=offset) for offset in range(RANGE_DAYS + 1, 0, -1)]
    print("\nPublished files:")
    for day in days:
        print("  " + io_manager.uri(io_manager.object_key(ASSET_NAME, day.isoformat())))
    yesterday = days[-1].isoformat()
    with pl.Config(tbl_rows=PREVIEW_ROWS, tbl_cols=-1):
        print(f"\n{yesterday}:\n{io_manager.load_day(ASSET_NAME, yesterday)}")
    failed = sorted(e.check_name for e in broken.get_asset_check_evaluations() if not e.passed)
    print(
        f"\n{broken.dagster_run.tags['dagster/partition']} was seeded with broken rows: nothing "
        f"published, failed checks {', '.join(failed)} (on purpose)."
    )
    if dagster_home:
        print(f"Runs recorded in the instance at {dagster_home}: `make dev` shows them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
