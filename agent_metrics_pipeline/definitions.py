"""Assembles the Dagster definitions from the environment (see docs/configuration.md), when
Dagster loads them: importing this module reads nothing and changes nothing."""

from __future__ import annotations

import warnings

import dagster as dg

from agent_metrics_pipeline.clickhouse.resource import clickhouse_resource
from agent_metrics_pipeline.core.names import (
    CSV_IO_MANAGER_KEY,
    EMBEDDED_ENGINE_POOL,
    GROUP_NAME,
)
from agent_metrics_pipeline.core.partitions import daily_partitions
from agent_metrics_pipeline.core.settings import Settings, require_clickhouse_engine
from agent_metrics_pipeline.observe.republish import build_republish_sensor, republish_changed_days
from agent_metrics_pipeline.observe.source_asset import build_calls_source, build_late_calls_check
from agent_metrics_pipeline.operations.alerts import (
    build_failure_alert_sensor,
    build_late_day_alert_sensor,
)
from agent_metrics_pipeline.operations.observation import build_observation_sensor
from agent_metrics_pipeline.operations.schedule import (
    build_agent_metrics_job,
    build_daily_schedule,
    freshness_policy,
)
from agent_metrics_pipeline.operations.todays_figures import build_todays_figures_sensor
from agent_metrics_pipeline.operations.watchdog import build_dead_run_watchdog
from agent_metrics_pipeline.publish.asset import build_agent_metrics_asset
from agent_metrics_pipeline.storage.destination import csv_io_manager


def backfill_policy(settings: Settings) -> dg.BackfillPolicy:
    """One run per backfill by default: one query, and the CLI's --partition-range accepts it."""
    if settings.backfill_max_days_per_run is None:
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(settings.backfill_max_days_per_run)


def retry_policy(settings: Settings) -> dg.RetryPolicy:
    """Exponential backoff for transient faults; permanent errors opt out of it."""
    return dg.RetryPolicy(
        max_retries=settings.max_retries,
        delay=settings.retry_delay_sec,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def build_definitions(settings: Settings) -> dg.Definitions:
    partitions_def = daily_partitions(settings)
    pool = EMBEDDED_ENGINE_POOL if settings.embedded_clickhouse else None
    window_days = settings.observe_window_days
    calls = build_calls_source(partitions_def, settings.measurement, window_days, GROUP_NAME, pool)
    agent_metrics = build_agent_metrics_asset(
        partitions_def,
        settings.measurement,
        backfill_policy=backfill_policy(settings),
        retry_policy=retry_policy(settings),
        pool=pool,
        owners=settings.owners,
        freshness_policy=freshness_policy(settings.freshness_deadline_hour),
        calls=calls,
        automation_condition=republish_changed_days(
            window_days, includes_today=settings.publish_today
        ),
        chunking=settings.chunking,
    )
    job = build_agent_metrics_job(agent_metrics)
    # Code references are beta in Dagster 1.13; the UI links the asset to its source with them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references([agent_metrics])
    return dg.Definitions(
        assets=[calls, *assets],
        # Every run, however launched (the UI's, the CLI's and backfills use the implicit asset
        # job, which takes this one), does its one step in its own process: no second process
        # to start, and none left working when the run's process is killed.
        executor=dg.in_process_executor,
        asset_checks=[
            build_late_calls_check(partitions_def, settings.measurement, window_days, pool)
        ],
        jobs=[job],
        schedules=[build_daily_schedule(job, partitions_def, settings.schedule_lookback_days)],
        sensors=[
            build_observation_sensor(
                partitions_def,
                settings.measurement,
                window_days,
                settings.observe_cron,
                settings.alert_webhook_url,
                settings.ui_url,
                settings.secrets,
            ),
            build_republish_sensor(),
            build_late_day_alert_sensor(
                partitions_def,
                settings.freshness_deadline_hour,
                settings.alert_webhook_url,
                settings.ui_url,
            ),
            build_failure_alert_sensor(
                settings.alert_webhook_url, settings.ui_url, settings.secrets
            ),
            build_dead_run_watchdog(settings.alert_webhook_url, settings.ui_url, settings.secrets),
            *(
                [
                    build_todays_figures_sensor(
                        job, partitions_def, settings.measurement, settings.today_refresh_minutes
                    )
                ]
                if settings.publish_today
                else []
            ),
        ],
        resources={
            "clickhouse": clickhouse_resource(settings),
            CSV_IO_MANAGER_KEY: csv_io_manager(settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions of the environment's settings; a bad setting fails the load with one
    line naming the variable and its fix."""
    return build_definitions(require_clickhouse_engine(Settings.from_env()))
