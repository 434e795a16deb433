"""A watchdog for runs whose processes died: killed, out of memory, a closed terminal, a reboot.

Dagster gives a step's pool slot back from the run's own process when the step ends. When that
process is killed, nothing gives it back: the run stays "started" forever (a run of
``dagster asset materialize`` has no launcher to notice), and every later run that needs the
pool, the daily schedule's included, waits for it. Every minute this sensor

- marks failed each started run of ``agent_metrics`` whose run process is gone, and alerts
  for it, and
- gives back the pool slots still held by finished runs of ``agent_metrics``, once none of their
  processes is alive: a run marked failed while it still works never overlaps the next one.

It recognises a process by the pid and the time Dagster recorded for it, so it only judges runs
that are processes of this machine: with Dagster's default run launcher, on Linux. Anywhere
else (Kubernetes, say) it does nothing, and the instance's run monitoring is the tool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg

from agent_metrics_pipeline.core.processes import PROC, started_at
from agent_metrics_pipeline.operations.alerts import (
    ALERTED_TAG,
    alert_secrets,
    deliver,
    failure_alert,
)
from agent_metrics_pipeline.operations.schedule import targets_agent_metrics

WATCHDOG_NAME = "agent_metrics_dead_run_watchdog"
WATCHDOG_INTERVAL_SEC = 60
# Dagster's run process announces itself, with its pid, in an engine event so worded.
RUN_PROCESS_EVENT_PREFIX = "Executing steps"
# A process that started this long after Dagster recorded its pid is another one, reusing it.
PID_REUSE_MARGIN_SEC = 2.0
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def _alive(pid: int, recorded_at: float) -> bool:
    """Whether ``pid`` still runs the process Dagster recorded at ``recorded_at`` (epoch s)."""
    try:
        started = started_at(pid)
    except PermissionError:
        return True  # hidden by /proc's hidepid: never judged dead
    return started is not None and started <= recorded_at + PID_REUSE_MARGIN_SEC


def recorded_processes(
    instance: dg.DagsterInstance, run_id: str
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The (pid, recorded at) of the run's own processes and of its step processes."""
    runs, steps = [], []
    for entry in instance.all_logs(
        run_id,
        of_type={dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_WORKER_STARTED},
    ):
        event = entry.dagster_event
        metadata = getattr(event.event_specific_data, "metadata", None) if event else None
        if not metadata or "pid" not in metadata:
            continue
        process = (int(metadata["pid"].value), entry.timestamp)
        if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTED:
            steps.append(process)
        elif entry.message.startswith(RUN_PROCESS_EVENT_PREFIX):
            runs.append(process)
    return runs, steps


def _fail_dead_runs(instance: dg.DagsterInstance) -> Iterator[tuple[dg.DagsterRun, str]]:
    started = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    for record in started:
        run = record.dagster_run
        if not targets_agent_metrics(instance, run):
            continue
        run_processes, _ = recorded_processes(instance, run.run_id)
        if not run_processes:
            continue
        pid, recorded_at = run_processes[-1]  # a resumed run has had several
        if _alive(pid, recorded_at):
            continue
        message = (
            f"The run's process (pid {pid}) is gone: killed, or out of memory. Marked failed by "
            f"{WATCHDOG_NAME}, which gives its pool slot back."
        )
        instance.add_run_tags(run.run_id, {ALERTED_TAG: "true"})
        instance.report_run_failed(run, message)
        yield run, message


def _free_slots_of_finished_runs(instance: dg.DagsterInstance) -> Iterator[str]:
    storage = instance.event_log_storage
    holding = storage.get_concurrency_run_ids()
    if not holding:
        return
    finished = instance.get_run_records(dg.RunsFilter(run_ids=list(holding), statuses=FINISHED))
    for record in finished:
        run = record.dagster_run
        if not targets_agent_metrics(instance, run):
            continue
        run_processes, step_processes = recorded_processes(instance, run.run_id)
        if any(_alive(pid, at) for pid, at in [*run_processes, *step_processes]):
            continue
        storage.free_concurrency_slots_for_run(run.run_id)
        yield f"gave back the pool slots of finished run {run.run_id}"


def build_dead_run_watchdog(
    webhook_url: str | None, ui_url: str, secrets: Sequence[str] = ()
) -> dg.SensorDefinition:
    """The watchdog; it alerts for the runs it fails itself, like the failure alert sensor
    would (which may not see them: on a new instance, they can precede its first tick)."""
    secrets = alert_secrets(webhook_url, secrets)

    @dg.sensor(
        name=WATCHDOG_NAME,
        minimum_interval_seconds=WATCHDOG_INTERVAL_SEC,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks failed the runs of agent_metrics whose process died, and gives back the pool "
            "slots they held, so a killed run never blocks the next one."
        ),
    )
    def dead_run_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        instance = context.instance
        if not isinstance(instance.run_launcher, dg.DefaultRunLauncher) or not PROC.is_dir():
            return dg.SkipReason("Runs are not processes of this machine: nothing to watch.")
        actions = []
        for run, message in _fail_dead_runs(instance):
            deliver(context, failure_alert(run, [], message, ui_url, secrets), webhook_url)
            actions.append(f"marked run {run.run_id} failed: its process is gone")
        actions += _free_slots_of_finished_runs(instance)
        for action in actions:
            context.log.warning(action)
        return dg.SkipReason("; ".join(actions) or "No dead run.")

    return dead_run_watchdog
