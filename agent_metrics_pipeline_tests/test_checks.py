"""Data-quality checks: each one passes on clean data and fails on data made to break it.

A failed ERROR check publishes nothing for any day of the run and leaves earlier objects alone;
WARN checks publish and flag.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections import Counter
from dataclasses import replace
from functools import partial

import dagster as dg
import polars as pl
import pytest

from agent_metrics_pipeline.aggregate.metrics import (
    FORMULA_ESCAPE,
    FORMULA_PREFIXES,
    QUALITY_COUNTS,
    SourceQuality,
    in_day_and_agent_order,
)
from agent_metrics_pipeline.core.measurement import InvalidRowsPolicy, Measurement
from agent_metrics_pipeline.core.names import ASSET_NAME, SAMPLE_SIZE
from agent_metrics_pipeline.quality import checks
from agent_metrics_pipeline.quality.findings import Evidence, Verdict, judge_days
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline.storage.published_format import metrics_schema
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    Bucket,
    failure_message,
    insert_calls,
    key_for,
    materialize,
    measuring,
    random_calls,
    writer,
)
from agent_metrics_pipeline_tests.oracle import (
    Call,
    assert_csv_matches,
    expected_metrics,
    statuses_seen,
)

DAY = dt.date(2026, 11, 20)
ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def evaluations(
    result: dg.ExecuteInProcessResult, day: dt.date = DAY
) -> dict[str, dg.AssetCheckEvaluation]:
    """The run's evaluation of each check on ``day``."""
    found = [e for e in result.get_asset_check_evaluations() if e.partition == str(day)]
    assert len(found) == len({e.check_name for e in found}), "one evaluation per check and day"
    return {e.check_name: e for e in found}


def meta(evaluation: dg.AssetCheckEvaluation, key: str):
    return evaluation.metadata[key].value


def noon(day: dt.date = DAY, minutes: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12), tzinfo=UTC) + dt.timedelta(minutes=minutes)


def bad_call(call_id: str, agent: str | None, duration: float | None, day: dt.date = DAY) -> Call:
    return Call(call_id, agent, noon(day, 7), duration, "Answered")


@pytest.fixture
def good_calls() -> list[Call]:
    """Calls that pass every check: the generator's lower-case 'answered' is a spelling variant
    of the counted status, which the status_spellings check flags."""
    calls = random_calls(DAY - dt.timedelta(days=2), days=4, calls_per_day=300, seed=17)
    return [replace(c, status="Missed") if c.status == "answered" else c for c in calls]


def test_clean_day_passes_every_check_and_is_published(
    clickhouse, calls_table, bucket: Bucket, good_calls
):
    insert_calls(clickhouse, calls_table, good_calls)

    result = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    found = evaluations(result)
    assert set(found) == set(checks.CHECK_DESCRIPTIONS)
    assert all(e.passed for e in found.values()), {n: e.passed for n, e in found.items()}
    assert {n for n, e in found.items() if e.severity == ERROR} == set(checks.BLOCKING_CHECKS)
    assert meta(found[checks.EXCLUDED_SOURCE_ROWS], "excluded_calls") == 0
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(good_calls)[DAY], DAY)


@pytest.mark.parametrize(
    ("check_name", "bad_rows", "count_key"),
    [
        (
            checks.NO_NULLS,
            [
                bad_call("null-agent", None, 30.0),
                bad_call("empty-agent", "", 12.0),
                bad_call("null-duration", "agent-001", None),
            ],
            "source_null_agent_or_duration_calls",
        ),
        (
            checks.NO_NEGATIVE_VALUES,
            [bad_call("negative-1", "agent-002", -5.0), bad_call("negative-2", "x", -0.5)],
            "source_negative_duration_calls",
        ),
        (
            checks.FINITE_DURATIONS,
            [
                bad_call("nan", "agent-003", math.nan),
                bad_call("plus-inf", "agent-004", math.inf),
                bad_call("minus-inf", "agent-005", -math.inf),
            ],
            "source_non_finite_duration_calls",
        ),
    ],
)
def test_invalid_source_rows_block_publication_and_keep_the_earlier_object(
    clickhouse, calls_table, bucket, good_calls, check_name, bad_rows, count_key
):
    insert_calls(clickhouse, calls_table, good_calls)
    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))
    published = bucket.get(key_for(DAY))

    insert_calls(clickhouse, calls_table, bad_rows)
    result = materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(DAY),
        raise_on_error=False,
    )

    assert not result.success
    evaluation = evaluations(result)[check_name]
    assert not evaluation.passed and evaluation.severity == ERROR
    assert meta(evaluation, count_key) == len(bad_rows)
    assert meta(evaluation, "source_offending_days") == [str(DAY)]
    assert sorted(meta(evaluation, "sample_call_ids")) == sorted(c.call_id for c in bad_rows)
    message = failure_message(result)
    assert check_name in message and str(DAY) in message
    assert bucket.get(key_for(DAY)) == published, "the earlier good object must be untouched"
    assert bucket.keys() == [key_for(DAY)]


