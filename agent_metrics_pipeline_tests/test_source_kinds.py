"""Sources as installations have them: views and Merge tables, repeated call ids, tables that
keep row versions, and agent ids a spreadsheet would run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest

from agent_metrics_pipeline.core.measurement import (
    DuplicateCallsPolicy,
    ReadFinalPolicy,
    SourceTable,
    SpreadsheetSafety,
)
from agent_metrics_pipeline.observe.late_calls import LATE_CALLS_CHECK_KEY
from agent_metrics_pipeline.quality.checks import NO_DUPLICATE_CALL_IDS, SPREADSHEET_SAFE_AGENT_IDS
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    failure_message,
    insert_calls,
    key_for,
    materialize,
    measuring,
    random_calls,
    writer,
)
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics
from agent_metrics_pipeline_tests.test_sources import DAYS, Pipeline, project

DAY = dt.date(2026, 11, 12)


def evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (found,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found


@pytest.fixture
def relation_over(clickhouse, calls_table) -> Iterator:
    """Makes a view or a Merge table over the calls table; drops what it made."""
    made = []

    def make(kind: str) -> SourceTable:
        name = f"{kind.lower()}_{uuid.uuid4().hex[:10]}"
        relation = dataclasses.replace(calls_table, table=name)
        statement = {
            "View": f"CREATE VIEW {relation.qualified_name} AS "
            f"SELECT * FROM {calls_table.qualified_name}",
            "Merge": f"CREATE TABLE {relation.qualified_name} AS {calls_table.qualified_name} "
            f"ENGINE = Merge('{calls_table.database}', '^{calls_table.table}$')",
        }[kind]
        with writer(clickhouse).get_client() as client:
            client.command(statement)
        made.append(relation)
        return relation

    yield make
    with writer(clickhouse).get_client() as client:
        for relation in made:
            client.command(f"DROP TABLE IF EXISTS {relation.qualified_name}")


@pytest.mark.parametrize("kind", ["View", "Merge"])
def test_a_view_or_merge_source_publishes_the_tables_bytes(
    kind, clickhouse, calls_table, bucket, relation_over
):
    calls = random_calls(DAY, days=1, calls_per_day=300, seed=61)
    insert_calls(clickhouse, calls_table, calls)
    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))
    from_table = bucket.get(key_for(DAY))
    assert_csv_matches(from_table, expected_metrics(calls)[DAY], DAY)

    result = materialize(clickhouse, measuring(relation_over(kind)), bucket.io_manager(), str(DAY))
    assert bucket.get(key_for(DAY)) == from_table
    metadata = result.asset_materializations_for_node("agent_metrics")[0].metadata
    assert metadata["source_engine"].value == kind
    assert metadata["read_final"].value is False


@pytest.mark.parametrize("kind", ["View", "Merge"])
def test_a_view_or_merge_source_observes_again_and_again(
    kind, clickhouse, calls_table, bucket, relation_over
):
    insert_calls(clickhouse, calls_table, random_calls(DAYS[0], days=len(DAYS), calls_per_day=50))
    pipeline = Pipeline(project(clickhouse, relation_over(kind), bucket))
    for _ in range(3):
        tick = pipeline.observe()
        assert "failed" not in (tick.skip_message or "")
        (late,) = [
            record.event.dagster_event.asset_check_evaluation_data
            for record in pipeline.instance.event_log_storage.get_asset_check_execution_history(
                LATE_CALLS_CHECK_KEY, limit=1
            )
        ]
        assert late.passed
    # Without storage parts the late-calls check says it did not look, and why.
    assert late.metadata["source_engine"].value == kind
    assert "without storage parts" in late.metadata["note"].value


def repeated(calls: list[Call], every: int) -> list[Call]:
    """Every ``every``-th call inserted once more, unchanged."""
    return calls[::every]


def test_repeated_call_ids_are_reported_and_counted_once_on_request(
    clickhouse, calls_table, bucket
):
    calls = random_calls(DAY, days=1, calls_per_day=400, seed=62)
    insert_calls(clickhouse, calls_table, calls)
    again = repeated(calls, 7)
    insert_calls(clickhouse, calls_table, again)
    counted_again = [c for c in again if c.status == "Answered"]

    unchecked = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))
    assert evaluation(unchecked, NO_DUPLICATE_CALL_IDS).passed, "not looked for by default"
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls + again)[DAY], DAY)

    warning = dataclasses.replace(measuring(calls_table), duplicate_calls=DuplicateCallsPolicy.WARN)
    as_stored = materialize(clickhouse, warning, bucket.io_manager(), str(DAY))
    warned = evaluation(as_stored, NO_DUPLICATE_CALL_IDS)
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.metadata["repeated_rows"].value == len(counted_again)
    samples = sorted(c.call_id for c in counted_again)[:5]
    assert warned.metadata["sample_call_ids"].value == samples
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls + again)[DAY], DAY)

    once = dataclasses.replace(
        measuring(calls_table), duplicate_calls=DuplicateCallsPolicy.COUNT_ONCE
    )
    result = materialize(clickhouse, once, bucket.io_manager(), str(DAY))
    reported = evaluation(result, NO_DUPLICATE_CALL_IDS)
    assert reported.passed
    assert reported.metadata["repeated_rows"].value == len(counted_again)
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)

    failing = dataclasses.replace(once, duplicate_calls=DuplicateCallsPolicy.FAIL)
    published = bucket.get(key_for(DAY))
    result = materialize(clickhouse, failing, bucket.io_manager(), str(DAY), raise_on_error=False)
    assert NO_DUPLICATE_CALL_IDS in failure_message(result)
    assert bucket.get(key_for(DAY)) == published, "a failed day publishes nothing"


def test_a_call_id_on_two_days_of_a_range_counts_once_on_each(clickhouse, calls_table, bucket):
    # A range reads each day in its own window, as a run of that day alone does: under
    # count_once, a call id with a row on each of two days read by one query counts on both.
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    calls = random_calls(days[0], days=3, calls_per_day=200, seed=65)
    answered = [c for c in calls if c.started_at.date() == days[1] and c.status == "Answered"]
    twin = dataclasses.replace(answered[0], started_at=answered[0].started_at + dt.timedelta(1))
    insert_calls(clickhouse, calls_table, [*calls, twin])
    once = dataclasses.replace(
        measuring(calls_table), duplicate_calls=DuplicateCallsPolicy.COUNT_ONCE
    )

    materialize(clickhouse, once, bucket.io_manager(), str(days[0]), str(days[-1]))

    expected = expected_metrics([*calls, twin])
    in_range = {day: bucket.get(key_for(day)) for day in days}
    for day in days:
        assert_csv_matches(in_range[day], expected[day], day)
        materialize(clickhouse, once, bucket.io_manager(), str(day))
        assert bucket.get(key_for(day)) == in_range[day], f"{day} differs from a run of it alone"


def test_a_replacing_table_is_read_as_its_latest_versions(clickhouse, bucket):
    source = SourceTable(table=f"replacing_{uuid.uuid4().hex[:10]}")
    with writer(clickhouse).get_client() as client:
        client.command(
            f"""CREATE TABLE {source.qualified_name} (
                call_id String, agent_id Nullable(String), started_at DateTime64(3, 'UTC'),
                duration_sec Nullable(Float64), status LowCardinality(String), version UInt32
            ) ENGINE = ReplacingMergeTree(version) ORDER BY call_id"""
        )
    try:
        first = random_calls(DAY, days=1, calls_per_day=300, seed=63)
        # A newer version of every fifth call: another length, and some no longer answered.
        newer = [
            dataclasses.replace(
                c, duration_sec=c.duration_sec + 30, status="Missed" if i % 3 else c.status
            )
            for i, c in enumerate(first[::5])
        ]
        with writer(clickhouse).get_client() as client:
            for version, rows in ((1, first), (2, newer)):  # two parts, not merged
                client.insert(
                    source.qualified_name,
                    [(*dataclasses.astuple(c), version) for c in rows],
                    column_names=[*source.column_names, "version"],
                )
        latest = {c.call_id: c for c in first} | {c.call_id: c for c in newer}
        result = materialize(clickhouse, measuring(source), bucket.io_manager(), str(DAY))
        assert_csv_matches(
            bucket.get(key_for(DAY)), expected_metrics(list(latest.values()))[DAY], DAY
        )
        metadata = result.asset_materializations_for_node("agent_metrics")[0].metadata
        assert metadata["source_engine"].value == "ReplacingMergeTree"
        assert metadata["read_final"].value is True
    finally:
        with writer(clickhouse).get_client() as client:
            client.command(f"DROP TABLE IF EXISTS {source.qualified_name}")


# A carriage return is flagged as well; the oracle's CSV reader takes no bare \r, so it is left
# to the check's own test.
def test_final_always_leaves_a_plain_table_alone(clickhouse, calls_table, bucket):
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=64)
    insert_calls(clickhouse, calls_table, calls)
    always = dataclasses.replace(measuring(calls_table), read_final=ReadFinalPolicy.ALWAYS)
    result = materialize(clickhouse, always, bucket.io_manager(), str(DAY))
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)
    metadata = result.asset_materializations_for_node("agent_metrics")[0].metadata
    assert metadata["read_final"].value is False, "a MergeTree refuses FINAL: nothing to merge"


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tTAB"]


def test_agent_ids_a_spreadsheet_would_run_are_flagged_and_escaped_on_request(
    clickhouse, calls_table, bucket
):
    started = dt.datetime.combine(DAY, dt.time(10), UTC)
    calls = [
        Call(f"f-{i}", agent, started, 60.0 + i, "Answered")
        for i, agent in enumerate([*FORMULAS, "agent-ok"])
    ]
    insert_calls(clickhouse, calls_table, calls)
    result = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))
    flagged = evaluation(result, SPREADSHEET_SAFE_AGENT_IDS)
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.metadata["offending_rows"].value == len(FORMULAS)
    as_is = bucket.get(key_for(DAY))
    assert_csv_matches(as_is, expected_metrics(calls)[DAY], DAY)

    escaping = dataclasses.replace(
        measuring(calls_table), spreadsheet_safety=SpreadsheetSafety.ESCAPE
    )
    result = materialize(clickhouse, escaping, bucket.io_manager(), str(DAY))
    escaped_check = evaluation(result, SPREADSHEET_SAFE_AGENT_IDS)
    assert escaped_check.passed
    assert escaped_check.metadata["escaped_agent_ids"].value == len(FORMULAS)
    escaped_calls = [
        dataclasses.replace(c, agent_id="'" + c.agent_id) if c.agent_id in FORMULAS else c
        for c in calls
    ]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(escaped_calls)[DAY], DAY)
