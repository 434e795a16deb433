"""What the pipeline relies on in Dagster beyond its documented API, pinned.

Dagster has no public API for these: the watchdog reads the pids the run and step processes
record and frees pool slots through the event log storage; the republish condition asks
Dagster's stale-status resolver why a day is stale; the checks name the materialization they
judge; a step leaves when its run process dies. An upgrade that changes any of them fails here,
saying what changed and which part of the pipeline to adapt, instead of the watchdog or the
automation silently doing nothing.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import dagster as dg
import pytest

import agent_metrics_pipeline
from agent_metrics_pipeline.operations.watchdog import RUN_PROCESS_EVENT_PREFIX, recorded_processes

PACKAGE_DIR = Path(agent_metrics_pipeline.__file__).parent
UPGRADE_HINT = f"(Dagster {dg.__version__}: adapt the pipeline to it, or pin the earlier Dagster)"
REPUBLISH = "observe/republish.py"
INSTANCE_SETUP = "operations/instance_setup.py"
DEMO = "demo/__main__.py"


@pytest.mark.parametrize(
    ("module", "name", "user"),
    [
        ("dagster._core.definitions.data_version", "CachingStaleStatusResolver", REPUBLISH),
        ("dagster._core.definitions.data_version", "StaleCauseCategory", REPUBLISH),
        (
            "dagster._core.definitions.asset_checks.asset_check_evaluation",
            "AssetCheckEvaluationTargetMaterializationData",
            "quality/findings.py",
        ),
        (
            "dagster._core.definitions.partitions.context",
            "PartitionLoadingContext",
            "core/partitions.py",
        ),
        ("dagster._core.workspace.context", "WorkspaceProcessContext", DEMO),
        ("dagster._core.storage.sqlite_storage", "DagsterSqliteStorage", INSTANCE_SETUP),
        ("dagster._core.storage.sqlite_storage", "SqliteStorageConfig", INSTANCE_SETUP),
        ("dagster._serdes", "ConfigurableClassData", INSTANCE_SETUP),
        ("dagster._core.workspace.load_target", "ModuleTarget", DEMO),
    ],
)
def test_the_private_names_the_pipeline_imports_exist(module, name, user):
    # The message must send a reader to the module that still uses the name.
    assert name in (PACKAGE_DIR / user).read_text(), f"{user} no longer uses {name}"
    assert hasattr(importlib.import_module(module), name), (
        f"{module}.{name} is gone; agent_metrics_pipeline/{user} imports it {UPGRADE_HINT}"
    )


def test_the_stale_status_resolver_answers_the_republish_condition_s_question():
    from dagster._core.definitions.data_version import (
        CachingStaleStatusResolver,
        StaleCauseCategory,
    )

    init = list(inspect.signature(CachingStaleStatusResolver.__init__).parameters)[1:4]
    causes = list(inspect.signature(CachingStaleStatusResolver.get_stale_causes).parameters)
    assert init == ["instance", "asset_graph", "loading_context"], (
        f"CachingStaleStatusResolver takes {init} now; observe/republish.py builds it from "
        f"(instance, asset graph, asset graph view) {UPGRADE_HINT}"
    )
    assert causes[1:3] == ["key", "partition_key"], (
        f"get_stale_causes takes {causes} now; observe/republish.py asks it per (asset key, day) "
        f"{UPGRADE_HINT}"
    )
    assert StaleCauseCategory.DATA, f"StaleCauseCategory lost DATA {UPGRADE_HINT}"


def test_the_checks_name_the_materialization_they_judge():
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    target = AssetCheckEvaluationTargetMaterializationData(run_id="r", storage_id=1, timestamp=2.0)
    assert (target.run_id, target.storage_id, target.timestamp) == ("r", 1, 2.0), (
        "AssetCheckEvaluationTargetMaterializationData changed; quality/findings.py builds it "
        f"{UPGRADE_HINT}"
    )


def test_pool_slots_of_a_run_can_be_listed_and_freed():
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("embedded_clickhouse", 1)
        storage.claim_concurrency_slot("embedded_clickhouse", "run-1", "agent_metrics")
        holding = storage.get_concurrency_run_ids()
        storage.free_concurrency_slots_for_run("run-1")
        freed = storage.get_concurrency_run_ids()
    assert holding == {"run-1"} and freed == set(), (
        "The event log storage no longer lists or frees the pool slots of a run as the "
        f"watchdog does (operations/watchdog.py, _free_slots_of_finished_runs) {UPGRADE_HINT}"
    )


@dg.op
def one_step() -> None:
    pass


@dg.job(executor_def=dg.in_process_executor)
def one_step_in_the_run_process():
    one_step()


def test_the_run_process_is_recorded_as_the_watchdog_reads_it():
    """The project's runs execute their step in the run's own process (the in-process
    executor): the watchdog finds that process by the pid of its announcement."""
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(one_step_in_the_run_process), instance=instance)
        assert result.success
        run_processes, step_processes = recorded_processes(instance, result.run_id)

    assert [pid for pid, _ in run_processes] == [os.getpid()], (
        f"The run process no longer announces its pid in an engine event starting "
        f"{RUN_PROCESS_EVENT_PREFIX!r} (operations/watchdog.py reads it) {UPGRADE_HINT}"
    )
    assert step_processes == [], f"The in-process executor started a process {UPGRADE_HINT}"
