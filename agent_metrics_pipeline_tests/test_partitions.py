"""Daily partitions: a key that is not a day of the partitions, or a reversed range, is refused
before any work, and never retried."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from agent_metrics_pipeline.core.partitions import InvalidPartitionKeyError
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import failure_message, materialize, measuring


@pytest.mark.parametrize("bad_key", ["2026-02-30", "20261120", "2099-01-01", "2025-12-31"])
def test_invalid_partition_key_is_refused_before_any_work(
    clickhouse, calls_table, tmp_path, bad_key
):
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    valid = f"expected a day as YYYY-MM-DD from 2026-01-01 to {yesterday} in UTC"
    with pytest.raises(InvalidPartitionKeyError, match=f"key `{bad_key}`: {valid}"):
        materialize(
            clickhouse,
            measuring(calls_table),
            LocalCsvIOManager(base_dir=str(tmp_path)),
            bad_key,
        )
    assert not any(tmp_path.rglob("*"))


def test_reversed_range_is_a_clear_permanent_error(clickhouse, calls_table, tmp_path):
    result = materialize(
        clickhouse,
        measuring(calls_table),
        LocalCsvIOManager(base_dir=str(tmp_path)),
        "2026-11-14",
        "2026-11-10",
        raise_on_error=False,
        retry_policy=dg.RetryPolicy(max_retries=2),
    )
    message = failure_message(result)
    assert "2026-11-14...2026-11-10 is reversed" in message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not any(tmp_path.rglob("*"))
