"""Instances with months or years of publication history, recorded as the pipeline records it.

Three years of real runs would take days; what a day leaves in the instance does not depend on
its calls. So one worker publishes a real day and observes the real window (:func:`capture`),
and each instance is then filled day by day (:func:`build`) with what those recorded: the day's
observation of ``calls``, then a run of an asset with the same key, checks, dependency and
partitions as ``agent_metrics`` that records the real day's materialization metadata and its 11
check evaluations. Each day is a run of its own, as the daily schedule makes them, on the SQLite
storage of the development instance.
"""

import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster import deserialize_value, serialize_value

from agent_metrics_pipeline.core.names import ASSET_NAME, CALLS_ASSET_NAME
from agent_metrics_pipeline.observe.readings import DATA_VERSION_TAG
from agent_metrics_pipeline_tests.helpers import DEV_INSTANCE_SETTINGS, observe
from benchmarks import pipeline

CALLS = dg.AssetKey(CALLS_ASSET_NAME)
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def yesterday() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def capture(window_days: int) -> dict:
    """Publish yesterday for real and observe the window, on an instance of its own; what they
    recorded, serialized: the day's materialization metadata, its check evaluations, and each
    window day's observation."""
    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    instance = dg.DagsterInstance.ephemeral()
    tick = observe(defs, instance, clickhouse)
    day = yesterday().isoformat()
    result = dg.materialize(
        [pipeline.agent_metrics(defs)],
        resources=defs.resources,
        instance=instance,
        partition_key=day,
        run_config=QUIET_LOGS,
    )
    evaluations = [
        event.dagster_event.event_specific_data
        for event in instance.all_logs(
            result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    ]
    (materialization,) = result.asset_materializations_for_node(ASSET_NAME)
    observations = [event for event in tick.asset_events if event.partition]
    assert len(observations) == window_days, f"observed {len(observations)} days"
    return {
        "metadata": serialize_value(materialization.metadata),
        "evaluations": [serialize_value(evaluation) for evaluation in evaluations],
        "observations": [serialize_value(observation) for observation in observations],
    }


def build(dagster_home: str, days: int, recorded: dict) -> float:
    """A new instance in ``dagster_home`` with ``days`` published days ending yesterday; the
    seconds it took.

    SQLite waits for the disk at every commit, about half the time of a run here: the instance
    is filled in memory-backed storage when the machine has it (/dev/shm), then copied.
    """
    started = time.perf_counter()
    memory = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=memory if memory.is_dir() else None) as scratch:
        filled = Path(scratch) / "home"
        fill(str(filled), days, recorded)
        shutil.copytree(filled, dagster_home)
    return time.perf_counter() - started


def fill(
    dagster_home: str, days: int, recorded: dict, settings: str = str(DEV_INSTANCE_SETTINGS)
) -> None:
    """Fill a new instance in ``dagster_home``, of the instance ``settings`` given (the
    development instance's by default), with ``days`` published days ending yesterday."""
    home = Path(dagster_home)
    home.mkdir(parents=True)
    shutil.copy(settings, home / "dagster.yaml")
    defs = pipeline.definitions()
    real = pipeline.agent_metrics(defs)
    calls = next(a for a in defs.assets or () if getattr(a, "key", None) == CALLS)
    replay = _replaying_asset(real, deserialize_value(recorded["metadata"], dict), recorded)
    observations = (
        deserialize_value(text, dg.AssetObservation) for text in recorded["observations"]
    )
    observed = {event.partition: event for event in observations}
    newest = max(observed)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for day in _days(days):
            instance.report_runless_asset_event(_observation_of(day, observed, newest))
            dg.materialize(
                [replay, calls],
                selection=[replay],
                instance=instance,
                partition_key=day,
                resources={"clickhouse": defs.resources["clickhouse"], "recorded": _nowhere},
                run_config=QUIET_LOGS,
            )


def _days(days: int) -> Iterator[str]:
    last = yesterday()
    for back in range(days - 1, -1, -1):
        yield (last - dt.timedelta(days=back)).isoformat()


def _observation_of(
    day: str, observed: dict[str, dg.AssetObservation], newest: str
) -> dg.AssetObservation:
    """The window's days as observed for real (so the window is unchanged to the next
    observation); older days as the newest was, with a fingerprint of their own."""
    if day in observed:
        return observed[day]
    model = observed[newest]
    return dg.AssetObservation(
        asset_key=model.asset_key,
        partition=day,
        tags={DATA_VERSION_TAG: f"history-{day}"},
        metadata=model.metadata,
    )


@dg.io_manager
def _nowhere() -> dg.IOManager:
    """Publishes nothing: the history is the instance's, not the bucket's."""

    class Nowhere(dg.IOManager):
        def handle_output(self, context: dg.OutputContext, obj: object) -> None:
            return None

        def load_input(self, context: dg.InputContext) -> None:
            return None

    return Nowhere()


def _replaying_asset(
    real: dg.AssetsDefinition, metadata: dict, recorded: dict
) -> dg.AssetsDefinition:
    evaluations = [
        deserialize_value(text, dg.AssetCheckEvaluation) for text in recorded["evaluations"]
    ]

    @dg.asset(
        name=ASSET_NAME,
        partitions_def=real.partitions_def,
        check_specs=list(real.check_specs),
        deps=[CALLS],
        io_manager_key="recorded",
    )
    def agent_metrics(
        context: dg.AssetExecutionContext,
    ) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
        day = context.partition_key
        context.add_asset_metadata(metadata, partition_key=day)
        yield dg.Output(None)
        (judged,) = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[day]), limit=1
        ).records
        for evaluation in evaluations:
            target = evaluation.target_materialization_data
            yield dg.AssetCheckEvaluation(
                asset_key=evaluation.asset_key,
                check_name=evaluation.check_name,
                passed=evaluation.passed,
                partition=day,
                severity=evaluation.severity,
                blocking=evaluation.blocking,
                description=evaluation.description,
                metadata=evaluation.metadata,
                target_materialization_data=type(target)(
                    run_id=judged.run_id, storage_id=judged.storage_id, timestamp=judged.timestamp
                ),
            )
        for check_key in context.selected_asset_check_keys:
            yield dg.Output(
                None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key)
            )

    return agent_metrics
