"""Today's running figures (AGENT_METRICS_PUBLISH_TODAY): today is published as partial under its
own key, refreshed when its calls change no more often than the setting, and replaced by the
final file once the day has ended, while everything counting back from yesterday stays put.

Dagster's clock is frozen at chosen times, so "today" never depends on when the tests run."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test, freeze_time

from agent_metrics_pipeline.core.names import (
    JOB_NAME,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SCHEDULE_NAME,
    TODAY_SENSOR_NAME,
)
from agent_metrics_pipeline.core.partitions import ended_day_keys
from agent_metrics_pipeline.observe.readings import observation_window
from agent_metrics_pipeline.operations.alerts import build_late_day_alert_sensor
from agent_metrics_pipeline.operations.schedule import expected_day
from agent_metrics_pipeline.quality.usual_volume import USUAL_VOLUME
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
    """A tick of the sensor refreshing today, as the daemon runs it."""
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


def at(moment: dt.datetime, pipeline: Pipeline, cursor: str | None) -> dg.SensorResult:
    """A tick of the sensor at ``moment``."""
    with freeze_time(moment):
        return tick(pipeline, cursor)


def run_at(moment: dt.datetime, pipeline: Pipeline, day: dt.date) -> dg.ExecuteInProcessResult:
    with freeze_time(moment):
        return run(pipeline, str(day))


def requested(result: dg.SensorResult) -> list[str]:
    return [request.partition_key for request in result.run_requests]


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

    first = at(MORNING, pipeline, None)
    assert requested(first) == [str(DAY)]
    # The run ends a little after the tick that requested it, as runs do.
    result = run_at(MORNING + dt.timedelta(minutes=2), pipeline, DAY)
    assert key_for(DAY) not in bucket.keys(), "the day's own key holds only the final file"
    assert_csv_matches(bucket.get(partial_key(DAY)), expected_metrics(so_far)[DAY], DAY)
    marker = json.loads(bucket.get(marker_key(DAY)))
    assert marker["partial"] is True and marker["key"] == partial_key(DAY)
    assert dt.datetime.fromisoformat(marker["computed_at"]) == MORNING + dt.timedelta(minutes=2)
    (completeness,) = [
        evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == USUAL_VOLUME
    ]
    assert completeness.passed and "not ended" in completeness.metadata["note"].value

    insert_calls(clickhouse, calls_table, late)
    too_soon = at(MORNING + dt.timedelta(minutes=61), pipeline, first.cursor)
    assert requested(too_soon) == [], "within the hour after the publication, not the request"
    refresh = at(MORNING + dt.timedelta(minutes=63), pipeline, too_soon.cursor)
    assert requested(refresh) == [str(DAY)]
    refreshed_at = MORNING + dt.timedelta(minutes=64)
    run_at(refreshed_at, pipeline, DAY)
    refreshed = bucket.get(partial_key(DAY))
    assert_csv_matches(refreshed, expected_metrics(calls)[DAY], DAY)
    marker = json.loads(bucket.get(marker_key(DAY)))
    assert dt.datetime.fromisoformat(marker["computed_at"]) == refreshed_at
    unchanged = at(refreshed_at + dt.timedelta(hours=2), pipeline, refresh.cursor)
    assert requested(unchanged) == [], "calls unchanged since the refresh: nothing to publish"

    # The day ends: the first tick after midnight requests its final run, once.
    midnight = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(), UTC)
    ended = at(midnight + dt.timedelta(minutes=5), pipeline, unchanged.cursor)
    assert requested(ended) == [str(DAY)], "the ended day's final run; the new day has no call"
    run_at(midnight + dt.timedelta(minutes=6), pipeline, DAY)
    assert bucket.get(key_for(DAY)) == refreshed
    assert [key for key in bucket.keys() if "/partial/" in key] == []
    assert requested(at(midnight + dt.timedelta(minutes=10), pipeline, ended.cursor)) == []

    with freeze_time(NEXT_SCHEDULE_TICK):
        context = dg.build_schedule_context(
            instance=pipeline.instance,
            scheduled_execution_time=NEXT_SCHEDULE_TICK,
            repository_def=pipeline.defs.get_repository_def(),
        )
        schedule = pipeline.defs.get_schedule_def(SCHEDULE_NAME)
        (scheduled,) = schedule.evaluate_tick(context).run_requests
    assert scheduled.partition_key == str(DAY), "the schedule publishes the day that ended"


def test_today_is_not_refreshed_while_a_run_of_it_is_in_progress(clickhouse, calls_table, bucket):
    insert_calls(clickhouse, calls_table, random_calls(DAY, days=1, calls_per_day=50, seed=63))
    pipeline = Pipeline(project(clickhouse, calls_table, bucket, publish_today=True))
    # A backfill of the last two days, launched from the UI, not yet finished.
    create_run_for_test(
        pipeline.instance,
        job_name="__ASSET_JOB",
        status=dg.DagsterRunStatus.STARTED,
        tags={RANGE_START_TAG: str(DAY - dt.timedelta(days=1)), RANGE_END_TAG: str(DAY)},
        asset_selection=frozenset({dg.AssetKey("agent_metrics")}),
    )
    busy = at(MORNING, pipeline, None)
    assert requested(busy) == [] and "has not finished" in (busy.skip_message or "")


def test_a_day_published_only_as_partial_is_late_at_its_deadline(
    clickhouse, calls_table, bucket, webhook
):
    insert_calls(clickhouse, calls_table, random_calls(DAY, days=1, calls_per_day=50, seed=64))
    pipeline = Pipeline(project(clickhouse, calls_table, bucket, publish_today=True))
    run_at(MORNING, pipeline, DAY)
    partitions_def = pipeline.defs.resolve_assets_def("agent_metrics").partitions_def
    now = [MORNING]
    alert = build_late_day_alert_sensor(
        partitions_def, 3, webhook.url, "http://ui", clock=lambda: now[0]
    )

    def late_day_tick(cursor: str | None):
        context = dg.build_sensor_context(instance=pipeline.instance, cursor=cursor)
        return alert.evaluate_tick(context)

    armed = late_day_tick(None)
    now[0] = NEXT_SCHEDULE_TICK + dt.timedelta(hours=2)
    late_day_tick(armed.cursor)
    (body,) = webhook.bodies
    assert json.loads(body)["partitions"] == str(DAY)


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


LAYOUTS = {
    "local, one file": ("local", {}),
    "local, one gzipped file": ("local", {"gzip": True}),
    "local, parts": ("local", {"rows_per_file": 7}),
    "s3, parts": ("s3", {"rows_per_file": 7}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_partial_day_is_marked_and_then_replaced_in_every_layout(
    layout, clickhouse, calls_table, bucket, tmp_path
):
    calls = random_calls(DAY, days=1, calls_per_day=150, seed=62)
    so_far, late = calls[:100], calls[100:]
    insert_calls(clickhouse, calls_table, so_far)
    store, options = LAYOUTS[layout]
    folder = tmp_path / "output"
    if store == "local":
        io_manager = LocalCsvIOManager(base_dir=str(folder), partial_days=True, **options)

        def keys() -> list[str]:
            return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    else:
        io_manager = bucket.io_manager(partial_days=True, **options)
        keys = bucket.keys
    pipeline = Pipeline(
        project(clickhouse, calls_table, bucket, publish_today=True, io_manager=io_manager)
    )

    run_at(MORNING, pipeline, DAY)
    assert keys() and all(key.startswith(f"agent_metrics/{DAY}/partial/") for key in keys())
    marker = io_manager.partial_marker(str(DAY))
    assert dt.datetime.fromisoformat(str(marker["computed_at"])) == MORNING
    assert_frame_matches(
        io_manager.load_day("agent_metrics", str(DAY), partial=True), expected_metrics(so_far)[DAY]
    )

    insert_calls(clickhouse, calls_table, late)
    run_at(NEXT_SCHEDULE_TICK, pipeline, DAY)
    assert not [key for key in keys() if "/partial/" in key]
    assert not (folder / "agent_metrics" / str(DAY) / "partial").exists()
    assert_frame_matches(
        io_manager.load_day("agent_metrics", str(DAY)), expected_metrics(calls)[DAY]
    )


def assert_frame_matches(frame, expected) -> None:
    """A day read back against the oracle's rows: agents, calls and lengths to the cent."""
    assert frame.get_column("agent_id").to_list() == [row.agent_id for row in expected]
    assert frame.get_column("total_calls").to_list() == [row.total_calls for row in expected]
    for column, oracle in (("avg_call_length_sec", "avg"), ("p90_call_length_sec", "p90")):
        got = frame.get_column(column).to_list()
        assert got == pytest.approx([getattr(row, oracle) for row in expected], abs=0.005001)
