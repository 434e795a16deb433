"""Large days and long ranges: chunks of days, agent shards, and the server's memory limit.

Sharded runs are compared with unsharded runs of the same rows (the same bytes) and with the
NumPy oracle; the memory-limit test reads through the HTTP stand-in as a user whose profile
sets ``max_memory_usage``, so the limit is the engine's own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from zoneinfo import ZoneInfo

import dagster as dg
import numpy as np
import polars as pl
import pytest

from agent_metrics_pipeline.aggregate.chunking import Chunk, next_chunk
from agent_metrics_pipeline.clickhouse.relation import SourceRelation, read_relation
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import (
    MAX_AGENT_SHARDS,
    Chunking,
    InvalidRowsPolicy,
    SourceTable,
)
from agent_metrics_pipeline.demo.sample_calls import source_table_ddl
from agent_metrics_pipeline.publish.reading import calls_held_per_day
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline.storage.published_format import from_csv_bytes, metrics_schema
from agent_metrics_pipeline_tests.helpers import (
    LIMITED_READER,
    READER_PASSWORD,
    UTC,
    create_calls_table,
    insert_calls,
    key_for,
    materialize,
    measuring,
    random_calls,
    writer,
)
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics

FIRST = dt.date(2026, 11, 2)


def days_from(first: dt.date, count: int) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range(count)]


def plan(days, calls_per_day, chunking, rows_per_call):
    """Every chunk of ``days``, were ``rows_per_call`` known from the start."""
    chunks, start = [], 0
    while start < len(days):
        chunks.append(next_chunk(days[start:], calls_per_day, chunking, rows_per_call))
        start += len(chunks[-1].days)
    return chunks


def test_the_first_chunk_is_one_day_while_rows_per_call_are_unknown():
    days = days_from(FIRST, 3)
    chunk = next_chunk(days, dict.fromkeys(days, 10), Chunking(), rows_per_call=None)
    assert chunk == Chunk((days[0],), 1)


def test_leading_days_without_calls_share_one_query():
    days = days_from(FIRST, 5)
    calls = dict(zip(days, [0, 0, 0, 10, 0], strict=True))
    chunk = next_chunk(days, calls, Chunking(), rows_per_call=None)
    assert chunk == Chunk(tuple(days[:3]), 1)


def test_days_group_while_their_calls_fit_and_a_day_with_too_many_calls_is_sharded():
    days = days_from(FIRST, 6)
    calls = dict(zip(days, [40, 50, 20, 250, 0, 90], strict=True))

    chunks = plan(days, calls, Chunking(max_calls_per_query=100), rows_per_call=0.1)

    assert (
        chunks
        == [
            Chunk(tuple(days[0:2]), 1),  # 90 calls; the third day would make 110
            Chunk((days[2],), 1),
            Chunk((days[3],), 3),  # 250 calls: three shards of about 83
            Chunk(tuple(days[4:6]), 1),
        ]
    )


def test_days_group_while_their_rows_fit_and_a_day_with_too_many_rows_is_sharded():
    days = days_from(FIRST, 4)
    calls = dict(zip(days, [100, 100, 1000, 100], strict=True))

    # Half a row per call: 50 rows on a quiet day, 500 on the busy one.
    chunks = plan(days, calls, Chunking(max_rows_per_query=100), rows_per_call=0.5)

    assert chunks == [Chunk(tuple(days[0:2]), 1), Chunk((days[2],), 5), Chunk((days[3],), 1)]


def test_the_day_limit_and_the_shard_setting_apply_to_every_chunk():
    days = days_from(FIRST, 5)

    chunks = plan(
        days,
        {},
        Chunking(max_days_per_query=2, max_calls_per_query=10, agent_shards=4),
        rows_per_call=1.0,
    )

    assert chunks == [
        Chunk(tuple(days[0:2]), 4),
        Chunk(tuple(days[2:4]), 4),
        Chunk((days[4],), 4),
    ]


def test_shards_never_exceed_the_cap():
    day = str(FIRST)
    chunk = next_chunk([day], {day: 10**9}, Chunking(max_calls_per_query=1), rows_per_call=None)
    assert chunk.shards == MAX_AGENT_SHARDS


@pytest.mark.parametrize(
    "order_by", ["`started_at`", "(toDate(`started_at`), `status`)", "`call_id`"]
)
def test_each_day_s_calls_are_counted_by_the_sorting_key_or_in_one_pass(
    clickhouse, calls_table, order_by
):
    zone = "America/New_York"
    # 2026-11-01 is 25 hours long in New York: its clocks go back an hour.
    first = dt.date(2026, 10, 30)
    days = [first + dt.timedelta(days=offset) for offset in range(5)]
    calls = random_calls(first - dt.timedelta(days=1), days=7, calls_per_day=200, seed=43)
    source = replace(calls_table, table=f"{calls_table.table}_sorted")
    ddl = source_table_ddl(source)[1].replace("ORDER BY `started_at`", f"ORDER BY {order_by}")
    with writer(clickhouse).get_client() as client:
        client.command(ddl)
    try:
        insert_calls(clickhouse, source, calls)
        partitions = dg.DailyPartitionsDefinition(start_date=str(first), timezone=zone)
        with clickhouse.session() as session:
            relation = read_relation(session, source)
            counted = calls_held_per_day(session, measuring(source), partitions, days, relation)
        assert relation.sorted_by("started_at") == (order_by != "`call_id`")
        local_days = Counter(c.started_at.astimezone(ZoneInfo(zone)).date() for c in calls)
        assert counted == {day: local_days[day] for day in days}
    finally:
        with writer(clickhouse).get_client() as client:
            client.command(f"DROP TABLE IF EXISTS {source.qualified_name}")


def test_a_sorting_key_leads_with_the_start_column_alone_or_rounded_down_in_time():
    def sorted_by_start(key: str) -> bool:
        return SourceRelation("MergeTree", key).sorted_by("started_at")

    assert sorted_by_start("started_at")
    assert sorted_by_start("toStartOfHour(started_at), agent_id")
    assert not sorted_by_start("agent_id, started_at")
    assert not sorted_by_start("cityHash64(started_at)"), "a hash keeps no order of time"
    assert not sorted_by_start("started_at_local")
    assert not sorted_by_start("")


def test_sharded_days_publish_the_bytes_of_unsharded_days(clickhouse, calls_table, bucket):
    days = [FIRST + dt.timedelta(days=i) for i in range(3)]
    calls = random_calls(FIRST, days=3, calls_per_day=300, seed=41)
    # Calls without an agent (NULL and empty) must land in one shard, and be counted once.
    noon = dt.datetime.combine(days[1], dt.time(12), UTC)
    calls += [
        Call("no-agent-1", None, noon, 30.0, "Answered"),
        Call("no-agent-2", "", noon, 40.0, "Answered"),
    ]
    insert_calls(clickhouse, calls_table, calls)
    settings = measuring(calls_table, invalid_rows=InvalidRowsPolicy.EXCLUDE)
    first, last = str(days[0]), str(days[-1])
    materialize(clickhouse, settings, bucket.io_manager(), first, last)
    unsharded = {day: bucket.get(key_for(day)) for day in days}

    # About 300 counted calls a day over a budget of 60: every day in several shards.
    result = materialize(
        clickhouse,
        settings,
        bucket.io_manager(),
        first,
        last,
        chunking=Chunking(max_calls_per_query=60),
    )

    expected = expected_metrics(calls)
    shards_used = {}
    for materialization in result.get_asset_materialization_events():
        event = materialization.materialization
        shards_used[event.partition] = event.metadata["agent_shards"].value
    assert all(shards > 1 for shards in shards_used.values()), shards_used
    for day in days:
        assert bucket.get(key_for(day)) == unsharded[day]
        assert_csv_matches(unsharded[day], expected[day], day)
    excluded = {
        evaluation.partition: evaluation.metadata["excluded_null_agent_or_duration_calls"].value
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == "excluded_source_rows"
    }
    assert excluded == {first: 0, str(days[1]): 2, last: 0}


def seed_large_day(clickhouse: ClickHouseResource, table: str, calls: int, agents: int) -> None:
    """``calls`` answered calls spread over FIRST, generated by the engine itself."""
    with writer(clickhouse).get_client() as client:
        client.command(
            f"""INSERT INTO {table}
            SELECT toString(number), concat('agent-', toString(number % {agents})),
                   toDateTime64('{FIRST} 00:00:00', 3, 'UTC')
                       + toIntervalMillisecond(intDiv(number * 86400000, {calls})),
                   ((number * 7919) % 6000) / 10 + 0.25, 'Answered'
            FROM numbers({calls})"""
        )


def polars_oracle(clickhouse: ClickHouseResource, table: str) -> pl.DataFrame:
    """The day's metrics computed by Polars over the raw rows read back from the engine."""
    with writer(clickhouse).get_client() as client:
        rows = pl.from_arrow(client.query_arrow(f"SELECT agent_id, duration_sec FROM {table}"))
    return (
        rows.with_columns(pl.col("agent_id").cast(pl.String))
        .group_by("agent_id")
        .agg(
            pl.col("duration_sec").mean().alias("avg"),
            pl.col("duration_sec").quantile(0.9, interpolation="linear").alias("p90"),
            pl.len().alias("total_calls"),
        )
        .sort("agent_id")
    )


