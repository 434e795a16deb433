"""Two days of calls published to S3 by the whole asset, and read back against the oracle:
what the S3 tests run, whatever the bucket asks of the requests."""

from __future__ import annotations

import datetime as dt
import uuid

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    create_calls_table,
    insert_calls,
    materialize,
    measuring,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

DAYS = [dt.date(2026, 3, 2), dt.date(2026, 3, 3)]
CALLS = random_calls(DAYS[0], days=len(DAYS), calls_per_day=120, seed=35)
# Small enough that every day is several parts.
ROWS_PER_FILE = 7


def seed_calls(clickhouse: ClickHouseResource) -> SourceTable:
    """A table of its own holding the two days' calls."""
    table = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(clickhouse, table)
    insert_calls(clickhouse, table, CALLS)
    return table


def publish(
    clickhouse: ClickHouseResource,
    source: SourceTable,
    io_manager: S3CsvIOManager,
    raise_on_error: bool = True,
):
    """The two days as one run."""
    return materialize(
        clickhouse,
        measuring(source),
        io_manager,
        str(DAYS[0]),
        str(DAYS[-1]),
        raise_on_error=raise_on_error,
    )


def assert_published_as_the_oracle(io_manager: S3CsvIOManager) -> None:
    """Each day, read back through the IO manager, against the oracle over the calls."""
    expected = expected_metrics(CALLS)
    for day in DAYS:
        frame = io_manager.load_day("agent_metrics", str(day))
        assert_csv_matches(frame.write_csv().encode(), expected[day], day)
