"""The project as users load it: ``defs`` from the environment, and the Dagster CLI over it."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.names import JOB_NAME, OBSERVE_SENSOR_NAME, SCHEDULE_NAME
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline.storage.published_format import METRIC_COLUMNS
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    REPO_ROOT,
    calls_to_parquet,
    load_into_engine,
    random_calls,
    run_ok,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics


def test_defaults_build_embedded_engine_and_local_folder(tmp_path):
    defs = build_definitions(Settings.from_env({"AGENT_METRICS_HOME": str(tmp_path)}))
    clickhouse = defs.resources["clickhouse"]
    assert isinstance(clickhouse, ClickHouseResource) and clickhouse.host is None
    assert Path(clickhouse.embedded_path) == tmp_path / "clickhouse"
    io_manager = defs.resources["csv_io_manager"]
    assert isinstance(io_manager, LocalCsvIOManager)
    assert Path(io_manager.base_dir) == tmp_path / "output"
    asset = defs.resolve_assets_def("agent_metrics")
    assert asset.partitions_def.start == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def test_s3_bucket_switches_to_s3(monkeypatch):
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "not-shown")
    defs = build_definitions(
        Settings.from_env(
            {
                "S3_BUCKET": "metrics",
                "S3_ENDPOINT_URL": "http://127.0.0.1:9",
                "CLICKHOUSE_HOST": "ch.internal",
                "CLICKHOUSE_PASSWORD": "not-shown",
            }
        )
    )
    io_manager = defs.resources["csv_io_manager"]
    assert isinstance(io_manager, S3CsvIOManager)
    assert io_manager.bucket == "metrics"
    assert io_manager.s3.endpoint_url == "http://127.0.0.1:9"
    clickhouse = defs.resources["clickhouse"]
    assert clickhouse.host == "ch.internal"
    assert "not-shown" not in clickhouse.description


@pytest.mark.e2e
def test_dagster_and_dg_clis_materialize_days_and_a_range_into_s3(project_env, bucket, tmp_path):
    first = dt.date(2026, 11, 1)
    calls = random_calls(first - dt.timedelta(days=1), days=10, calls_per_day=200, seed=21)
    calls_to_parquet(calls, tmp_path / "calls.parquet")
    load_into_engine(
        Path(project_env["AGENT_METRICS_HOME"]) / "clickhouse", tmp_path / "calls.parquet"
    )
    env = {
        **project_env,
        "S3_BUCKET": bucket.name,
        "S3_ENDPOINT_URL": bucket.server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    base = [
        "dagster",
        "asset",
        "materialize",
        "-m",
        "agent_metrics_pipeline.definitions",
        "--select",
        "agent_metrics",
    ]

    run_ok([*base, "--partition", "2026-11-08"], env)
    run_ok([*base, "--partition-range", "2026-11-01...2026-11-07"], env)
    checked = run_ok(["dg", "check", "defs"], env)
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    run_ok(["dg", "launch", "--assets", "agent_metrics", "--partition", "2026-11-09"], env)

    days = [first + dt.timedelta(days=i) for i in range(9)]
    assert bucket.keys() == [f"agent_metrics/{d}/agent_metrics_{d}.csv" for d in days]
    expected = expected_metrics(calls)
    for day in days:
        assert_csv_matches(
            bucket.get(f"agent_metrics/{day}/agent_metrics_{day}.csv"), expected[day], day
        )


def test_embedded_engine_runs_in_a_pool_of_one_and_a_server_does_not():
    embedded = build_definitions(Settings.from_env({})).resolve_assets_def("agent_metrics")
    server = build_definitions(Settings.from_env({"CLICKHOUSE_HOST": "ch.internal"}))
    assert embedded.op.pool == "embedded_clickhouse"
    assert server.resolve_assets_def("agent_metrics").op.pool is None
    instance_settings = (DEV_INSTANCE_SETTINGS).read_text()
    assert "default_limit: 1" in instance_settings


def test_backfill_policy_and_retries_follow_the_environment():
    single = build_definitions(Settings.from_env({})).resolve_assets_def("agent_metrics")
    assert single.backfill_policy == dg.BackfillPolicy.single_run()
    split = build_definitions(
        Settings.from_env(
            {
                "AGENT_METRICS_BACKFILL_MAX_DAYS_PER_RUN": "4",
                "AGENT_METRICS_MAX_RETRIES": "5",
                "AGENT_METRICS_RETRY_DELAY_SEC": "2",
            }
        )
    ).resolve_assets_def("agent_metrics")
    assert split.backfill_policy == dg.BackfillPolicy.multi_run(4)
    policy = split.op.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff) == (5, 2, dg.Backoff.EXPONENTIAL)


@pytest.mark.e2e
def test_the_cli_names_the_valid_days_for_a_bad_partition_key(project_env):
    result = subprocess.run(
        [
            *("dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"),
            *("--select", "agent_metrics", "--partition", "2026-02-30"),
        ],
        cwd=REPO_ROOT,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Invalid partition key `2026-02-30`: expected a day as YYYY-MM-DD from 2026-01-01" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_catalog_describes_the_published_file_and_who_owns_it():
    defs = build_definitions(Settings(owners=("team:call-center", "ana@example.com")))
    spec = defs.resolve_assets_def("agent_metrics").specs_by_key[dg.AssetKey("agent_metrics")]
    schema = spec.metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in schema.columns] == [
        ("agent_id", "string"),
        ("avg_call_length_sec", "float"),
        ("p90_call_length_sec", "float"),
        ("total_calls", "int"),
        ("date", "date"),
    ]
    assert all(column.description for column in schema.columns)
    assert [c.name for c in schema.columns] == list(METRIC_COLUMNS)
    assert spec.owners == ["team:call-center", "ana@example.com"]
    assert spec.group_name == "call_center"
    assert spec.metadata["source_table"] == "default.calls"
    (reference,) = spec.metadata["dagster/code_references"].code_references
    assert reference.file_path.endswith("agent_metrics_pipeline/publish/asset.py")


def test_loading_the_definitions_leaves_the_client_libraries_for_the_first_run(
    project_env, tmp_path
):
    """Every run process, the code server and the daemon load the definitions: polars (half of
    Dagster's own import time) loads with the first frame instead, and clickhouse-connect, the
    embedded engine, pyarrow, NumPy and urllib3 with the first connection."""
    probe = (
        "import sys; from agent_metrics_pipeline.definitions import defs; defs(); "
        "print(sorted(name for name in sys.modules if name.startswith('polars.') or "
        "name.split('.')[0] in {'clickhouse_connect', 'chdb', 'pyarrow', 'numpy', 'urllib3'}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout[:500]


def test_every_run_does_its_step_in_the_run_s_own_process():
    """The UI's, the CLI's and backfills' runs go through the implicit asset job, the
    schedule's through its job: none starts a second process for its step."""
    defs = build_definitions(Settings())
    jobs = [defs.resolve_implicit_global_asset_job_def(), defs.resolve_job_def(JOB_NAME)]
    assert [job.executor_def.name for job in jobs] == [dg.in_process_executor.name] * 2


def test_unattended_operation_launches_only_publications():
    """The one job is the publication's; the source is observed by a sensor, with no run."""
    defs = build_definitions(Settings())
    assert [job.name for job in defs.jobs] == [JOB_NAME]
    assert [schedule.name for schedule in defs.schedules] == [SCHEDULE_NAME]
    assert OBSERVE_SENSOR_NAME in [sensor.name for sensor in defs.sensors]
