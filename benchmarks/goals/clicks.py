"""Goal 12: a click that publishes in seconds. A one-day run (1 M calls) launched as the UI's
Materialize launches it, through ``dagster dev`` with the development instance settings, within
1.5× the same run from the CLI; and that CLI run within 1.2× a CLI run of an asset that does
nothing but record as many check results on the same partitions.

The UI's run: the GraphQL mutation the UI sends for one partition (``launchPipelineExecution``
of the asset job with the partition's tag), timed from the request to the run's end as the
instance records it: the run queue, the run's process, its step. A CLI run: ``dagster asset
materialize --partition DAY``, a fresh process with its own instance, timed whole (its exit
included, which the UI's run, timed to its recorded end, does not count). Runs alternate
between the three, after one warm-up each.
"""

from __future__ import annotations

import shutil
import statistics
import time

from agent_metrics_pipeline.demo.runs import LAUNCH_MUTATION
from agent_metrics_pipeline_tests.helpers import DEV_INSTANCE_SETTINGS, graphql
from benchmarks.context import Context
from benchmarks.processes import REPO_ROOT, materialize_with_cli, run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, table_for
from benchmarks.services import dagster_dev
from benchmarks.trivial_definitions import TRIVIAL_ASSET

GOAL = "12"
UI_TARGET = 1.5
CLI_TARGET = 1.2
AGENTS = 1000
RUN_TIMEOUT_SEC = 600

REPOSITORIES = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }
"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status startTime endTime } }
}
"""
ENDED = ("SUCCESS", "FAILURE", "CANCELED")


def measure(context: Context) -> Section:
    calls_per_day, rounds = (10_000, 1) if context.quick else (1_000_000, 5)
    source = table_for(calls_per_day, 1, AGENTS)
    env = context.embedded_env(source, PYTHONPATH=str(REPO_ROOT))
    run_worker("benchmarks.goals.clicks:seed", {"calls_per_day": calls_per_day}, env)
    folder = context.subfolder("clicks")
    home = folder / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(DEV_INSTANCE_SETTINGS, home / "dagster.yaml")
    cli_env = {**env, "DAGSTER_HOME": str(home)}
    times: dict[str, list[float]] = {"ui": [], "cli": [], "trivial": []}
    one_day = ["--partition", str(FIRST_DAY)]
    with dagster_dev(cli_env, folder) as url:
        selector = _asset_job(url)
        for round_number in range(rounds + 1):
            measured = {
                "ui": _ui_run(url, selector),
                "cli": materialize_with_cli(cli_env, folder, one_day, RUN_TIMEOUT_SEC),
                "trivial": materialize_with_cli(
                    cli_env,
                    folder,
                    one_day,
                    RUN_TIMEOUT_SEC,
                    module="benchmarks.trivial_definitions",
                    asset=TRIVIAL_ASSET,
                ),
            }
            if round_number:  # round 0 warms up
                for name, seconds in measured.items():
                    times[name].append(seconds)
    ui_ratio = statistics.median(times["ui"]) / statistics.median(times["cli"])
    cli_ratio = statistics.median(times["cli"]) / statistics.median(times["trivial"])
    day = f"one day, {calls_per_day / 1e6:g} M calls"
    return Section(
        rows=[
            Row(
                GOAL, "CLI run of a trivial asset recording the 12 check results", times["trivial"]
            ),
            Row(
                GOAL,
                f"CLI dagster asset materialize, {day}",
                times["cli"],
                ratio=cli_ratio,
                target=f"≤ {CLI_TARGET:g}× trivial",
                met=cli_ratio <= CLI_TARGET,
            ),
            Row(
                GOAL,
                f"UI's Materialize through dagster dev, {day}, to the run's end",
                times["ui"],
                ratio=ui_ratio,
                target=f"≤ {UI_TARGET:g}× CLI",
                met=ui_ratio <= UI_TARGET,
            ),
        ],
        notes=[
            f"Goal {GOAL}: embedded engine, local CSV output, the development instance settings "
            "(queue looked at every second); the three runs alternate after one warm-up each."
        ],
    )


def seed(calls_per_day: int) -> None:
    from benchmarks import pipeline
    from benchmarks.seeding import seed_calls

    seed_calls(pipeline.clickhouse_of(pipeline.definitions()), calls_per_day, 1, AGENTS)


def _asset_job(url: str) -> dict:
    (repository,) = graphql(url, REPOSITORIES)["repositoriesOrError"]["nodes"]
    return {
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
        "jobName": "__ASSET_JOB",
        "assetSelection": [{"path": ["agent_metrics"]}],
    }


def _ui_run(url: str, selector: dict) -> float:
    params = {
        "selector": selector,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": str(FIRST_DAY)}]},
    }
    started = time.time()
    launched = graphql(url, LAUNCH_MUTATION, {"executionParams": params})["launchPipelineExecution"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"The run was not launched: {launched}")
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_SEC
    while True:
        run = graphql(url, RUN, {"runId": run_id})["runOrError"]
        if run["status"] in ENDED:
            if run["status"] != "SUCCESS":
                raise RuntimeError(f"The UI's run {run_id} ended {run['status']}")
            return run["endTime"] - started
        if time.monotonic() > deadline:
            raise RuntimeError(f"The UI's run {run_id} is still {run['status']}")
        time.sleep(0.2)
