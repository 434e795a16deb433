"""The production instance settings (deploy/dagster.yaml) against a real PostgreSQL server.

The server comes from the PostgreSQL binaries in the locked dev environment; it listens on
127.0.0.1 and is started and stopped by the fixture.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from agent_metrics_pipeline.quality import checks
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    REPO_ROOT,
    insert_calls,
    materialize,
    measuring,
    postgres_server,
    random_calls,
)

DAY = dt.date(2026, 11, 20)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="agent-metrics-pg-"))
    try:
        with postgres_server(data_dir) as variables:
            yield variables
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_materialization_is_stored_in_postgres(
    postgres, monkeypatch, tmp_path, clickhouse, calls_table
):
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", tmp_path / "dagster.yaml")
    insert_calls(clickhouse, calls_table, random_calls(DAY, days=1, calls_per_day=100))

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        result = materialize(
            clickhouse,
            measuring(calls_table),
            LocalCsvIOManager(base_dir=str(tmp_path / "out")),
            str(DAY),
            instance=instance,
        )

    with psycopg2.connect(
        host="127.0.0.1", port=int(postgres["DAGSTER_PG_PORT"]), user="postgres", dbname="dagster"
    ) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchall() == [("SUCCESS",)]
        cursor.execute(
            "SELECT partition FROM event_logs WHERE run_id = %s "
            "AND dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key LIKE %s",
            (result.run_id, "%agent_metrics%"),
        )
        assert cursor.fetchall() == [(str(DAY),)]
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s "
            "AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
            (result.run_id,),
        )
        assert cursor.fetchone()[0] == len(checks.CHECKS)