def test_implausible_call_length_blocks_publication_unless_the_limit_allows_it(
    clickhouse, calls_table, bucket, good_calls
):
    marathon = [Call("marathon", "agent-003", noon(), 90_000.0, "Answered")]
    insert_calls(clickhouse, calls_table, good_calls + marathon)

    strict = materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(DAY),
        raise_on_error=False,
    )
    evaluation = evaluations(strict)[checks.PLAUSIBLE_RANGES]
    assert not evaluation.passed and evaluation.severity == ERROR
    assert meta(evaluation, "source_calls_over_max") == 1
    assert meta(evaluation, "sample_call_ids") == ["marathon"]
    assert meta(evaluation, "source_offending_days") == [str(DAY)]
    assert bucket.keys() == []

    relaxed = materialize(
        clickhouse,
        measuring(calls_table, max_call_length_sec=100_000.0),
        bucket.io_manager(),
        str(DAY),
    )
    assert evaluations(relaxed)[checks.PLAUSIBLE_RANGES].passed
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(good_calls + marathon)[DAY], DAY)


def test_each_source_check_samples_only_its_own_calls(clickhouse, calls_table, bucket, good_calls):
    nulls = [bad_call("null-agent", None, 30.0), bad_call("null-duration", "agent-001", None)]
    negatives = [bad_call("negative", "agent-002", -5.0)]
    insert_calls(clickhouse, calls_table, good_calls + nulls + negatives)

    result = materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(DAY),
        raise_on_error=False,
    )

    found = evaluations(result)
    assert sorted(meta(found[checks.NO_NULLS], "sample_call_ids")) == sorted(
        c.call_id for c in nulls
    )
    assert meta(found[checks.NO_NEGATIVE_VALUES], "sample_call_ids") == ["negative"]


def test_exclude_policy_publishes_without_invalid_rows_and_warns(
    clickhouse, calls_table, bucket, good_calls
):
    bad_rows = [
        bad_call("null-agent", None, 30.0),
        bad_call("null-duration", "agent-001", None),
        bad_call("negative", "agent-002", -5.0),
        bad_call("other-day", None, 1.0, day=DAY + dt.timedelta(days=1)),
        # Excluded for its missing agent, so its implausible length blocks nothing.
        bad_call("no-agent-marathon", None, 200_000.0),
    ]
    insert_calls(clickhouse, calls_table, good_calls + bad_rows)

    result = materialize(
        clickhouse,
        measuring(calls_table, invalid_rows=InvalidRowsPolicy.EXCLUDE),
        bucket.io_manager(),
        str(DAY),
    )

    found = evaluations(result)
    assert found[checks.NO_NULLS].passed and found[checks.NO_NEGATIVE_VALUES].passed
    excluded = found[checks.EXCLUDED_SOURCE_ROWS]
    assert not excluded.passed and excluded.severity == WARN
    assert found[checks.PLAUSIBLE_RANGES].passed
    assert meta(excluded, "excluded_calls") == 4
    assert meta(excluded, "excluded_null_agent_or_duration_calls") == 3
    assert meta(excluded, "excluded_negative_duration_calls") == 1
    assert sorted(meta(excluded, "sample_call_ids")) == [
        "negative",
        "no-agent-marathon",
        "null-agent",
        "null-duration",
    ]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(good_calls + bad_rows)[DAY], DAY)


