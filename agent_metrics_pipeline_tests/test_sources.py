"""Late-arriving calls: the observed source, its fingerprints, and the days it republishes."""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from agent_metrics_pipeline.core.names import (
    CALLS_ASSET_NAME,
    CSV_IO_MANAGER_KEY,
    JOB_NAME,
)
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.observe.late_calls import LATE_CALLS_CHECK
from agent_metrics_pipeline.observe.republish import REPUBLISH_SENSOR_NAME
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    insert_calls,
    key_for,
    latest_observations,
    measuring,
    observe,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics

AGENT_METRICS = dg.AssetKey("agent_metrics")
CALLS = dg.AssetKey(CALLS_ASSET_NAME)
LATE_CALLS_KEY = dg.AssetCheckKey(CALLS, LATE_CALLS_CHECK)
# The days must have ended and sit inside the observation window, which follows the clock.
TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [TODAY - dt.timedelta(days=offset) for offset in range(5, 0, -1)]


def project(
    clickhouse,
    calls_table,
    bucket,
    window_days: int = 30,
    publish_today: bool = False,
    io_manager=None,
    **measurement,
) -> dg.Definitions:
    """The project's definitions on the test's engine and bucket (or ``io_manager``)."""
    built = build_definitions(
        Settings(
            start_date=str(DAYS[0] - dt.timedelta(days=60)),
            measurement=measuring(calls_table, **measurement),
            observe_window_days=window_days,
            publish_today=publish_today,
        )
    )
    return dg.Definitions(
        assets=built.assets,
        asset_checks=built.asset_checks,
        jobs=built.jobs,
        schedules=built.schedules,
        sensors=built.sensors,
        resources={
            "clickhouse": clickhouse,
            CSV_IO_MANAGER_KEY: io_manager or bucket.io_manager(partial_days=publish_today),
        },
    )


def late_calls_evaluations(tick) -> list[dg.AssetCheckEvaluation]:
    return [
        event
        for event in tick.asset_events
        if isinstance(event, dg.AssetCheckEvaluation) and event.check_name == LATE_CALLS_CHECK
    ]


def late_call(day: dt.date, call_id: str = "late-1") -> Call:
    return Call(call_id, "agent-001", dt.datetime.combine(day, dt.time(13), UTC), 42.5, "Answered")


class Pipeline:
    """The project on one instance, driven as the daemon would: observe, evaluate, run."""

    def __init__(self, defs: dg.Definitions) -> None:
        self.defs = defs
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor = None
        self.observation_cursor: str | None = None

    def observe(self, defs: dg.Definitions | None = None):
        """One due tick of the observation sensor; what it recorded is in the instance."""
        defs = defs or self.defs
        tick = observe(defs, self.instance, defs.resources["clickhouse"], self.observation_cursor)
        self.observation_cursor = tick.cursor
        return tick

    def requested(self) -> list[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor
        )
        self.cursor = result.cursor
        return sorted(result.get_requested_partitions(AGENT_METRICS))

    def materialize(self, first: str, last: str | None = None) -> None:
        job = self.defs.resolve_job_def(JOB_NAME)
        if last is None:
            job.execute_in_process(partition_key=first, instance=self.instance)
        else:
            job.execute_in_process(
                instance=self.instance,
                tags={
                    "dagster/asset_partition_range_start": first,
                    "dagster/asset_partition_range_end": last,
                },
            )


@pytest.fixture
def published(clickhouse, calls_table, bucket):
    """Five days observed and published in one run."""
    calls = random_calls(DAYS[0], days=len(DAYS), calls_per_day=200, seed=41)
    insert_calls(clickhouse, calls_table, calls)
    pipeline = Pipeline(project(clickhouse, calls_table, bucket))
    pipeline.observe()
    pipeline.materialize(str(DAYS[0]), str(DAYS[-1]))
    return pipeline, calls


def head(bucket, day: dt.date) -> tuple[str, dt.datetime]:
    response = bucket.server.client().head_object(Bucket=bucket.name, Key=key_for(day))
    return response["ETag"], response["LastModified"]


