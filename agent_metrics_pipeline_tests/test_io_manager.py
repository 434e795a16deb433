"""Reading published days back: a downstream asset gets Polars frames from the CSV objects."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import polars as pl

from agent_metrics_pipeline.assets import CSV_IO_MANAGER_KEY
from agent_metrics_pipeline.metrics import METRICS_SCHEMA
from agent_metrics_pipeline_tests.conftest import insert_calls
from agent_metrics_pipeline_tests.helpers import build_asset, metrics_settings, random_calls
from agent_metrics_pipeline_tests.oracle import expected_metrics

FIRST_DAY = dt.date(2026, 11, 10)
DAYS = [FIRST_DAY + dt.timedelta(days=i) for i in range(3)]


def test_downstream_asset_reads_one_day_and_a_range(clickhouse, calls_table, bucket):
    calls = random_calls(FIRST_DAY, days=len(DAYS), calls_per_day=150, seed=51)
    insert_calls(clickhouse, calls_table, calls)
    agent_metrics = build_asset()
    received = []

    @dg.asset(
        partitions_def=agent_metrics.partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={"agent_metrics": dg.AssetIn()},
    )
    def busiest_agent(agent_metrics) -> None:
        received.append(agent_metrics)

    resources = {
        "clickhouse": clickhouse,
        "metrics_settings": metrics_settings(calls_table),
        CSV_IO_MANAGER_KEY: bucket.io_manager(),
    }
    range_tags = {
        "dagster/asset_partition_range_start": str(DAYS[0]),
        "dagster/asset_partition_range_end": str(DAYS[-1]),
    }
    dg.materialize([agent_metrics], resources=resources, tags=range_tags)

    dg.materialize(
        [agent_metrics, busiest_agent],
        selection=[busiest_agent],
        partition_key=str(DAYS[1]),
        resources=resources,
    )
    dg.materialize(
        [agent_metrics, busiest_agent],
        selection=[busiest_agent],
        resources=resources,
        tags=range_tags,
    )

    one_day, per_day = received
    expected = expected_metrics(calls)

    def check(frame: pl.DataFrame, day: dt.date) -> None:
        assert frame.schema == METRICS_SCHEMA
        assert frame.get_column("agent_id").to_list() == [r.agent_id for r in expected[day]]
        assert frame.get_column("total_calls").to_list() == [r.total_calls for r in expected[day]]
        assert set(frame.get_column("date")) == {day}

    assert isinstance(one_day, pl.DataFrame)
    check(one_day, DAYS[1])
    assert sorted(per_day) == [str(day) for day in DAYS]
    for day in DAYS:
        check(per_day[str(day)], day)