def test_non_finite_durations_are_left_out_under_exclude_and_block_a_range_under_fail(
    clickhouse, calls_table, bucket, good_calls
):
    first, last = str(DAY - dt.timedelta(days=2)), str(DAY + dt.timedelta(days=1))
    non_finite = [
        bad_call("nan", "agent-003", math.nan),
        bad_call("plus-inf", "agent-004", math.inf),
        bad_call("minus-inf", "agent-005", -math.inf),
    ]
    insert_calls(clickhouse, calls_table, good_calls + non_finite)

    failed = materialize(
        clickhouse, measuring(calls_table), bucket.io_manager(), first, last, raise_on_error=False
    )
    evaluation = evaluations(failed)[checks.FINITE_DURATIONS]
    assert not evaluation.passed and meta(evaluation, "source_offending_days") == [str(DAY)]
    assert f"{checks.FINITE_DURATIONS} (days: {DAY})" in failure_message(failed)
    assert bucket.keys() == []

    result = materialize(
        clickhouse,
        measuring(calls_table, invalid_rows=InvalidRowsPolicy.EXCLUDE),
        bucket.io_manager(),
        first,
        last,
    )
    found = evaluations(result)
    assert found[checks.FINITE_DURATIONS].passed
    excluded = found[checks.EXCLUDED_SOURCE_ROWS]
    assert meta(excluded, "excluded_non_finite_duration_calls") == 3
    assert sorted(meta(excluded, "sample_call_ids")) == sorted(c.call_id for c in non_finite)
    expected = expected_metrics(good_calls + non_finite)
    for offset in range(-2, 2):
        day = DAY + dt.timedelta(days=offset)
        assert_csv_matches(bucket.get(key_for(day)), expected[day], day)


def test_statuses_spelled_unlike_a_counted_one_are_listed_and_flagged(
    clickhouse, calls_table, bucket, good_calls
):
    variants = [
        Call("lower", "agent-001", noon(), 30.0, "answered"),
        Call("spaced", "agent-002", noon(), 40.0, "Answered "),
        Call("spaced-too", "agent-003", noon(minutes=1), 50.0, "Answered "),
        Call("other-day", "agent-004", noon(DAY + dt.timedelta(days=1)), 60.0, "ANSWERED"),
        Call("shouted", "agent-005", noon(minutes=2), 20.0, "  ANSWERED "),
        Call("unlike", "agent-006", noon(minutes=3), 25.0, "Answered later"),
        Call("tabbed", "agent-007", noon(minutes=4), 15.0, "\tAnswered"),
    ]
    insert_calls(clickhouse, calls_table, good_calls + variants)

    result = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    evaluation = evaluations(result)[checks.STATUS_SPELLINGS]
    assert not evaluation.passed and evaluation.severity == WARN
    assert meta(evaluation, "uncounted_variants") == ["  ANSWERED ", "Answered ", "answered"]
    assert meta(evaluation, "uncounted_variant_calls") == 4
    assert meta(evaluation, "offending_days") == [str(DAY)]
    on_the_day = [c for c in good_calls + variants if c.started_at.date() == DAY]
    seen = statuses_seen(on_the_day)
    assert set(seen) == {"Answered", "Answered ", "answered", "  ANSWERED "}
    assert meta(evaluation, "statuses_seen") == seen
    (materialization,) = result.asset_materializations_for_node("agent_metrics")
    assert materialization.metadata["statuses_seen"].value == seen
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(good_calls + variants)[DAY], DAY)


