"""A run killed mid-step never blocks the next one: real CLI runs on one Dagster instance with
the project's pool of one, the first SIGKILLed while its step holds the pool: the whole run,
or its run process alone."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.operations.alerts import FAILURE_SENSOR_NAME
from agent_metrics_pipeline.operations.watchdog import WATCHDOG_NAME
from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    calls_to_parquet,
    key_for,
    load_into_engine,
    random_calls,
    run_in_engine,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e

DAY = dt.date(2026, 11, 20)
MATERIALIZE = ["dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"]
WAIT_SEC = 120
RANGE_DAYS = 10


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SEC
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_run_killed_mid_step_never_blocks_the_next_one(
    project_env, tmp_path, hung_server, webhook
):
    dagster_home = Path(project_env["DAGSTER_HOME"])
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    calls = random_calls(DAY, days=1, calls_per_day=300, seed=71)
    calls_to_parquet(calls, tmp_path / "calls.parquet")
    home = Path(project_env["AGENT_METRICS_HOME"])
    load_into_engine(home / "clickhouse", tmp_path / "calls.parquet")
    select = [*MATERIALIZE, "--select", "agent_metrics", "--partition", str(DAY)]

    # Run A holds the pool while its step waits on an S3 endpoint that never answers.
    hanging_s3 = {
        **project_env,
        "S3_BUCKET": "metrics",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{hung_server.port}",
        "S3_READ_TIMEOUT_SEC": "300",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    first = subprocess.Popen(
        select,
        cwd=tmp_path,
        env=hanging_s3,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: hung_server.connections, "run A's step to write to S3")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

    # Run B, the same day to the local folder, waits for the pool slot A never gave back.
    second = subprocess.Popen(
        select, cwd=tmp_path, env=project_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        time.sleep(5)
        assert second.poll() is None, "run B must wait for the pool while A holds it"
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
        alerting = {**project_env, "AGENT_METRICS_ALERT_WEBHOOK_URL": webhook.url}
        defs = build_definitions(Settings.from_env(alerting))
        in_repository = {"instance": instance, "repository_name": defs.get_repository_def().name}
        failure_alert = defs.get_sensor_def(FAILURE_SENSOR_NAME)
        # The daemon's first tick on this instance: the watchdog fails the run before the
        # failure sensor's first tick, which only notes where the event log stands.
        tick = defs.get_sensor_def(WATCHDOG_NAME)(dg.build_sensor_context(instance=instance))
        first_alert_tick = failure_alert.evaluate_tick(dg.build_sensor_context(**in_repository))
        failure_alert.evaluate_tick(
            dg.build_sensor_context(**in_repository, cursor=first_alert_tick.cursor)
        )
        output, _ = second.communicate(timeout=WAIT_SEC)
    finally:
        second.kill()
    assert second.returncode == 0, output.decode()[-3000:]

    assert "failed" in tick.skip_message and "gave back the pool slots" in tick.skip_message
    waited, killed = instance.get_runs()  # newest first
    assert (killed.status, waited.status) == (
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.SUCCESS,
    )
    failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "is gone" in failure[-1].message
    (alert,) = webhook.bodies  # from the watchdog, once
    assert json.loads(alert)["run_id"] == killed.run_id
    published = home / "output" / key_for(DAY)
    assert_csv_matches(published.read_bytes(), expected_metrics(calls)[DAY], DAY)


def _step_process(instance: dg.DagsterInstance) -> int | None:
    """The pid of the step process of the instance's only run, once it has started."""
    runs = instance.get_runs()
    if not runs:
        return None
    started = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)
    return (
        int(started[0].dagster_event.event_specific_data.metadata["pid"].value) if started else None
    )


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_step_whose_run_process_is_killed_leaves_at_once_and_publishes_nothing_more(
    project_env, tmp_path
):
    dagster_home = Path(project_env["DAGSTER_HOME"])
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    first_day = DAY - dt.timedelta(days=RANGE_DAYS - 1)
    calls = random_calls(first_day, days=RANGE_DAYS, calls_per_day=200, seed=73)
    calls_to_parquet(calls, tmp_path / "calls.parquet")
    home = Path(project_env["AGENT_METRICS_HOME"])
    load_into_engine(home / "clickhouse", tmp_path / "calls.parquet")
    # Every query of the view takes a second: the range reads for ten seconds and more before
    # it publishes anything, so the run process dies mid-range.
    run_in_engine(
        home / "clickhouse",
        "CREATE VIEW default.slow_calls AS SELECT * FROM default.calls WHERE sleep(1) = 0",
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    slow_range = {
        **project_env,
        "AGENT_METRICS_SOURCE_TABLE": "slow_calls",
        "AGENT_METRICS_MAX_DAYS_PER_QUERY": "1",
        "TMPDIR": str(scratch),
    }
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    range_run = subprocess.Popen(
        [*MATERIALIZE, "--select", "agent_metrics", "--partition-range", f"{first_day}...{DAY}"],
        cwd=tmp_path,
        env=slow_range,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _step_process(instance), "the range's step process to start")
    finally:
        range_run.kill()  # the run process alone: its step process lives on
        range_run.wait(timeout=30)
    step_pid = _step_process(instance)
    assert step_pid is not None and step_pid != range_run.pid

    try:
        _wait_for(lambda: not _running(step_pid), "the orphaned step process to leave")
    finally:
        if _running(step_pid):
            os.kill(step_pid, signal.SIGKILL)  # no test leaves a process behind

    output = home / "output"
    assert not (output.exists() and any(output.rglob("*"))), "nothing of the range is published"
    assert not any(scratch.iterdir()), "the step's staging folder is removed"
    (killed,) = instance.get_runs()
    messages = [entry.message for entry in instance.all_logs(killed.run_id)]
    assert any("this step stops here" in message for message in messages)
    defs = build_definitions(Settings.from_env(project_env))
    tick = defs.get_sensor_def(WATCHDOG_NAME)(dg.build_sensor_context(instance=instance))
    assert "failed" in tick.skip_message and "gave back the pool slots" in tick.skip_message

    # The next run gets the pool slot at once and publishes its day.
    next_run = subprocess.run(
        [*MATERIALIZE, "--select", "agent_metrics", "--partition", str(DAY)],
        cwd=tmp_path,
        env=project_env,
        capture_output=True,
        timeout=WAIT_SEC,
    )
    assert next_run.returncode == 0, next_run.stdout.decode()[-3000:]
    assert_csv_matches((output / key_for(DAY)).read_bytes(), expected_metrics(calls)[DAY], DAY)
