"""The asset end to end on the real engine and a real S3 server, against the NumPy oracle."""

from __future__ import annotations

import datetime as dt
import gzip
import os
import re
import uuid

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.clickhouse.session import ClickHouseSession
from agent_metrics_pipeline.core.measurement import Chunking, InvalidRowsPolicy, SourceTable
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    UTC,
    Bucket,
    create_calls_table,
    insert_calls,
    key_for,
    materialize,
    measuring,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import (
    HEADER,
    Call,
    assert_csv_matches,
    expected_metrics,
    parse_csv,
    statuses_seen,
)

DAY = dt.date(2026, 11, 20)


def call(agent: str | None, at: dt.datetime, duration: float | None, status: str = "Answered"):
    return Call(f"c-{agent}-{at.isoformat()}-{duration}", agent, at, duration, status)


def test_one_day_matches_oracle(clickhouse: ClickHouseResource, calls_table, bucket: Bucket):
    calls = random_calls(DAY - dt.timedelta(days=1), days=3, calls_per_day=400)
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    assert bucket.keys() == [key_for(DAY)]
    expected = expected_metrics(calls)[DAY]
    assert len(expected) > 25, "the sample must cover many agents"
    assert_csv_matches(bucket.get(key_for(DAY)), expected, DAY)


def test_day_boundaries_are_half_open(clickhouse, calls_table, bucket):
    def at(day: dt.date, hms: str) -> dt.datetime:
        return dt.datetime.fromisoformat(f"{day}T{hms}").replace(tzinfo=UTC)

    before, after = DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)
    calls = [
        call("edge", at(before, "23:59:59.999"), 1000.0),
        call("edge", at(DAY, "00:00:00.000"), 10.0),
        call("edge", at(DAY, "23:59:59.999"), 20.0),
        call("edge", at(after, "00:00:00.000"), 3000.0),
    ]
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    rows = parse_csv(bucket.get(key_for(DAY)))
    assert rows == [
        {
            "agent_id": "edge",
            "avg_call_length_sec": "15.0",
            "p90_call_length_sec": "19.0",
            "total_calls": "2",
            "date": str(DAY),
        }
    ]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)


def test_non_utc_timezone_shifts_the_day(clickhouse, calls_table, bucket):
    # 2026-11-01 is 25 hours long in New York (clocks fall back).
    day = dt.date(2026, 11, 1)
    calls = random_calls(day - dt.timedelta(days=1), days=3, calls_per_day=300, seed=11)
    insert_calls(clickhouse, calls_table, calls)

    materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(day),
        timezone="America/New_York",
    )

    expected = expected_metrics(calls, timezone="America/New_York")[day]
    assert expected != expected_metrics(calls, timezone="UTC")[day]
    assert_csv_matches(bucket.get(key_for(day)), expected, day)


def test_a_range_over_a_clock_change_reads_each_local_day(clickhouse, calls_table, bucket):
    # The range's later days are read in one query, each day in its own window: 2026-11-01 is
    # 25 hours long in New York.
    days = [dt.date(2026, 10, 31) + dt.timedelta(days=i) for i in range(3)]
    calls = random_calls(days[0] - dt.timedelta(days=1), days=5, calls_per_day=300, seed=12)
    insert_calls(clickhouse, calls_table, calls)

    materialize(
        clickhouse,
        measuring(calls_table),
        bucket.io_manager(),
        str(days[0]),
        str(days[-1]),
        timezone="America/New_York",
    )

    expected = expected_metrics(calls, timezone="America/New_York")
    for day in days:
        assert_csv_matches(bucket.get(key_for(day)), expected[day], day)


def test_interpolated_p90_for_one_and_two_calls(clickhouse, calls_table, bucket):
    noon = dt.datetime.combine(DAY, dt.time(12), tzinfo=UTC)
    calls = [
        call("one", noon, 42.5),
        call("two", noon, 10.0),
        call("two", noon + dt.timedelta(minutes=1), 20.0),
        call("three", noon, 1.0),
        call("three", noon, 2.0),
        call("three", noon, 100.0),
    ]
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    rows = {row["agent_id"]: row for row in parse_csv(bucket.get(key_for(DAY)))}
    # Linear interpolation between closest ranks: 10 + 0.9 * (20 - 10), 2 + 0.8 * (100 - 2).
    assert rows["one"]["p90_call_length_sec"] == "42.5"
    assert rows["two"]["p90_call_length_sec"] == "19.0"
    assert rows["three"]["p90_call_length_sec"] == "80.4"
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)