@pytest.mark.parametrize("statuses", [("Answered",), ("Answered", "Missed")])
@pytest.mark.parametrize("unusual", [False, True], ids=["clean", "with_a_call_without_length"])
def test_calls_of_each_counted_status_are_counted_on_clean_and_unusual_days(
    clickhouse, calls_table, bucket, good_calls, statuses, unusual
):
    # A clean day's counts come with its metrics; a day with unusual calls has them counted by
    # kind in a query of their own, which counts the statuses too.
    calls = good_calls + ([bad_call("no-length", "agent-001", None)] if unusual else [])
    insert_calls(clickhouse, calls_table, calls)
    measurement = measuring(calls_table, statuses, invalid_rows=InvalidRowsPolicy.EXCLUDE)

    result = materialize(clickhouse, measurement, bucket.io_manager(), str(DAY))

    on_the_day = [c for c in calls if c.started_at.date() == DAY]
    (materialization,) = result.asset_materializations_for_node("agent_metrics")
    seen = statuses_seen(on_the_day, statuses)
    assert set(seen) == set(statuses)
    assert materialization.metadata["statuses_seen"].value == seen
    assert materialization.metadata["unmeasurable_calls"].value == int(unusual)
    expected = expected_metrics(calls, statuses=statuses)[DAY]
    assert_csv_matches(bucket.get(key_for(DAY)), expected, DAY)


def test_an_enum_status_column_is_read_by_its_names(clickhouse, calls_table, bucket, good_calls):
    names = ["Answered", "Missed", "answered", "Voicemail"]
    enum = ", ".join(f"'{name}' = {value}" for value, name in enumerate(names, start=1))
    with writer(clickhouse).get_client() as client:
        client.command(
            f"ALTER TABLE {calls_table.qualified_name} MODIFY COLUMN `status` Enum8({enum})"
        )
    calls = [c for c in good_calls if c.status in names] + [
        Call("lower", "agent-001", noon(), 30.0, "answered")
    ]
    insert_calls(clickhouse, calls_table, calls)

    result = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    evaluation = evaluations(result)[checks.STATUS_SPELLINGS]
    on_the_day = [c for c in calls if c.started_at.date() == DAY]
    assert meta(evaluation, "statuses_seen") == statuses_seen(on_the_day)
    assert meta(evaluation, "uncounted_variants") == ["answered"]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)


def test_empty_day_warns_and_publishes_a_header_only_file(clickhouse, calls_table, bucket):
    insert_calls(clickhouse, calls_table, [bad_call("elsewhere", "a", 3.0, DAY + dt.timedelta(1))])

    result = materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    evaluation = evaluations(result)[checks.CALLS_PRESENT]
    assert not evaluation.passed and evaluation.severity == WARN
    assert meta(evaluation, "empty_days") == [str(DAY)]
    assert bucket.keys() == [key_for(DAY)]


def test_agents_below_the_minimum_number_of_calls_are_flagged(clickhouse, calls_table, bucket):
    calls = [Call(f"c{i}", "busy", noon(minutes=i), 60.0 + i, "Answered") for i in range(5)]
    calls += [
        Call("q1", "quiet", noon(), 30.0, "Answered"),
        Call("q2", "quiet", noon(), 40.0, "Answered"),
    ]
    insert_calls(clickhouse, calls_table, calls)

    at_two = materialize(
        clickhouse,
        measuring(calls_table, min_calls_per_agent=2),
        bucket.io_manager(),
        str(DAY),
    )
    assert evaluations(at_two)[checks.MIN_CALLS_PER_AGENT].passed

    at_three = materialize(
        clickhouse,
        measuring(calls_table, min_calls_per_agent=3),
        bucket.io_manager(),
        str(DAY),
    )
    evaluation = evaluations(at_three)[checks.MIN_CALLS_PER_AGENT]
    assert not evaluation.passed and evaluation.severity == WARN
    assert meta(evaluation, "sample_agent_ids") == ["quiet"]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)


def test_range_with_one_bad_day_publishes_nothing_and_names_that_day(
    clickhouse, calls_table, bucket, good_calls
):
    first, last = DAY - dt.timedelta(days=2), DAY + dt.timedelta(days=1)
    bad_day = DAY - dt.timedelta(days=1)
    insert_calls(
        clickhouse, calls_table, good_calls + [bad_call("neg", "agent-004", -1.0, bad_day)]
    )

    result = materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(first),
        str(last),
        raise_on_error=False,
    )

    assert not result.success
    assert bucket.keys() == []
    failed = evaluations(result, bad_day)[checks.NO_NEGATIVE_VALUES]
    assert not failed.passed
    assert meta(failed, "source_offending_days") == [str(bad_day)]
    assert meta(failed, "sample_call_ids") == ["neg"]
    assert f"no_negative_values (days: {bad_day})" in failure_message(result)
    for day in (first, DAY, last):
        found = evaluations(result, day)
        assert set(found) == set(checks.CHECK_DESCRIPTIONS)
        assert all(e.passed for e in found.values()), (day, {n: e.passed for n, e in found.items()})
        assert meta(found[checks.NO_NEGATIVE_VALUES], "unpublished_because_of_days") == [
            str(bad_day)
        ]