def test_observation_fingerprints_each_day_of_the_window_in_one_query(published):
    pipeline, calls = published
    pipeline.observe()
    window = [TODAY - dt.timedelta(days=offset) for offset in range(30, 0, -1)]
    observations = latest_observations(pipeline.instance, window)
    assert len(observations) == 30
    for day in DAYS:
        counted = sum(c.started_at.date() == day and c.status == "Answered" for c in calls)
        observation = observations[str(day)]
        assert observation.metadata["calls"].value == counted
        assert observation.tags["dagster/data_version"].startswith(f"{counted}:")
    assert len({observations[str(day)].tags["dagster/data_version"] for day in DAYS}) == 5


def test_a_late_call_republishes_exactly_its_day(published, clickhouse, calls_table, bucket):
    pipeline, calls = published
    assert pipeline.requested() == []
    pipeline.observe()
    assert pipeline.requested() == [], "an unchanged source requests nothing"
    before = {day: head(bucket, day) for day in DAYS}

    late = late_call(DAYS[1])
    insert_calls(clickhouse, calls_table, [late])
    pipeline.observe()
    (day,) = pipeline.requested()
    assert day == str(DAYS[1])

    time.sleep(1.1)  # S3 modification times have one-second resolution.
    pipeline.materialize(day)
    assert_csv_matches(
        bucket.get(key_for(DAYS[1])), expected_metrics([*calls, late])[DAYS[1]], DAYS[1]
    )
    for other in DAYS:
        if other != DAYS[1]:
            assert head(bucket, other) == before[other], f"{other} was rewritten"
    pipeline.observe()
    assert pipeline.requested() == []


def test_several_changed_days_go_out_as_one_backfill_run(
    published, clickhouse, calls_table, bucket
):
    pipeline, _ = published
    insert_calls(
        clickhouse, calls_table, [late_call(DAYS[1], "late-a"), late_call(DAYS[2], "late-b")]
    )
    pipeline.observe()
    sensor = pipeline.defs.resolve_sensor_def(REPUBLISH_SENSOR_NAME)
    tick = sensor.evaluate_tick(
        dg.build_sensor_context(
            instance=pipeline.instance, repository_def=pipeline.defs.get_repository_def()
        )
    )
    (request,) = tick.run_requests
    # A backfill of the two days, which the single-run backfill policy launches as one run.
    subset = request.asset_graph_subset
    assert sorted(subset.partitions_subsets_by_asset_key[AGENT_METRICS].get_partition_keys()) == [
        str(DAYS[1]),
        str(DAYS[2]),
    ]


def test_a_late_call_older_than_the_window_is_reported_with_its_day(
    published, clickhouse, calls_table, bucket
):
    pipeline, _ = published
    narrow = project(clickhouse, calls_table, bucket, window_days=3)
    pipeline.observe(narrow)  # the late-calls check's first run sets its baseline

    insert_calls(clickhouse, calls_table, [late_call(DAYS[0])])
    tick = pipeline.observe(narrow)
    (evaluation,) = late_calls_evaluations(tick)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["late_days"].value == [str(DAYS[0])]
    # Outside the window it is reported, not republished by itself.
    pipeline.defs = narrow
    assert pipeline.requested() == []

    quiet = pipeline.observe(narrow)
    (evaluation,) = late_calls_evaluations(quiet)
    assert evaluation.passed, "reported once, not at every observation"


def test_the_late_calls_check_run_by_hand_looks_since_its_newest_result(
    published, clickhouse, calls_table, bucket
):
    pipeline, _ = published
    narrow = project(clickhouse, calls_table, bucket, window_days=3)
    pipeline.observe(narrow)  # the sensor's looks leave the newest result

    insert_calls(clickhouse, calls_table, [late_call(DAYS[0])])
    by_hand = dg.Definitions(
        assets=narrow.assets,
        asset_checks=narrow.asset_checks,
        jobs=[dg.define_asset_job("by_hand", selection=dg.AssetSelection.checks(LATE_CALLS_KEY))],
        resources=narrow.resources,
    )
    result = by_hand.resolve_job_def("by_hand").execute_in_process(instance=pipeline.instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["late_days"].value == [str(DAYS[0])]
