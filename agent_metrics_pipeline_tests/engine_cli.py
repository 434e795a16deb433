"""Loads and dumps calls in an embedded engine folder from a process of its own.

The embedded engine serves one folder per process, and the test process already holds the
session's folder; subprocess tests (CLI, demo) use this to reach their own folders.

    python -m agent_metrics_pipeline_tests.engine_cli load ENGINE_DIR CALLS.parquet
    python -m agent_metrics_pipeline_tests.engine_cli dump ENGINE_DIR CALLS.parquet
    python -m agent_metrics_pipeline_tests.engine_cli hold ENGINE_DIR    # until terminated
    python -m agent_metrics_pipeline_tests.engine_cli probe ENGINE_DIR [WAIT_SEC]  # the error
    python -m agent_metrics_pipeline_tests.engine_cli command ENGINE_DIR STATEMENT
"""

from __future__ import annotations

import sys
import time

import polars as pl

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline_tests.helpers import create_calls_table, insert_calls
from agent_metrics_pipeline_tests.oracle import Call


def main(command: str, engine_dir: str, path: str = "") -> None:
    """``path`` is the Parquet file of ``load`` and ``dump``, the SQL of ``command``, the
    seconds ``probe`` waits for an engine another process holds."""
    clickhouse = ClickHouseResource(embedded_path=engine_dir)
    source = SourceTable()
    if command == "load":
        create_calls_table(clickhouse, source)
        calls = [Call(**row) for row in pl.read_parquet(path).iter_rows(named=True)]
        insert_calls(clickhouse, source, calls)
    elif command == "dump":
        clickhouse.query_polars(
            f"SELECT {', '.join(source.column_names)} FROM {source.qualified_name}"
        ).write_parquet(path)
    elif command == "hold":
        with clickhouse.get_client() as client:
            client.query("SELECT 1")
            print("holding", flush=True)
            time.sleep(600)
    elif command == "probe":
        try:
            with clickhouse.session(engine_wait_sec=float(path or 0)) as session:
                session.query_polars("SELECT 1")
            print("ok")
        except Exception as error:
            print(f"{type(error).__name__}: {error}")
    elif command == "command":
        with clickhouse.get_client() as client:
            client.command(path)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