def test_zero_length_calls_are_published_as_zero_not_minus_zero(clickhouse, calls_table, bucket):
    noon = dt.datetime.combine(DAY, dt.time(12), tzinfo=UTC)
    calls = [call("silent", noon, -0.0), call("brief", noon, 0.0), call("brief", noon, -0.0)]
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    data = bucket.get(key_for(DAY))
    assert b"-0" not in data
    rows = parse_csv(data)
    assert {(row["avg_call_length_sec"], row["p90_call_length_sec"]) for row in rows} == {
        ("0.0", "0.0")
    }
    assert_csv_matches(data, expected_metrics(calls)[DAY], DAY)


def test_status_filter_is_exact_and_configurable(clickhouse, calls_table, bucket):
    calls = random_calls(DAY, days=1, calls_per_day=500, seed=3)
    insert_calls(clickhouse, calls_table, calls)
    statuses = ("Answered", "Missed")

    materialize(
        clickhouse, measuring(calls_table, statuses=statuses), bucket.io_manager(), str(DAY)
    )

    expected = expected_metrics(calls, statuses=statuses)[DAY]
    assert sum(r.total_calls for r in expected) > sum(
        r.total_calls for r in expected_metrics(calls)[DAY]
    )
    assert_csv_matches(bucket.get(key_for(DAY)), expected, DAY)


def test_empty_day_gets_a_header_only_file(clickhouse, calls_table, bucket):
    other_day = dt.datetime.combine(DAY + dt.timedelta(days=2), dt.time(9), tzinfo=UTC)
    insert_calls(clickhouse, calls_table, [call("x", other_day, 5.0)])

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    assert bucket.get(key_for(DAY)) == (",".join(HEADER) + "\n").encode()


def test_awkward_agent_ids_survive_csv_quoting(clickhouse, calls_table, bucket):
    noon = dt.datetime.combine(DAY, dt.time(12), tzinfo=UTC)
    agents = ["a,b", 'say "hi"', "Zoë-Ångström", "line\nbreak", "007", "  padded "]
    calls = [call(agent, noon, 30.0 + i) for i, agent in enumerate(agents)]
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(), str(DAY))

    data = bucket.get(key_for(DAY))
    assert sorted(row["agent_id"] for row in parse_csv(data)) == sorted(agents)
    assert_csv_matches(data, expected_metrics(calls)[DAY], DAY)
    back = bucket.io_manager().load_day("agent_metrics", str(DAY))
    assert back.get_column("agent_id").to_list() == [
        r.agent_id for r in expected_metrics(calls)[DAY]
    ]


def days_in_own_windows(sql: str) -> list[str]:
    """The days a query reads each in a branch of its own: its date written out, between the
    bounds of its UTC day."""
    days = re.findall(r"SELECT\s+toDate\('([0-9-]+)'\) AS date", sql)
    for day in days:
        following = dt.date.fromisoformat(day) + dt.timedelta(days=1)
        assert f">= toDateTime64('{day} 00:00:00.000', 3, 'UTC')" in sql
        assert f"< toDateTime64('{following} 00:00:00.000', 3, 'UTC')" in sql
    return days


def days_counted(sql: str) -> list[str]:
    """The days whose calls a query counts one by one (each in a branch of its own)."""
    return sorted(re.findall(r"SELECT toDate\('([0-9-]+)'\) AS date, count\(\)", sql))


