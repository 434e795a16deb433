"""Assembles the Dagster definitions from the environment (see README, "Configuration")."""

from __future__ import annotations

import warnings

import dagster as dg
from dagster_aws.s3 import S3Resource

from agent_metrics_pipeline.assets import CSV_IO_MANAGER_KEY, build_agent_metrics_asset
from agent_metrics_pipeline.checks import build_freshness_checks
from agent_metrics_pipeline.config import Settings
from agent_metrics_pipeline.io_managers import DailyCsvIOManager, LocalCsvIOManager, S3CsvIOManager
from agent_metrics_pipeline.partitions import daily_partitions
from agent_metrics_pipeline.resources import ClickHouseResource, MetricsSettingsResource


def clickhouse_resource(settings: Settings) -> ClickHouseResource:
    if settings.clickhouse_host is None:
        return ClickHouseResource(embedded_path=str(settings.embedded_clickhouse_path))
    return ClickHouseResource(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        username=settings.clickhouse_user,
        # An EnvVar keeps the secret out of the UI's resource view and out of run config.
        password=dg.EnvVar("CLICKHOUSE_PASSWORD") if settings.clickhouse_password_set else "",
        database=settings.source.database,
        secure=settings.clickhouse_secure,
    )


def csv_io_manager(settings: Settings) -> DailyCsvIOManager:
    if settings.s3_bucket is None:
        return LocalCsvIOManager(
            base_dir=str(settings.local_output_dir), prefix=settings.s3_prefix, gzip=settings.gzip
        )
    return S3CsvIOManager(
        s3=S3Resource(endpoint_url=settings.s3_endpoint_url, region_name=settings.aws_region),
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        gzip=settings.gzip,
    )


# backfill_policy is beta in Dagster 1.13, but the CLI's --partition-range requires it.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


def build_definitions(settings: Settings) -> dg.Definitions:
    agent_metrics = build_agent_metrics_asset(daily_partitions(settings))
    freshness_checks, freshness_sensor = build_freshness_checks(
        agent_metrics, settings.freshness_deadline_hour, settings.timezone
    )
    return dg.Definitions(
        assets=[agent_metrics],
        asset_checks=freshness_checks,
        sensors=[freshness_sensor],
        resources={
            "clickhouse": clickhouse_resource(settings),
            "metrics_settings": MetricsSettingsResource.from_settings(settings),
            CSV_IO_MANAGER_KEY: csv_io_manager(settings),
        },
    )


defs = build_definitions(Settings.from_env())
