"""End to end through `dagster dev` (webserver + daemon) as users run it.

A partition backfill launched over the webserver's GraphQL API goes through the daemon, the run
queue (with the embedded engine's pool of one) and the runs' own processes, against the embedded
engine and the local S3 server.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent_metrics_pipeline.quality import checks
from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    Bucket,
    backfill_to_its_end,
    calls_to_parquet,
    dagster_ui,
    graphql,
    load_into_engine,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e

FIRST_DAY = dt.date(2026, 11, 1)
DAYS = [FIRST_DAY + dt.timedelta(days=i) for i in range(10)]
BACKFILL_TIMEOUT_SEC = 300

POOLS = """
{ instance { concurrencyLimits { concurrencyKey slotCount } } }
"""
ASSET_CHECKS = """
{
  assetNodeOrError(assetKey: {path: ["agent_metrics"]}) {
    ... on AssetNode {
      partitionKeys
      assetChecksOrError { ... on AssetChecks { checks { name } } }
    }
  }
}
"""


@contextmanager
def dagster_dev(env: dict[str, str], workdir: Path) -> Iterator[str]:
    command = ["dagster", "dev", "-m", "agent_metrics_pipeline.definitions"]
    with dagster_ui(command, env, workdir) as base:
        yield f"{base}/graphql"


def run_backfill(url: str) -> list[dict]:
    status, runs = backfill_to_its_end(url, DAYS, BACKFILL_TIMEOUT_SEC)
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), (status, runs)
    return runs


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory) -> tuple[Path, list]:
    """An embedded engine folder with ten days of calls, for both scenarios."""
    workdir = tmp_path_factory.mktemp("dagster_dev")
    calls = random_calls(FIRST_DAY, days=len(DAYS), calls_per_day=200, seed=41)
    calls_to_parquet(calls, workdir / "calls.parquet")
    load_into_engine(workdir / "home" / "clickhouse", workdir / "calls.parquet")
    return workdir, calls


@pytest.mark.parametrize(("max_days_per_run", "expected_runs"), [(None, 1), (4, 3)])
def test_backfill_through_the_webserver_and_daemon(
    seeded_home, s3_server, max_days_per_run, expected_runs
):
    workdir, calls = seeded_home
    dagster_home = workdir / f"dagster_home_{max_days_per_run}"
    dagster_home.mkdir()
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    bucket = Bucket(f"backfill-{max_days_per_run or 'single'}", s3_server)
    s3_server.client().create_bucket(Bucket=bucket.name)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENT_METRICS_", "CLICKHOUSE_", "S3_", "DAGSTER_"))
    }
    env.update(
        DAGSTER_HOME=str(dagster_home),
        AGENT_METRICS_HOME=str(workdir / "home"),
        AGENT_METRICS_START_DATE="2026-01-01",
        S3_BUCKET=bucket.name,
        S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    if max_days_per_run:
        env["AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN"] = str(max_days_per_run)

    with dagster_dev(env, workdir) as url:
        node = graphql(url, ASSET_CHECKS)["assetNodeOrError"]
        check_names = {check["name"] for check in node["assetChecksOrError"]["checks"]}
        assert check_names == set(checks.CHECK_DESCRIPTIONS)
        assert str(DAYS[0]) in node["partitionKeys"]

        started = time.monotonic()
        runs = run_backfill(url)
        elapsed = time.monotonic() - started
        pools = graphql(url, POOLS)["instance"]["concurrencyLimits"]

    print(
        f"\n{len(DAYS)}-day backfill, max days per run {max_days_per_run}: "
        f"{len(runs)} run(s) in {elapsed:.1f}s"
    )
    assert len(runs) == expected_runs
    assert all(run["status"] == "SUCCESS" for run in runs)
    # The embedded engine opens in one process at a time: a pool of one keeps the steps apart.
    assert {"concurrencyKey": "embedded_clickhouse", "slotCount": 1} in pools
    steps = sorted(
        (step["startTime"], step["endTime"])
        for run in runs
        for step in run["stepStats"]
        if step["stepKey"] == "agent_metrics"
    )
    assert len(steps) == expected_runs
    for (_, previous_end), (next_start, _) in zip(steps, steps[1:], strict=False):
        assert next_start >= previous_end, f"agent_metrics steps overlapped: {steps}"
    assert bucket.keys() == [f"agent_metrics/{d}/agent_metrics_{d}.csv" for d in DAYS]
    expected = expected_metrics(calls)
    for day in DAYS:
        assert_csv_matches(
            bucket.get(f"agent_metrics/{day}/agent_metrics_{day}.csv"), expected[day], day
        )
