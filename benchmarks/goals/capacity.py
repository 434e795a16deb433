"""Capacity: what each published day adds to the instance, on SQLite and on PostgreSQL.

The figures of docs/operating.md ("Capacity"). Instances of 30 and 120 published days are filled
as goal 9 fills them (each day a run with its materialization and 11 check evaluations, and the
observation that found the day): on SQLite with the development instance's settings, and on a
PostgreSQL server with deploy/dagster.yaml. A day's cost is the difference over the 90 days
between them, so what any instance holds from the start does not count; a year is 365 such
days. The sizes are as the storage leaves them (no VACUUM).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.context import Context
from benchmarks.goals.history import WINDOW_DAYS, goal_env
from benchmarks.history import folder_bytes
from benchmarks.processes import REPO_ROOT, run_worker
from benchmarks.report import Row, Section

GOAL = "10"
SIZES = (30, 120)
QUICK_SIZES = (30, 45)
DEPLOY_SETTINGS = REPO_ROOT / "deploy" / "dagster.yaml"


def measure(context: Context) -> Section:
    small, large = QUICK_SIZES if context.quick else SIZES
    env = goal_env(context, long_days=large)
    recorded = run_worker("benchmarks.goals.history:record", {}, env).value
    folder = context.subfolder("capacity")
    sqlite = {
        days: _sqlite_bytes(env, folder / f"sqlite-{days}", days, recorded)
        for days in (small, large)
    }
    # The server runs as an unprivileged user when this runs as root: its folder must not be
    # inside the run's private one.
    with tempfile.TemporaryDirectory(prefix="agent-metrics-bench-pg-") as server_folder:
        postgres = _postgres_bytes(env, Path(server_folder), folder, (small, large), recorded)
    rows = []
    for storage, sizes in (("SQLite", sqlite), ("PostgreSQL", postgres)):
        per_day = (sizes[large] - sizes[small]) / (large - small)
        rows += [
            Row(GOAL, f"{storage} instance, {small} published days", [sizes[small]], unit="MB"),
            Row(GOAL, f"{storage} instance, {large} published days", [sizes[large]], unit="MB"),
            Row(GOAL, f"{storage}: KiB per published day", [round(per_day / 1024, 1)], unit=""),
            Row(GOAL, f"{storage}: MB per year of days", [per_day * 365], unit="MB"),
        ]
    return Section(
        rows=rows,
        notes=[
            f"Goal {GOAL} (capacity, no target): each published day is a run with its "
            f"materialization, 11 check evaluations and the observation that found the day "
            f"(the window of {WINDOW_DAYS} days observed for real, older days as the newest). "
            "A day republished after a late change costs another run and observation of it.",
        ],
    )


def _sqlite_bytes(env: dict[str, str], home: Path, days: int, recorded: dict) -> int:
    run_worker(
        "benchmarks.history:build",
        {"dagster_home": str(home), "days": days, "recorded": recorded},
        env,
        timeout=3600,
    )
    return folder_bytes(home)


def _postgres_bytes(
    env: dict[str, str], folder: Path, homes: Path, sizes: tuple[int, ...], recorded: dict
) -> dict[int, int]:
    import psycopg2

    from agent_metrics_pipeline_tests.helpers import postgres_server

    with postgres_server(folder) as variables:
        admin = psycopg2.connect(
            host=variables["DAGSTER_PG_HOST"],
            port=int(variables["DAGSTER_PG_PORT"]),
            user="postgres",
            dbname="postgres",
        )
        admin.autocommit = True
        sizes_bytes = {}
        for days in sizes:
            database = f"dagster_{days}_days"
            admin.cursor().execute(f"CREATE DATABASE {database}")
            run_worker(
                "benchmarks.history:fill",
                {
                    "dagster_home": str(homes / f"postgres-{days}"),
                    "days": days,
                    "recorded": recorded,
                    "settings": str(DEPLOY_SETTINGS),
                },
                {**env, **variables, "DAGSTER_PG_DB": database},
                timeout=3600,
            )
            cursor = admin.cursor()
            cursor.execute("SELECT pg_database_size(%s)", (database,))
            sizes_bytes[days] = int(cursor.fetchone()[0])
        admin.close()
    return sizes_bytes
