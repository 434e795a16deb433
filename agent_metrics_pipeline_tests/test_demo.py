"""The demo as a new user runs it: its own process, the embedded default, correct files."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import polars as pl
import pytest

from agent_metrics_pipeline_tests.helpers import run_ok
from agent_metrics_pipeline_tests.oracle import Call, assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e


def test_demo_publishes_correct_files_on_the_embedded_default(project_env, tmp_path):
    result = run_ok([sys.executable, "-m", "agent_metrics_pipeline.demo"], project_env)
    home = Path(project_env["AGENT_METRICS_HOME"])
    files = sorted((home / "output" / "agent_metrics").glob("*/agent_metrics_*.csv"))
    assert len(files) == 8
    assert str(files[-1]) in result.stdout

    run_ok(
        [
            sys.executable,
            "-m",
            "agent_metrics_pipeline_tests.engine_cli",
            "dump",
            str(home / "clickhouse"),
            str(tmp_path / "seeded.parquet"),
        ],
        project_env,
    )
    calls = [
        Call(**row) for row in pl.read_parquet(tmp_path / "seeded.parquet").iter_rows(named=True)
    ]
    expected = expected_metrics(calls)
    for path in files:
        day = dt.date.fromisoformat(path.parent.name)
        assert len(expected[day]) == 300
        assert_csv_matches(path.read_bytes(), expected[day], day)
