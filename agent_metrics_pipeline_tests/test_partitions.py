"""Daily partitions: a key that is not a day of the partitions is refused before any work."""

from __future__ import annotations

import dagster as dg
import pytest

from agent_metrics_pipeline.io_managers import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import materialize, measuring


@pytest.mark.parametrize("bad_key", ["2026-02-30", "20261120", "2099-01-01", "2025-12-31"])
def test_invalid_partition_key_is_refused_before_any_work(
    clickhouse, calls_table, tmp_path, bad_key
):
    with pytest.raises(dg.DagsterUnknownPartitionError, match=f"key `{bad_key}`"):
        materialize(
            clickhouse,
            measuring(calls_table),
            LocalCsvIOManager(base_dir=str(tmp_path)),
            bad_key,
        )
    assert not any(tmp_path.rglob("*"))