def day_check_statuses(instance: dg.DagsterInstance, check_name: str) -> dict[str, str]:
    """What the UI shows per day for one check: the day's latest evaluation, or NOT_CURRENT
    when the day was materialized after it (Dagster then clears the day's status)."""
    key = dg.AssetCheckKey(dg.AssetKey(ASSET_NAME), check_name)
    return {
        info.partition_key: info.latest_execution_status.value if info.is_current else "NOT_CURRENT"
        for info in instance.event_log_storage.get_asset_check_partition_info([key])
    }


def test_each_day_has_its_own_check_status_judging_its_own_file(
    clickhouse, calls_table, bucket, good_calls
):
    first, last = DAY - dt.timedelta(days=2), DAY + dt.timedelta(days=1)
    bad_day = DAY - dt.timedelta(days=1)
    instance = dg.DagsterInstance.ephemeral()
    run = partial(materialize, clickhouse, measuring(calls_table), bucket.io_manager())
    insert_calls(clickhouse, calls_table, good_calls)
    assert run(str(first), str(last), instance=instance).success
    insert_calls(clickhouse, calls_table, [bad_call("no-agent", None, 3.0, bad_day)])
    assert not run(str(bad_day), raise_on_error=False, instance=instance).success

    good_days = [str(d) for d in (first, DAY, last)]
    for check_name in checks.CHECK_DESCRIPTIONS:
        statuses = day_check_statuses(instance, check_name)
        assert {statuses[day] for day in good_days} == {"SUCCEEDED"}, (check_name, statuses)
        expected = "FAILED" if check_name == checks.NO_NULLS else "SUCCEEDED"
        assert statuses[str(bad_day)] == expected, (check_name, statuses)
    # Each published day's evaluations judge that day's own materialization by the range run.
    for day in good_days:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey(ASSET_NAME), asset_partitions=[day]), limit=1
        ).records
        key = dg.AssetCheckKey(dg.AssetKey(ASSET_NAME), checks.NO_NULLS)
        (execution,) = [
            e
            for e in instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
            if e.partition == day
        ]
        assert execution.run_id == record.run_id
        assert execution.evaluation.target_materialization_data.storage_id == record.storage_id


def test_failed_error_check_writes_no_local_file(clickhouse, calls_table, tmp_path, good_calls):
    insert_calls(clickhouse, calls_table, good_calls + [bad_call("n", None, 1.0)])
    result = materialize(
        clickhouse,
        measuring(calls_table),
        LocalCsvIOManager(base_dir=str(tmp_path)),
        str(DAY),
        raise_on_error=False,
    )
    assert not result.success
    assert list(tmp_path.rglob("*")) == []


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=metrics_schema(), orient="row")


MEASUREMENT = Measurement(max_call_length_sec=3600.0)


def _clean_quality() -> SourceQuality:
    per_day = pl.DataFrame(
        {
            "date": [DAY],
            "null_agent_calls": [0],
            "null_duration_calls": [0],
            "negative_duration_calls": [0],
            "non_finite_duration_calls": [0],
            "overlong_calls": [0],
            "duplicate_calls": [0],
        }
    )
    return SourceQuality(per_day=per_day)


def evaluate(frame: pl.DataFrame) -> dict[str, Verdict]:
    statuses = pl.DataFrame({"date": [DAY], "status": ["Answered"], "calls": [frame.height]})
    evidence = Evidence(frame, _clean_quality(), statuses, [DAY], MEASUREMENT)
    return {v.check_name: v for v in judge_days(checks.checks_for(MEASUREMENT), evidence)}


