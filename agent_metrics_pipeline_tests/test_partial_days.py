"""Partial days: a day far below its usual volume is flagged, or held back until its calls
arrive, and then published by the republication path."""

from __future__ import annotations

import datetime as dt
import statistics

import dagster as dg
import pytest

from agent_metrics_pipeline.core.measurement import UsualVolume
from agent_metrics_pipeline.core.names import JOB_NAME, PUBLISH_PARTIAL_TAG
from agent_metrics_pipeline.quality.usual_volume import USUAL_VOLUME
from agent_metrics_pipeline_tests.helpers import insert_calls, key_for, random_calls
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics
from agent_metrics_pipeline_tests.test_sources import Pipeline, project

TODAY = dt.datetime.now(dt.UTC).date()
# Inside the observation window, which follows the clock, as the republication path needs.
DAY = TODAY - dt.timedelta(days=2)
REFERENCE_VOLUMES = (90, 100, 110, 120)


def the_day_and_its_weeks(seed: int = 3):
    """Full days on the same weekday in each of the four weeks before DAY, and DAY's calls."""
    references = []
    for week, volume in enumerate(REFERENCE_VOLUMES, start=1):
        day = DAY - dt.timedelta(weeks=week)
        references += random_calls(day, days=1, calls_per_day=volume, seed=seed + week)
    return references, random_calls(DAY, days=1, calls_per_day=100, seed=seed)


def held_back_or_flagged(clickhouse, calls_table, bucket, **usual_volume) -> Pipeline:
    return Pipeline(
        project(clickhouse, calls_table, bucket, usual_volume=UsualVolume(**usual_volume))
    )


def run(
    pipeline: Pipeline, day: dt.date, tags: dict[str, str] | None = None
) -> dg.ExecuteInProcessResult:
    return pipeline.defs.resolve_job_def(JOB_NAME).execute_in_process(
        partition_key=str(day), instance=pipeline.instance, tags=tags, raise_on_error=False
    )


def evaluation_of(result: dg.ExecuteInProcessResult, day: dt.date) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == USUAL_VOLUME and evaluation.partition == str(day)
    ]
    return evaluation


def share_of_usual(day_calls: int) -> float:
    return day_calls / statistics.median(REFERENCE_VOLUMES)


def test_a_day_below_half_its_usual_volume_is_flagged_and_published(
    clickhouse, calls_table, bucket
):
    references, day_calls = the_day_and_its_weeks()
    partial = day_calls[:40]
    insert_calls(clickhouse, calls_table, [*references, *partial])
    pipeline = held_back_or_flagged(clickhouse, calls_table, bucket)

    result = run(pipeline, DAY)
    assert result.success
    verdict = evaluation_of(result, DAY)
    assert not verdict.passed and verdict.severity == dg.AssetCheckSeverity.WARN
    assert verdict.metadata["calls"].value == len(partial)
    assert verdict.metadata["usual_calls"].value == statistics.median(REFERENCE_VOLUMES)
    assert verdict.metadata["share"].value == round(share_of_usual(len(partial)), 3)
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(partial)[DAY], DAY)


def test_a_held_back_day_is_published_once_its_calls_arrive(clickhouse, calls_table, bucket):
    references, day_calls = the_day_and_its_weeks()
    insert_calls(clickhouse, calls_table, [*references, *day_calls[:40]])
    pipeline = held_back_or_flagged(clickhouse, calls_table, bucket, hold_back=True)
    pipeline.observe()

    result = run(pipeline, DAY)
    assert not result.success
    message = result.failure_data_for_node("agent_metrics").error.message
    assert f"{DAY} holds {share_of_usual(40):.0%} of its usual calls" in message
    assert "published when its calls arrive" in message
    assert key_for(DAY) not in bucket.keys()
    pipeline.observe()
    assert pipeline.requested() == [], "an unchanged held-back day is not run again"

    insert_calls(clickhouse, calls_table, day_calls[40:])
    pipeline.observe()
    assert pipeline.requested() == [str(DAY)]
    assert run(pipeline, DAY).success
    held_back_then_published = bucket.get(key_for(DAY))
    assert_csv_matches(held_back_then_published, expected_metrics(day_calls)[DAY], DAY)

    complete = held_back_or_flagged(clickhouse, calls_table, bucket, hold_back=True)
    assert run(complete, DAY).success
    assert bucket.get(key_for(DAY)) == held_back_then_published


@pytest.mark.parametrize("why", ["new installation", "listed as quiet", "published on purpose"])
def test_a_partial_day_is_not_held_back_when(why, clickhouse, calls_table, bucket):
    references, day_calls = the_day_and_its_weeks()
    if why == "new installation":
        references = [c for c in references if c.started_at.date() == DAY - dt.timedelta(weeks=1)]
    insert_calls(clickhouse, calls_table, [*references, *day_calls[:40]])
    quiet = (DAY,) if why == "listed as quiet" else ()
    pipeline = held_back_or_flagged(
        clickhouse, calls_table, bucket, hold_back=True, quiet_days=quiet
    )
    tags = {PUBLISH_PARTIAL_TAG: "true"} if why == "published on purpose" else None

    result = run(pipeline, DAY, tags)
    assert result.success
    verdict = evaluation_of(result, DAY)
    assert verdict.passed
    assert verdict.metadata["note"].value
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(day_calls[:40])[DAY], DAY)
