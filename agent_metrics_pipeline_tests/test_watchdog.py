"""A run killed mid-step never blocks the next one: real CLI runs on one Dagster instance with
the project's pool of one, the first SIGKILLed while its step holds the pool (waiting on S3, or
publishing its days), and what it leaves is swept by the next."""

from __future__ import annotations

import datetime as dt
import json
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

from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.operations.alerts import FAILURE_SENSOR_NAME
from agent_metrics_pipeline.operations.watchdog import WATCHDOG_NAME
from agent_metrics_pipeline.storage.io_manager import PUBLISHING_THREADS
from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    calls_to_parquet,
    key_for,
    load_into_engine,
    random_calls,
    stop_process_group,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

pytestmark = pytest.mark.e2e

DAY = dt.date(2026, 11, 20)
MATERIALIZE = ["dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"]
WAIT_SEC = 120
# Fast local writes, many small days: a day lands every few tens of milliseconds.
KILLED_RANGE_DAYS = 30
KILLED_RANGE_AGENTS = 20_000
# The watchdog's minute, the daemon's loop and the run itself.
NEXT_RUN_SEC = 150


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


def _published(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in output.glob("agent_metrics/*/*.csv")}


def _seed(engine_dir: Path, first_day: dt.date, days: int, calls_per_day: int, agents: int) -> None:
    """Deterministic calls generated inside the engine, from a process of its own."""
    seed = (
        "import datetime as dt; "
        "from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource; "
        "from agent_metrics_pipeline.core.measurement import SourceTable; "
        "from agent_metrics_pipeline.demo.sample_calls import seed_sample_calls; "
        f"seed_sample_calls(ClickHouseResource(embedded_path={str(engine_dir)!r}), SourceTable(), "
        f"dt.date.fromisoformat({first_day.isoformat()!r}), {days}, {calls_per_day}, {agents})"
    )
    subprocess.run([sys.executable, "-c", seed], check=True, capture_output=True, timeout=300)


def test_a_run_killed_while_it_publishes_stops_there_and_leaves_nothing_behind(
    project_env, tmp_path
):
    """Many days of many agents to a local folder, the run's process SIGKILLed as soon as the
    first day lands, the daemon serving the sensors: the run does nothing more, and the range
    run again publishes every day, sweeping what the killed run left."""
    dagster_home = Path(project_env["DAGSTER_HOME"])
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    home = Path(project_env["AGENT_METRICS_HOME"])
    first_day = DAY - dt.timedelta(days=KILLED_RANGE_DAYS - 1)
    _seed(
        home / "clickhouse",
        first_day,
        KILLED_RANGE_DAYS,
        3 * KILLED_RANGE_AGENTS,
        KILLED_RANGE_AGENTS,
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **project_env,
        "TMPDIR": str(scratch),
        # No observation run competes for the pool during the test.
        "AGENT_METRICS_OBSERVE_CRON": "0 0 1 1 *",
    }
    output = home / "output"
    the_range = [
        *MATERIALIZE,
        "--select",
        "agent_metrics",
        "--partition-range",
        f"{first_day}...{DAY}",
    ]
    daemon = subprocess.Popen(
        ["dagster-daemon", "run", "-m", "agent_metrics_pipeline.definitions"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = subprocess.Popen(
            the_range, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            # The test must see the first day land before the run goes on to the next ones.
            os.setpriority(os.PRIO_PROCESS, run.pid, 19)
            deadline = time.monotonic() + WAIT_SEC
            while not (at_kill := _published(output)) and time.monotonic() < deadline:
                time.sleep(0.001)  # the niced run needs a core more than this loop does
        finally:
            run.kill()  # SIGKILL, the run's process: the step runs in it
            run.wait(timeout=30)
        assert at_kill, "the range published nothing in time"
        after_kill = _published(output)
        assert len(after_kill) <= len(at_kill) + PUBLISHING_THREADS, (
            "at most the days being written land"
        )
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
        (killed,) = instance.get_runs()
        assert not instance.all_logs(
            killed.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED
        ), "no process of the run but its own, so nothing of it outlives the kill"

        # Run again as an operator would; its step waits for the pool slot the killed run held
        # until the daemon's watchdog gives it back.
        started = time.monotonic()
        again = subprocess.run(
            the_range, cwd=tmp_path, env=env, capture_output=True, timeout=2 * NEXT_RUN_SEC
        )
        waited = time.monotonic() - started
    finally:
        # The daemon and its code server, all of them gone: the server removes its temporary
        # files as it stops, and the scratch folder is looked at below.
        stop_process_group(daemon)
    assert again.returncode == 0, again.stdout.decode()[-3000:] + again.stderr.decode()[-3000:]
    assert waited <= NEXT_RUN_SEC, f"the next run took {waited:.0f} s"

    republished = _published(output)
    assert len(republished) == KILLED_RANGE_DAYS
    assert {name: republished[name] for name in after_kill} == after_kill, (
        "what the killed run published are whole days, as the range writes them again"
    )
    assert not [p for p in output.rglob("*") if p.name.startswith(".tmp-")], "no half-written file"
    assert not any(scratch.iterdir()), "no staging folder of the killed run"
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    killed = instance.get_run_by_id(killed.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert WATCHDOG_NAME in failure[-1].message
