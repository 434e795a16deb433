"""Republishing the days whose source changed: the condition that finds a published day's
fingerprint changed since it was published, and the sensor that evaluates it."""

import datetime as dt
import warnings

import dagster as dg

# The resolver behind the UI's stale badge; Dagster has no public equivalent in 1.13 (pinned).
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory

from agent_metrics_pipeline.core.names import ASSET_NAME

REPUBLISH_SENSOR_NAME = "agent_metrics_republish_changed_days"
REPUBLISH_INTERVAL_SEC = 300


class SourceChangedSinceMaterialization(dg.AutomationCondition):
    """The day's ``calls`` fingerprint differs from the one it was last materialized from."""

    @property
    def name(self) -> str:
        return "source_changed_since_materialization"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        view = context.asset_graph_view
        resolver = CachingStaleStatusResolver(view.instance, context.asset_graph, view)
        changed = {
            day
            for day in context.candidate_subset.expensively_compute_partition_keys()
            if any(
                cause.category == StaleCauseCategory.DATA
                for cause in resolver.get_stale_causes(context.key, day)
            )
        }
        return dg.AutomationResult(
            context,
            true_subset=context.candidate_subset.compute_intersection_with_partition_keys(changed),
        )


def republish_changed_days(
    window_days: int, includes_today: bool = False
) -> dg.AutomationCondition:
    """Days of the window whose source changed, not already running: a published day whose
    fingerprint changed since it was published (one whose run failed waits for its source to
    change again rather than failing every tick), and a day never published whose last run failed
    (a day held back as partial) once its calls change.

    The window is the newest ``window_days`` days that have ended, as the observation's; when
    today is a partition (``includes_today``) it counts from today's end, so it holds today as
    well, which the observation never reads: its source never changes here (its refreshes have
    their sensor).
    """
    published_and_changed = (
        ~dg.AutomationCondition.missing()
        & (~dg.AutomationCondition.execution_failed() | dg.AutomationCondition.any_deps_updated())
        & SourceChangedSinceMaterialization()
    )
    held_back_and_changed = (
        dg.AutomationCondition.missing()
        & dg.AutomationCondition.execution_failed()
        & dg.AutomationCondition.any_deps_updated()
    )
    return (
        dg.AutomationCondition.in_latest_time_window(
            dt.timedelta(days=window_days + int(includes_today))
        )
        & ~dg.AutomationCondition.in_progress()
        & (published_and_changed | held_back_and_changed)
    ).with_label("republish_changed_days")


def build_republish_sensor() -> dg.SensorDefinition:
    """The sensor evaluating the condition."""
    # The condition is code, so it must run in the code server (Dagster cannot serialize it);
    # that option is beta in Dagster 1.13.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.AutomationConditionSensorDefinition(
            REPUBLISH_SENSOR_NAME,
            target=dg.AssetSelection.assets(ASSET_NAME),
            use_user_code_server=True,
            # Sources change at the pace of the hourly observation, not of the daemon's loop.
            minimum_interval_seconds=REPUBLISH_INTERVAL_SEC,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Requests the published days whose source changed (stale days).",
        )