@pytest.fixture
def server_calls_table(server_clickhouse) -> Iterator[SourceTable]:
    source = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(server_clickhouse, source)
    yield source
    with writer(server_clickhouse).get_client() as client:
        client.command(f"DROP TABLE IF EXISTS {source.qualified_name}")


@pytest.mark.skipif(
    bool(os.environ.get("AGENT_METRICS_TEST_CLICKHOUSE_HOST")),
    reason="needs the stand-in's user whose profile caps each query's memory",
)
def test_a_day_over_the_per_query_memory_limit_is_sharded_until_it_fits(
    server_clickhouse, server_calls_table, bucket
):
    table = server_calls_table.qualified_name
    # Two million calls need about 32 MB in one query and 16 MB in each of two shards; the
    # limited reader may use 20 MB.
    seed_large_day(server_clickhouse, table, 2_000_000, agents=2000)
    settings = measuring(server_calls_table)
    materialize(server_clickhouse, settings, bucket.io_manager(prefix="unlimited"), str(FIRST))
    limited = ClickHouseResource(
        host=server_clickhouse.host,
        port=server_clickhouse.port,
        username=LIMITED_READER,
        password=READER_PASSWORD,
    )

    result = materialize(limited, settings, bucket.io_manager(), str(FIRST))

    (materialization,) = result.get_asset_materialization_events()
    assert materialization.materialization.metadata["agent_shards"].value > 1
    published = bucket.get(key_for(FIRST))
    assert published == bucket.get(f"unlimited/{FIRST}/agent_metrics_{FIRST}.csv")
    frame = from_csv_bytes(published)
    oracle = polars_oracle(server_clickhouse, table)
    assert frame.get_column("agent_id").to_list() == oracle.get_column("agent_id").to_list()
    assert frame.get_column("total_calls").to_list() == oracle.get_column("total_calls").to_list()
    for column, exact in (("avg_call_length_sec", "avg"), ("p90_call_length_sec", "p90")):
        error = np.abs(frame.get_column(column).to_numpy() - oracle.get_column(exact).to_numpy())
        assert error.max() <= 0.005 + 1e-9, column


