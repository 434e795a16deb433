"""Runs started together on a fresh instance folder all succeed: real `dagster asset materialize`
processes on a new DAGSTER_HOME with the project's instance settings, released at once."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    calls_to_parquet,
    key_for,
    load_into_engine,
    random_calls,
    run_ok,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e

DAY = dt.date(2026, 11, 20)
RUNS = 4
MATERIALIZE = [
    *("asset", "materialize", "-m", "agent_metrics_pipeline.definitions"),
    *("--select", "agent_metrics", "--partition", str(DAY)),
]
# The `dagster` command's own entry point, entered once the gate file exists: the processes
# import Dagster first (seconds, differing between them), then all open the instance within a
# few milliseconds of each other, which is when a fresh folder's storage is created.
AT_THE_GATE = """
import sys, time
from pathlib import Path
from dagster._cli import main
ready, gate = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not gate.exists():
    time.sleep(0.001)
sys.argv = ["dagster", *sys.argv[3:]]
sys.exit(main())
"""
WAIT_SEC = 120


def test_runs_started_together_on_a_fresh_instance_all_succeed(project_env, tmp_path):
    dagster_home = Path(project_env["DAGSTER_HOME"])
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    calls = random_calls(DAY, days=1, calls_per_day=200, seed=19)
    calls_to_parquet(calls, tmp_path / "calls.parquet")
    home = Path(project_env["AGENT_METRICS_HOME"])
    load_into_engine(home / "clickhouse", tmp_path / "calls.parquet")
    gate = tmp_path / "gate"

    logs = [tmp_path / f"run-{n}.log" for n in range(RUNS)]
    outputs = [log.open("w") for log in logs]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", AT_THE_GATE, str(tmp_path / f"ready-{n}"), str(gate)]
            + MATERIALIZE,
            cwd=tmp_path,
            env=project_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its step processes too are stopped with it
        )
        for n, output in enumerate(outputs)
    ]
    try:
        deadline = time.monotonic() + WAIT_SEC
        while not all((tmp_path / f"ready-{n}").exists() for n in range(RUNS)):
            assert all(run.poll() is None for run in runs), "a run exited before the gate"
            assert time.monotonic() < deadline, "the runs did not reach the gate"
            time.sleep(0.05)
        gate.touch()
        # A run whose step died on a broken instance keeps the pool slot, and the others wait
        # for it: they are stopped at the deadline and fail below.
        deadline = time.monotonic() + WAIT_SEC
        while any(run.poll() is None for run in runs) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for output in outputs:
            output.close()
    failed = [
        f"run {n} exited with {run.returncode}:\n{log.read_text()[-2000:]}"
        for n, (run, log) in enumerate(zip(runs, logs, strict=True))
        if run.returncode != 0
    ]
    assert not failed, "\n\n".join(failed)

    # The instance is healthy afterwards: a later run works, and every run is recorded.
    run_ok([str(Path(sys.executable).parent / "dagster"), *MATERIALIZE], env=project_env)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
        statuses = [run.status for run in instance.get_runs()]
    assert statuses == [dg.DagsterRunStatus.SUCCESS] * (RUNS + 1)
    published = home / "output" / key_for(DAY)
    assert_csv_matches(published.read_bytes(), expected_metrics(calls)[DAY], DAY)
