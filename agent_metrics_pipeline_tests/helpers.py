"""Builders shared by the tests: sample calls and one-call materializations."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import polars as pl

from agent_metrics_pipeline.assets import CSV_IO_MANAGER_KEY, build_agent_metrics_asset
from agent_metrics_pipeline.config import InvalidRowsPolicy, Settings, SourceTable
from agent_metrics_pipeline.io_managers import DailyCsvIOManager
from agent_metrics_pipeline.partitions import daily_partitions
from agent_metrics_pipeline.resources import ClickHouseResource, MetricsSettingsResource
from agent_metrics_pipeline_tests.oracle import Call

REPO_ROOT = Path(__file__).resolve().parents[1]
UTC = dt.UTC
AWKWARD_AGENT_IDS = ["a,b", 'say "hi"', "Zoë-Ångström", "007", "line\nbreak", "  padded "]
STATUSES = ["Answered", "Answered", "Answered", "Missed", "Voicemail", "answered"]


def random_calls(
    first_day: dt.date,
    days: int,
    calls_per_day: int,
    agents: int = 25,
    seed: int = 7,
) -> list[Call]:
    """Calls spread over whole days in UTC, with awkward agent ids and mixed statuses."""
    rng = random.Random(seed)
    agent_ids = [f"agent-{i:03d}" for i in range(agents)] + AWKWARD_AGENT_IDS
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=UTC)
    calls = []
    for n in range(days * calls_per_day):
        calls.append(
            Call(
                call_id=f"call-{seed}-{n}",
                agent_id=rng.choice(agent_ids),
                started_at=start + dt.timedelta(milliseconds=rng.randrange(days * 86_400_000)),
                duration_sec=round(rng.lognormvariate(5, 0.8), rng.choice([0, 1, 3])),
                status=rng.choice(STATUSES),
            )
        )
    return calls


def metrics_settings(
    source: SourceTable,
    statuses: Sequence[str] = ("Answered",),
    invalid_rows: InvalidRowsPolicy = InvalidRowsPolicy.FAIL,
    **thresholds,
) -> MetricsSettingsResource:
    return MetricsSettingsResource(
        database=source.database,
        table=source.table,
        columns=dict(source.columns),
        statuses=list(statuses),
        invalid_rows=invalid_rows,
        **thresholds,
    )


def build_asset(timezone: str = "UTC", start_date: str = "2026-01-01") -> dg.AssetsDefinition:
    return build_agent_metrics_asset(
        daily_partitions(Settings(timezone=timezone, start_date=start_date))
    )


def materialize(
    clickhouse: ClickHouseResource,
    settings: MetricsSettingsResource,
    io_manager: DailyCsvIOManager,
    first_day: str,
    last_day: str | None = None,
    timezone: str = "UTC",
    raise_on_error: bool = True,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """One run over ``first_day`` (or the range ``first_day..last_day``)."""
    resources = {
        "clickhouse": clickhouse,
        "metrics_settings": settings,
        CSV_IO_MANAGER_KEY: io_manager,
    }
    asset = build_asset(timezone)
    if last_day is None:
        return dg.materialize(
            [asset],
            partition_key=first_day,
            resources=resources,
            raise_on_error=raise_on_error,
            instance=instance,
        )
    return dg.materialize(
        [asset],
        resources=resources,
        tags={
            "dagster/asset_partition_range_start": first_day,
            "dagster/asset_partition_range_end": last_day,
        },
        raise_on_error=raise_on_error,
        instance=instance,
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The error of the run's one failed step."""
    assert not result.success
    (failure,) = result.get_step_failure_events()
    return str(failure.step_failure_data.error)


def calls_to_parquet(calls: Sequence[Call], path: Path) -> None:
    pl.DataFrame(
        {
            "call_id": [c.call_id for c in calls],
            "agent_id": [c.agent_id for c in calls],
            "started_at": [c.started_at for c in calls],
            "duration_sec": [c.duration_sec for c in calls],
            "status": [c.status for c in calls],
        },
        schema_overrides={"started_at": pl.Datetime("ms", "UTC")},
    ).write_parquet(path)


def run_ok(args: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess:
    """Run a command from the repository root; fail the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load_into_engine(engine_dir: Path, calls_parquet: Path) -> None:
    """Fill an embedded engine folder from another process (this one may hold a different one)."""
    run_ok(
        [
            sys.executable,
            "-m",
            "agent_metrics_pipeline_tests.engine_cli",
            "load",
            str(engine_dir),
            str(calls_parquet),
        ],
        env=None,
    )