def day_keys(bucket, prefix: str, day: dt.date) -> list[str]:
    return [key for key in bucket.keys() if key.startswith(f"{prefix}/{day}/")]


def test_a_day_in_parts_reads_back_equal_and_republishing_removes_stale_parts(
    clickhouse, calls_table, bucket
):
    # 31 agents: 25 plus the awkward ids.
    insert_calls(clickhouse, calls_table, random_calls(FIRST, days=1, calls_per_day=400, seed=5))
    settings = measuring(calls_table)
    materialize(clickhouse, settings, bucket.io_manager(), str(FIRST))
    single = bucket.get(key_for(FIRST))
    rows = from_csv_bytes(single).height

    in_tens = bucket.io_manager(rows_per_file=10)
    materialize(clickhouse, settings, in_tens, str(FIRST))

    manifest_key = f"agent_metrics/{FIRST}/manifest.json"
    manifest = json.loads(bucket.get(manifest_key))
    parts = manifest["parts"]
    assert manifest["rows"] == rows and manifest["part_count"] == len(parts) == 4
    assert [part["rows"] for part in parts] == [10, 10, 10, rows - 30]
    assert day_keys(bucket, "agent_metrics", FIRST) == sorted(
        [manifest_key] + [p["key"] for p in parts]
    ), "the single file of the earlier layout is removed"
    for part in parts:
        assert hashlib.sha256(bucket.get(part["key"])).hexdigest() == part["sha256"]
    assert in_tens.load_day("agent_metrics", str(FIRST)).equals(from_csv_bytes(single))
    # Each part is the one file's bytes, cut between rows, under the same header line.
    header, _ = single.split(b"\n", 1)
    bodies = [bucket.get(part["key"]).split(b"\n", 1)[1] for part in parts]
    assert header + b"\n" + b"".join(bodies) == single

    in_twenties = bucket.io_manager(rows_per_file=20)
    materialize(clickhouse, settings, in_twenties, str(FIRST))

    manifest = json.loads(bucket.get(manifest_key))
    assert manifest["part_count"] == 2
    assert day_keys(bucket, "agent_metrics", FIRST) == sorted(
        [manifest_key] + [part["key"] for part in manifest["parts"]]
    )
    assert in_twenties.load_day("agent_metrics", str(FIRST)).equals(from_csv_bytes(single))


WRITTEN: list[str] = []


class RecordingLocalIOManager(LocalCsvIOManager):
    """The local IO manager, noting the order in which it writes objects."""

    def _write(self, key: str, data: bytes, content_type: str | None = None) -> None:
        super()._write(key, data, content_type)
        WRITTEN.append(key)


def test_the_manifest_is_written_after_every_part_and_a_glob_reads_the_single_file(
    clickhouse, calls_table, tmp_path
):
    insert_calls(clickhouse, calls_table, random_calls(FIRST, days=2, calls_per_day=300, seed=8))
    settings = measuring(calls_table)
    last = str(FIRST + dt.timedelta(days=1))
    single = LocalCsvIOManager(base_dir=str(tmp_path / "single"))
    materialize(clickhouse, settings, single, str(FIRST), last)
    WRITTEN.clear()

    materialize(
        clickhouse,
        settings,
        RecordingLocalIOManager(base_dir=str(tmp_path / "parts"), rows_per_file=7),
        str(FIRST),
        last,
    )

    for day in (str(FIRST), last):
        written = [key for key in WRITTEN if f"/{day}/" in key]
        assert written[-1].endswith("manifest.json")
        assert all("/part-" in key for key in written[:-1]) and len(written) > 2
        glob = pl.read_csv(
            tmp_path / "parts" / "agent_metrics" / day / "part-*.csv", schema=metrics_schema()
        )
        whole = pl.read_csv(
            single.uri(single.object_key("agent_metrics", day)), schema=metrics_schema()
        )
        assert glob.equals(whole)