@pytest.mark.parametrize(
    ("check_name", "bad_row"),
    [
        # Shapes the query cannot produce, so the guards are exercised on hand-made frames.
        (checks.NO_NULLS, ("a", None, 1.0, 1, DAY)),
        (checks.NO_NEGATIVE_VALUES, ("a", -1.0, 1.0, 1, DAY)),
        (checks.PLAUSIBLE_RANGES, ("a", 1.0, 1.0, 0, DAY)),
        (checks.PLAUSIBLE_RANGES, ("a", 1.0, 3600.01, 1, DAY)),
        (checks.ONE_ROW_PER_AGENT_PER_DAY, ("b", 1.0, 1.0, 1, DAY)),
        (checks.ONE_ROW_PER_AGENT_PER_DAY, ("c", 1.0, 1.0, 1, DAY + dt.timedelta(days=1))),
    ],
)
def test_output_guards(check_name, bad_row):
    clean = _frame([("b", 10.0, 12.0, 3, DAY)])
    results = evaluate(clean)
    assert all(r.passed for r in results.values())

    dirty = pl.concat([clean, _frame([bad_row])])
    results = evaluate(dirty)
    assert not results[check_name].passed
    assert results[check_name].severity == ERROR
    others = [name for name, r in results.items() if not r.passed and name != check_name]
    # A broken row may trip a second guard too (a 0-call row is also below the minimum).
    assert set(others) <= {checks.PLAUSIBLE_RANGES, checks.MIN_CALLS_PER_AGENT}


def test_repeated_agents_are_found_wherever_they_stand():
    """Every row of a repeated (day, agent) counts, however the rows are ordered."""
    agents = ["d", "a", "c", "a", "b", "d", "e", "a"]
    frame = _frame([(agent, 1.0, 2.0, 1, DAY) for agent in agents])
    repeats = Counter(agents)
    expected = sum(count for count in repeats.values() if count > 1)

    verdict = evaluate(frame)[checks.ONE_ROW_PER_AGENT_PER_DAY]
    assert not verdict.passed
    assert verdict.metadata["offending_rows"] == expected


def test_spreadsheet_formulas_are_told_by_their_first_character():
    """Every first character a spreadsheet could read, against the formula signs themselves."""
    firsts = [chr(code) for code in range(1, 128)] + ["é", "Ω", "😀"]
    ids = [f"{first}7" for first in firsts] + [f"{FORMULA_ESCAPE}{first}7" for first in firsts]
    frame = _frame([(agent_id, 1.0, 2.0, 1, DAY) for agent_id in ids]).sort("date", "agent_id")

    verdict = evaluate(frame)[checks.SPREADSHEET_SAFE_AGENT_IDS]
    risky = [agent_id for agent_id in ids if agent_id[0] in FORMULA_PREFIXES]
    escaped = [
        agent_id for agent_id in ids if agent_id[0] == "'" and agent_id[1] in FORMULA_PREFIXES
    ]
    assert sorted(risky) and len(escaped) == len(FORMULA_PREFIXES)
    assert verdict.metadata["offending_rows"] == len(risky)
    assert verdict.metadata["escaped_agent_ids"] == len(escaped)
    assert verdict.metadata["sample_agent_ids"] == sorted(risky)[:SAMPLE_SIZE]