def test_range_run_writes_the_bytes_of_single_day_runs(
    clickhouse, calls_table, bucket, s3_server, monkeypatch
):
    first = dt.date(2026, 11, 10)
    days = [first + dt.timedelta(days=i) for i in range(7)]
    calls = random_calls(first - dt.timedelta(days=1), days=9, calls_per_day=250, seed=5)
    # A quiet day in the middle still gets its (header-only) file.
    calls = [c for c in calls if c.started_at.date() != days[3]]
    insert_calls(clickhouse, calls_table, calls)
    settings = measuring(calls_table)

    queries, texts = [], []
    original = ClickHouseSession.query_polars

    def counting_query(self, sql, parameters=None):
        queries.append(parameters)
        texts.append(sql)
        return original(self, sql, parameters)

    monkeypatch.setattr(ClickHouseSession, "query_polars", counting_query)
    result = materialize(clickhouse, settings, bucket.io_manager(), str(days[0]), str(days[-1]))
    # The source's engine, from the server's table metadata; the calls of each day of the
    # range and of the same weekdays in the four weeks before (their usual volume), in one
    # query; the first day alone (which tells how many rows a call makes), then the rest of the
    # range in one query: not one query per day.
    assert queries[0] == {"database": calls_table.database, "table": calls_table.table}
    weeks_before = {day - dt.timedelta(days=7 * week) for day in days for week in range(1, 5)}
    assert days_counted(texts[1]) == sorted(str(day) for day in {*days, *weeks_before})
    # Each chunk's metrics query counts unusual calls (the random calls have "answered", a
    # status spelled like a counted one): a second query of the chunk counts them by kind, and
    # a third names the statuses.
    assert [(q["window_start"][:10], q["window_end"][:10]) for q in queries[2:]] == [
        *[("2026-11-10", "2026-11-11")] * 3,
        *[("2026-11-11", "2026-11-17")] * 3,
    ]
    assert bucket.keys() == [key_for(day) for day in days]
    range_bytes = {day: bucket.get(key_for(day)) for day in days}

    expected = expected_metrics(calls)
    for day in days:
        if day == days[3]:
            assert parse_csv(range_bytes[day]) == []
        else:
            assert_csv_matches(range_bytes[day], expected[day], day)
        materialize(clickhouse, settings, bucket.io_manager(), str(day))
        assert bucket.get(key_for(day)) == range_bytes[day], f"{day} differs from a single run"

    # Each day's materialization describes that day, not the range.
    materializations = {
        m.partition: m.metadata for m in result.asset_materializations_for_node("agent_metrics")
    }
    assert sorted(materializations) == [str(day) for day in days]
    for day in days:
        metadata = materializations[str(day)]
        rows = expected.get(day, [])
        assert metadata["dagster/row_count"].value == len(rows)
        assert metadata["calls_counted"].value == sum(row.total_calls for row in rows)
        assert metadata["dagster/uri"].value == f"s3://{bucket.name}/{key_for(day)}"
        assert metadata["run_days"].value == f"{days[0]}...{days[-1]}"
        on_the_day = [c for c in calls if c.started_at.date() == day]
        assert metadata["statuses_seen"].value == statuses_seen(on_the_day)
        assert metadata["source_rows"].value == len(on_the_day)
        preview = metadata["preview"].value
        assert (rows[0].agent_id in preview) if rows else preview == "_no rows_"


def test_rerun_overwrites_with_identical_bytes_locally(clickhouse, calls_table, tmp_path):
    calls = random_calls(DAY, days=1, calls_per_day=300, seed=9)
    insert_calls(clickhouse, calls_table, calls)
    io_manager = LocalCsvIOManager(base_dir=str(tmp_path))
    target = tmp_path / key_for(DAY)

    materialize(clickhouse, measuring(calls_table), io_manager, str(DAY))
    first = target.read_bytes()
    materialize(clickhouse, measuring(calls_table), io_manager, str(DAY))

    assert target.read_bytes() == first
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask, "readable like any other file"
    assert_csv_matches(first, expected_metrics(calls)[DAY], DAY)
    assert [p.name for p in target.parent.iterdir()] == [target.name], "no temp files left"


