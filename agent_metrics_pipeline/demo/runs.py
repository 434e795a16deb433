"""The demo's days and runs: the runs launched through the code location as the UI's
Materialize button launches them, so that each can be re-executed from the UI."""

from __future__ import annotations

import datetime as dt
import time
from typing import NamedTuple

import dagster as dg

# The UI launches runs through these; the demo does the same, so its runs can be re-executed.
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.workspace.context import WorkspaceProcessContext

from agent_metrics_pipeline.core.names import (
    JOB_NAME,
    OBSERVE_SENSOR_NAME,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
)
from agent_metrics_pipeline.core.partitions import format_days

# The code location as `make dev` (pyproject's [tool.dg]) and workspace.yaml name it.
DEFINITIONS_MODULE = "agent_metrics_pipeline.definitions"
CODE_LOCATION_NAME = "agent_metrics_pipeline"
RUN_TIMEOUT_SEC = 600
SEED_DAYS = 35
RANGE_DAYS = 7


def demo_days(today: dt.date) -> tuple[dt.date, dt.date, list[dt.date], dt.date]:
    """The first seeded day, the broken day, the range's days and yesterday."""
    yesterday = today - dt.timedelta(days=1)
    range_days = [yesterday - dt.timedelta(days=offset) for offset in range(RANGE_DAYS, 0, -1)]
    broken_day = range_days[0] - dt.timedelta(days=1)
    return today - dt.timedelta(days=SEED_DAYS), broken_day, range_days, yesterday


class DemoRun(NamedTuple):
    """One run the demo launches: what it does, and the tags that select its days."""

    title: str
    job_name: str
    tags: dict[str, str]
    fails_on_purpose: bool = False


def demo_runs(today: dt.date) -> list[DemoRun]:
    """The broken day first, yesterday last: the latest materialization is a healthy day."""
    _, broken_day, range_days, yesterday = demo_days(today)
    first, last = range_days[0].isoformat(), range_days[-1].isoformat()
    return [
        DemoRun(
            f"{broken_day} (broken rows on purpose)",
            JOB_NAME,
            {PARTITION_TAG: broken_day.isoformat()},
            fails_on_purpose=True,
        ),
        DemoRun(
            f"{format_days([first, last])} as one run",
            JOB_NAME,
            {RANGE_START_TAG: first, RANGE_END_TAG: last},
        ),
        DemoRun(f"{yesterday}", JOB_NAME, {PARTITION_TAG: yesterday.isoformat()}),
    ]


LAUNCH_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}
"""


def launch(workspace: WorkspaceProcessContext, run: DemoRun) -> str:
    """Launch ``run`` as the UI's Materialize button does: through the code location, so the
    run can be re-executed from the UI."""
    from dagster_graphql.cli import execute_query

    params = {
        "selector": {
            "repositoryLocationName": CODE_LOCATION_NAME,
            "repositoryName": SINGLETON_REPOSITORY_NAME,
            "pipelineName": run.job_name,
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in run.tags.items()]},
    }
    answer = execute_query(workspace, LAUNCH_MUTATION, {"executionParams": params})
    launched = (answer.get("data") or {}).get("launchPipelineExecution") or {}
    if launched.get("__typename") != "LaunchRunSuccess":
        raise RuntimeError(f"Could not launch {run.title}: {launched or answer.get('errors')}")
    return launched["run"]["runId"]


def observe(workspace: WorkspaceProcessContext, instance: dg.DagsterInstance) -> int:
    """One tick of the observation sensor, evaluated in the code location as the daemon
    evaluates it, its events recorded in the instance; the number of days it recorded."""
    location = workspace.create_request_context().get_code_location(CODE_LOCATION_NAME)
    repository = location.get_repository(SINGLETON_REPOSITORY_NAME)
    tick = location.get_sensor_execution_data(
        instance, repository.handle, OBSERVE_SENSOR_NAME, None, None, None, None, None
    )
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    return sum(isinstance(event, dg.AssetObservation) for event in tick.asset_events)


def wait_for(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        time.sleep(0.5)
    raise TimeoutError(f"Run {run_id} did not finish within {RUN_TIMEOUT_SEC} s")


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    return sorted(
        {
            record.event_log_entry.dagster_event.asset_check_evaluation_data.check_name
            for record in records
            if not record.event_log_entry.dagster_event.asset_check_evaluation_data.passed
        }
    )