@pytest.mark.parametrize("stray", [False, True], ids=["own-days", "a-row-dated-before"])
def test_a_chunk_judges_each_day_as_if_it_ran_alone(stray):
    """Days read together get the verdicts each gets read alone: a day's faults, counts and
    samples stay its own, whatever order the chunk's rows come in; a row dated outside the
    run's days is every day's fault."""
    days = [DAY + dt.timedelta(days=offset) for offset in range(4)]
    rows = {
        days[0]: [("a", 10.0, 12.0, 3, days[0]), ("b", 20.0, 30.0, 4, days[0])],
        days[1]: [
            ("a", 1.0, 2.0, 1, days[1]),
            ("a", 3.0, 4.0, 2, days[1]),
            ("=b", 5.0, 6.0, 1, days[1]),
        ],
        days[2]: [
            ("a", -1.0, math.nan, 2, days[2]),
            ("c", None, 4000.0, 0, days[2]),
            (None, 5.0, 6.0, 3, days[2]),
        ],
        days[3]: [],
    }
    outside = [("z", 1.0, 2.0, 5, DAY - dt.timedelta(days=1))] if stray else []
    quality_rows = {
        days[1]: {"null_agent_calls": 2, "overlong_calls": 1},
        days[2]: {"negative_duration_calls": 3, "duplicate_calls": 4},
    }
    samples = {days[1]: ["n1", None, "n2"], days[2]: ["m1"]}
    status_rows = [(days[0], "Answered", 7), (days[1], "answered", 2), (days[2], "Answered", 2)]
    measurement = replace(MEASUREMENT, min_calls_per_agent=2)

    def evidence(on: list[dt.date], shuffled: bool) -> Evidence:
        frame = _frame([row for day in on for row in rows[day]] + outside)
        per_day = pl.DataFrame(
            [
                {"date": day, **dict.fromkeys(QUALITY_COUNTS, 0), **quality_rows.get(day, {})}
                for day in on
            ]
        )
        sample_frame = pl.DataFrame(
            [{"date": day, "null_call_ids": samples[day]} for day in on if day in samples],
            schema={"date": pl.Date, "null_call_ids": pl.List(pl.String)},
        )
        quality = SourceQuality(per_day).with_samples(sample_frame)
        statuses = pl.DataFrame(
            [row for row in status_rows if row[0] in on],
            schema=["date", "status", "calls"],
            orient="row",
        )
        held = {day: 100 for day in on}
        return Evidence(
            frame.sample(fraction=1.0, shuffle=True, seed=7) if shuffled else frame,
            quality,
            statuses,
            on,
            measurement,
            held,
        )

    def seen(verdict: Verdict, shuffled: bool) -> tuple:
        # Samples are the first rows found, in the rows' order; none here has more than a
        # sample's worth of offending rows.
        samples = verdict.metadata.get("sample_agent_ids", [])
        ordered = sorted(samples, key=str) if shuffled else samples
        return verdict.passed, {**verdict.metadata, "sample_agent_ids": ordered}

    run_checks = checks.checks_for(measurement)
    alone = [verdict for day in days for verdict in judge_days(run_checks, evidence([day], False))]
    for shuffled in (False, True):
        together = judge_days(run_checks, evidence(days, shuffled))
        assert [(v.check_name, v.day) for v in together] == [(v.check_name, v.day) for v in alone]
        for verdict, expected in zip(together, alone, strict=True):
            assert seen(verdict, shuffled) == seen(expected, shuffled), (
                verdict.check_name,
                verdict.day,
            )
    failed = {(v.check_name, v.day) for v in alone if not v.passed}
    assert {(checks.ONE_ROW_PER_AGENT_PER_DAY, days[1]), (checks.NO_NULLS, days[2])} <= failed
    one_row_days = {day for name, day in failed if name == checks.ONE_ROW_PER_AGENT_PER_DAY}
    assert one_row_days == (set(days) if stray else {days[1]})
    assert {name for name, day in failed if day == days[0]} == (
        {checks.ONE_ROW_PER_AGENT_PER_DAY} if stray else set()
    )


@pytest.mark.parametrize("seed", range(20))
def test_rows_in_day_and_agent_order_are_told_apart_from_the_rest(seed):
    """Whether rows need sorting, against Python's own order of (date, agent id) pairs."""
    rng = random.Random(seed)
    agents = ["", "a", "B", "b", "ab", "é", "Ω", "1", "10", "9"]
    pairs = [
        (DAY + dt.timedelta(days=rng.randrange(3)), rng.choice(agents))
        for _ in range(rng.randrange(8))
    ]
    if seed % 2:
        pairs.sort(key=lambda pair: (pair[0], pair[1].encode()))
    frame = _frame([(agent, 1.0, 2.0, 1, day) for day, agent in pairs])
    keys = [(day, agent.encode()) for day, agent in pairs]
    following = list(itertools.pairwise(keys))
    assert in_day_and_agent_order(frame) == all(a <= b for a, b in following)
    assert in_day_and_agent_order(frame, strictly=True) == all(a < b for a, b in following)