def test_gzip_objects_decompress_to_the_same_csv(clickhouse, calls_table, bucket):
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=13)
    insert_calls(clickhouse, calls_table, calls)

    materialize(clickhouse, measuring(calls_table), bucket.io_manager(gzip=True), str(DAY))

    key = key_for(DAY) + ".gz"
    assert bucket.keys() == [key]
    assert_csv_matches(gzip.decompress(bucket.get(key)), expected_metrics(calls)[DAY], DAY)


def test_source_columns_named_like_outputs_are_read_from_the_source(clickhouse, bucket):
    source = SourceTable(
        table=f"calls_renamed_{uuid.uuid4().hex[:8]}",
        columns={
            "call_id": "id",
            "agent_id": "agent",
            "started_at": "date",
            "duration_sec": "avg_call_length_sec",
            "status": "total_calls",
        },
    )
    create_calls_table(clickhouse, source)
    calls = random_calls(DAY - dt.timedelta(days=1), days=3, calls_per_day=200, seed=23)
    insert_calls(clickhouse, source, calls)

    materialize(clickhouse, measuring(source), bucket.io_manager(), str(DAY))

    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)


def test_a_range_queries_in_chunks_of_days_and_writes_the_same_bytes(
    clickhouse, calls_table, bucket, monkeypatch
):
    first = dt.date(2026, 11, 10)
    days = [first + dt.timedelta(days=i) for i in range(7)]
    # No status spelled like a counted one, whose names a query of their own would fetch.
    calls = [
        c for c in random_calls(first, days=7, calls_per_day=150, seed=9) if c.status != "answered"
    ]
    # A broken call on the last day: its id comes from a quality query of that chunk only.
    calls.append(call(None, dt.datetime.combine(days[-1], dt.time(9), UTC), 12.0))
    insert_calls(clickhouse, calls_table, calls)
    settings = measuring(calls_table, invalid_rows=InvalidRowsPolicy.EXCLUDE)
    whole = {}
    materialize(clickhouse, settings, bucket.io_manager(), str(days[0]), str(days[-1]))
    for day in days:
        whole[day] = bucket.get(key_for(day))

    windows, counted_days, days_read = [], [], []
    original = ClickHouseSession.query_polars

    def recording_query(self, sql, parameters=None):
        if "window_start" in parameters:  # not the lookup of the source's engine
            windows.append((parameters["window_start"][:10], parameters["window_end"][:10]))
            days_read.append(days_in_own_windows(sql))
        counted_days.append(days_counted(sql))
        return original(self, sql, parameters)

    monkeypatch.setattr(ClickHouseSession, "query_polars", recording_query)
    result = materialize(
        clickhouse,
        settings,
        bucket.io_manager(),
        str(days[0]),
        str(days[-1]),
        chunking=Chunking(max_days_per_query=3),
    )
    *metrics, counts = windows
    # The calls of every day and of the same weekdays in the four weeks before (their usual
    # volume), in one query.
    weeks_before = {day - dt.timedelta(days=7 * week) for day in days for week in range(1, 5)}
    counted = sorted(str(day) for day in {*days, *weeks_before})
    assert [day for query in counted_days for day in query] == counted
    assert counted_days[1] == counted, "the calls of every day, one query"
    # The first day alone tells how many rows a call makes; then three days at a time.
    assert metrics == [
        ("2026-11-10", "2026-11-11"),
        ("2026-11-11", "2026-11-14"),
        ("2026-11-14", "2026-11-17"),
    ]
    # Only the chunk that counted a broken call counts it by kind and fetches its id.
    assert counts == metrics[-1]
    # Each query of a chunk reads each of its days in that day's own window.
    assert days_read == [
        [str(day) for day in days[:1]],
        [str(day) for day in days[1:4]],
        *[[str(day) for day in days[4:]]] * 2,
    ]
    for day in days:
        assert bucket.get(key_for(day)) == whole[day]
        assert_csv_matches(whole[day], expected_metrics(calls)[day], day)
    excluded = {
        e.partition: e.metadata["sample_call_ids"].value
        for e in result.get_asset_check_evaluations()
        if e.check_name == "excluded_source_rows"
    }
    assert excluded == {str(day): [] for day in days[:-1]} | {str(days[-1]): [calls[-1].call_id]}
