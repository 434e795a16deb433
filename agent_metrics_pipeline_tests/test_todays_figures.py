"""Today's running figures (AGENT_METRICS_PUBLISH_TODAY): today is published as partial under its
own key, refreshed when its calls change no more often than the setting, and replaced by the
final file once the day has ended, while everything counting back from yesterday stays put.

Dagster's clock is frozen at chosen times, so "today" never depends on when the tests run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import freeze_time

from agent_metrics_pipeline.core.names import JOB_NAME, SCHEDULE_NAME, TODAY_SENSOR_NAME
from agent_metrics_pipeline.core.partitions import ended_day_keys
from agent_metrics_pipeline.observe.readings import observation_window
from agent_metrics_pipeline.operations.schedule import expected_day
from agent_metrics_pipeline.publish.usual_volume import USUAL_VOLUME
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import UTC, insert_calls, key_for, random_calls
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics
from agent_metrics_pipeline_tests.test_sources import Pipeline, project

# "Today" for the tests: a day inside the partitions of the project, whatever the real date.
DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)
MORNING = dt.datetime.combine(DAY, dt.time(10), UTC)
NEXT_SCHEDULE_TICK = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(2), UTC)


def partial_key(day: dt.date) -> str:
    return f"agent_metrics/{day}/partial/agent_metrics_{day}.csv"


def marker_key(day: dt.date) -> str:
    return f"agent_metrics/{day}/partial/as_of.json"


def tick(pipeline: Pipeline, cursor: str | None) -> dg.SensorResult:
    sensor = pipeline.defs.get_sensor_def(TODAY_SENSOR_NAME)
    context = dg.build_sensor_context(
        instance=pipeline.instance,
        cursor=cursor,
        definitions=pipeline.defs,
        resources={"clickhouse": pipeline.defs.resources["clickhouse"]},
    )
    return sensor.evaluate_tick(context)


def run(pipeline: Pipeline, day: str) -> dg.ExecuteInProcessResult:
    job = pipeline.defs.resolve_job_def(JOB_NAME)
    return job.execute_in_process(partition_key=day, instance=pipeline.instance)


def test_today_is_published_as_partial_refreshed_and_replaced_by_the_final_file(
    clickhouse, calls_table, bucket
):
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=61)
    so_far, late = calls[:120], calls[120:]
    insert_calls(clickhouse, calls_table, so_far)
    pipeline = Pipeline(project(clickhouse, calls_table, bucket, publish_today=True))

    with freeze_time(MORNING):
        # The deployment's observation has run before (it reads the days that have ended).
        pipeline.observe()
        first = tick(pipeline, None)
        assert [request.partition_key for request in first.run_requests] == [str(DAY)]
        result = run(pipeline, str(DAY))
    assert key_for(DAY) not in bucket.keys(), "the day's own key holds only the final file"
    assert_csv_matches(bucket.get(partial_key(DAY)), expected_metrics(so_far)[DAY], DAY)
    marker = json.loads(bucket.get(marker_key(DAY)))
    assert marker["partial"] is True
    assert dt.datetime.fromisoformat(marker["computed_at"]) == MORNING
    (completeness,) = [
        evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == USUAL_VOLUME
    ]
    assert completeness.passed and "not ended" in completeness.metadata["note"].value

    insert_calls(clickhouse, calls_table, late)
    with freeze_time(MORNING + dt.timedelta(minutes=30)):
        too_soon = tick(pipeline, first.cursor)
    assert not too_soon.run_requests, "no refresh within the hour after a publication"
    refreshed_at = MORNING + dt.timedelta(minutes=61)
    with freeze_time(refreshed_at):
        refresh = tick(pipeline, first.cursor)
        assert [request.partition_key for request in refresh.run_requests] == [str(DAY)]
        run(pipeline, str(DAY))
    refreshed = bucket.get(partial_key(DAY))
    assert_csv_matches(refreshed, expected_metrics(calls)[DAY], DAY)
    marker = json.loads(bucket.get(marker_key(DAY)))
    assert dt.datetime.fromisoformat(marker["computed_at"]) == refreshed_at
    with freeze_time(refreshed_at + dt.timedelta(hours=2)):
        unchanged = tick(pipeline, refresh.cursor)
    assert not unchanged.run_requests, "calls unchanged since the refresh: nothing to publish"

    with freeze_time(NEXT_SCHEDULE_TICK - dt.timedelta(hours=1, minutes=50)):
        pipeline.observe()
        assert pipeline.requested() == [str(DAY)], "ended, the partial day turns stale"
    with freeze_time(NEXT_SCHEDULE_TICK):
        schedule = pipeline.defs.get_schedule_def(SCHEDULE_NAME)
        context = dg.build_schedule_context(
            instance=pipeline.instance,
            scheduled_execution_time=NEXT_SCHEDULE_TICK,
            repository_def=pipeline.defs.get_repository_def(),
        )
        (scheduled,) = schedule.evaluate_tick(context).run_requests
        assert scheduled.partition_key == str(DAY), "the schedule publishes the day that ended"
        run(pipeline, str(DAY))
    assert bucket.get(key_for(DAY)) == refreshed
    assert [key for key in bucket.keys() if "/partial/" in key] == []


def test_whatever_counts_back_from_yesterday_still_does_with_today_published(
    clickhouse, calls_table, bucket
):
    defs = project(clickhouse, calls_table, bucket, publish_today=True)
    partitions_def = defs.resolve_assets_def("agent_metrics").partitions_def
    yesterday = str(DAY - dt.timedelta(days=1))
    with freeze_time(MORNING):
        assert partitions_def.get_last_partition_key() == str(DAY)
        assert ended_day_keys(partitions_def)[-1] == yesterday
        assert observation_window(partitions_def, 30)[-1] == DAY - dt.timedelta(days=1)
    schedule_tick = dt.datetime.combine(DAY, dt.time(2), UTC)
    with freeze_time(schedule_tick):
        context = dg.build_schedule_context(
            scheduled_execution_time=schedule_tick, repository_def=defs.get_repository_def()
        )
        requests = defs.get_schedule_def(SCHEDULE_NAME).evaluate_tick(context).run_requests
    assert [request.partition_key for request in requests] == [yesterday]
    due = expected_day(partitions_def, MORNING, deadline_hour=3)
    assert due is not None and due[0] == yesterday

    without = project(clickhouse, calls_table, bucket).get_sensor_def
    with pytest.raises(dg.DagsterInvariantViolationError):
        without(TODAY_SENSOR_NAME)


def published_keys(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("rows_per_file", [None, 7], ids=["one file", "parts"])
def test_a_partial_day_in_a_local_folder_is_marked_in_both_layouts(
    rows_per_file, clickhouse, calls_table, bucket, tmp_path
):
    calls = random_calls(DAY, days=1, calls_per_day=150, seed=62)
    insert_calls(clickhouse, calls_table, calls)
    folder = tmp_path / "output"
    io_manager = LocalCsvIOManager(
        base_dir=str(folder), rows_per_file=rows_per_file, partial_days=True
    )
    pipeline = Pipeline(
        project(clickhouse, calls_table, bucket, publish_today=True, io_manager=io_manager)
    )

    with freeze_time(MORNING):
        run(pipeline, str(DAY))
    keys = published_keys(folder)
    assert keys and all(key.startswith(f"agent_metrics/{DAY}/partial/") for key in keys)
    marker = io_manager.partial_marker(str(DAY))
    assert dt.datetime.fromisoformat(str(marker["computed_at"])) == MORNING
    running = io_manager.load_day("agent_metrics", str(DAY), partial=True)
    expected = expected_metrics(calls)[DAY]
    assert running.get_column("agent_id").to_list() == [row.agent_id for row in expected]
    assert running.get_column("total_calls").to_list() == [row.total_calls for row in expected]

    with freeze_time(NEXT_SCHEDULE_TICK):
        run(pipeline, str(DAY))
    assert not [key for key in published_keys(folder) if "/partial/" in key]
    final = io_manager.load_day("agent_metrics", str(DAY))
    assert final.equals(running)
