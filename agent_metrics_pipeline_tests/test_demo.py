"""The demo as a new user runs it: its own process, the embedded default, correct files, and
runs recorded in the instance the UI opens."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.instance.ref import InstanceRef

from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME, JOB_NAME
from agent_metrics_pipeline.demo.runs import SEED_DAYS
from agent_metrics_pipeline.demo.sample_calls import BROKEN_CALLS
from agent_metrics_pipeline_tests.helpers import run_ok
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e
AGENT_METRICS = dg.AssetKey("agent_metrics")


def published(home: Path) -> dict[Path, bytes]:
    files = sorted((home / "output" / "agent_metrics").glob("*/agent_metrics_*.csv"))
    return {path: path.read_bytes() for path in files}


def test_demo_publishes_correct_files_and_records_its_runs(project_env, tmp_path):
    result = run_ok([sys.executable, "-m", "agent_metrics_pipeline.demo"], project_env)
    home = Path(project_env["AGENT_METRICS_HOME"])
    files = published(home)
    assert len(files) == 8
    assert str(list(files)[0]) in result.stdout
    # A short summary; Dagster's lines for every run go to the log file it names.
    log = Path(project_env["DAGSTER_HOME"]) / "demo.log"
    assert len(result.stdout.splitlines()) < 40 and result.stderr == ""
    assert f"log of every run: {log}" in result.stdout
    assert "RUN_SUCCESS" in log.read_text() and "RUN_SUCCESS" not in result.stdout

    run_ok(
        [
            sys.executable,
            "-m",
            "agent_metrics_pipeline_tests.engine_cli",
            "dump",
            str(home / "clickhouse"),
            str(tmp_path / "seeded.parquet"),
        ],
        project_env,
    )
    calls = [
        Call(**row) for row in pl.read_parquet(tmp_path / "seeded.parquet").iter_rows(named=True)
    ]
    broken_ids = {call_id for call_id, _, _ in BROKEN_CALLS}
    (broken_day,) = {call.started_at.date() for call in calls if call.call_id in broken_ids}
    expected = expected_metrics(calls)
    published_days = [dt.date.fromisoformat(path.parent.name) for path in files]
    assert broken_day not in published_days
    assert published_days[0] == broken_day + dt.timedelta(days=1)
    for path, day in zip(files, published_days, strict=True):
        assert len(expected[day]) == 300
        assert_csv_matches(files[path], expected[day], day)

    # The UI opens this instance: the published days are materialized, the broken day's
    # blocking checks failed there with the offending call ids, and the partitions start
    # where the sample data does.
    dagster_home = Path(project_env["DAGSTER_HOME"])
    first_day = min(call.started_at.date() for call in calls)
    assert (dagster_home / "demo.env").read_text() == f"AGENT_METRICS_START_DATE={first_day}\n"
    assert first_day == published_days[-1] - dt.timedelta(days=SEED_DAYS - 1)

    def recorded() -> tuple[set[str], dict[str, list[str]]]:
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
            materialized = instance.get_materialized_partitions(AGENT_METRICS)
            failed = {}
            for name in ("no_nulls", "no_negative_values"):
                (record,) = instance.event_log_storage.get_asset_check_execution_history(
                    dg.AssetCheckKey(AGENT_METRICS, name),
                    limit=1,
                    partition_filter=PartitionKeyFilter(key=str(broken_day)),
                )
                evaluation = record.event.dagster_event.event_specific_data
                assert not evaluation.passed
                assert evaluation.metadata["source_offending_days"].value == [str(broken_day)]
                failed[name] = evaluation.metadata["sample_call_ids"].value
            # Launched through the code location, as the UI launches: each can be re-executed.
            # The three publications are the runs; the source's observation is none.
            runs = instance.get_runs()
            assert len(runs) >= 3 and all(run.remote_job_origin is not None for run in runs)
            assert {run.job_name for run in runs} == {JOB_NAME}
            observed = instance.fetch_observations(dg.AssetKey(CALLS_ASSET_NAME), limit=1000)
            assert len({record.partition_key for record in observed.records}) == 30
            assert {run.remote_job_origin.location_name for run in runs} == {
                "agent_metrics_pipeline"
            }
        return materialized, failed

    materialized, failed = recorded()
    assert materialized == {str(day) for day in published_days}
    assert failed == {
        "no_nulls": sorted(c for c, agent, _ in BROKEN_CALLS if agent is None),
        "no_negative_values": [c for c, agent, length in BROKEN_CALLS if length < 0],
    }

    # Running it again changes nothing a user can see.
    run_ok([sys.executable, "-m", "agent_metrics_pipeline.demo"], project_env)
    assert published(home) == files
    assert recorded() == (materialized, failed)
