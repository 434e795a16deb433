"""The ``agent_metrics`` asset: per-agent call metrics for each day, from ClickHouse."""

from collections.abc import Iterator

import dagster as dg
import polars as pl

from agent_metrics_pipeline.checks import (
    check_specs,
    describe_failures,
    evaluate_checks,
    failed_blocking_checks,
)
from agent_metrics_pipeline.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.metrics import shape_metrics, to_markdown
from agent_metrics_pipeline.resources import ClickHouseResource, MetricsSettingsResource
from agent_metrics_pipeline.sql import build_metrics_query

ASSET_NAME = "agent_metrics"
CSV_IO_MANAGER_KEY = "csv_io_manager"
PREVIEW_ROWS = 10


def build_agent_metrics_asset(
    partitions_def: dg.DailyPartitionsDefinition,
    backfill_policy: dg.BackfillPolicy | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
) -> dg.AssetsDefinition:
    """The asset over ``partitions_def``; a range of days runs as one query by default.

    ``pool`` serialises the steps that share a resource only one process may hold (the
    embedded engine's folder); ``retry_policy`` applies to transient faults only.
    """

    @dg.asset(
        name=ASSET_NAME,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy or dg.BackfillPolicy.single_run(),
        io_manager_key=CSV_IO_MANAGER_KEY,
        check_specs=check_specs(ASSET_NAME),
        retry_policy=retry_policy,
        pool=pool,
        kinds={"clickhouse", "polars", "s3"},
        description=(
            "Per agent and day: average and 90th-percentile call length (seconds, 2 decimals, "
            "p90 by linear interpolation) and the number of calls counted."
        ),
    )
    def agent_metrics(
        context: dg.AssetExecutionContext,
        clickhouse: ClickHouseResource,
        metrics_settings: MetricsSettingsResource,
    ) -> Iterator[dg.AssetCheckResult | dg.Output[pl.DataFrame]]:
        window = context.partition_time_window
        sql, parameters = build_metrics_query(
            source=metrics_settings.source,
            window_start=window.start,
            window_end=window.end,
            timezone=partitions_def.timezone,
            statuses=metrics_settings.statuses,
            max_call_length_sec=metrics_settings.max_call_length_sec,
        )
        context.log.info(
            f"Aggregating {len(context.partition_keys)} day(s) "
            f"[{window.start.isoformat()}, {window.end.isoformat()}) "
            f"on the {clickhouse.description}"
        )
        with no_retry_for_permanent_errors():
            raw = clickhouse.query_polars(sql, parameters)
        metrics, quality = shape_metrics(raw)

        results = evaluate_checks(
            metrics, quality, context.partition_keys, metrics_settings.thresholds
        )
        yield from results
        # A failed blocking check must stop publication here: once the Output is yielded, Dagster
        # hands it to the IO manager whatever the checks said.
        failures = failed_blocking_checks(results)
        if failures:
            raise dg.Failure(
                description=(
                    f"Nothing published for {context.partition_keys[0]}..."
                    f"{context.partition_keys[-1]}: failed checks {describe_failures(failures)}. "
                    "The check results hold counts and sample ids. Fix the source rows, or the "
                    "knob the README lists for the check (AGENT_METRICS_INVALID_ROWS=exclude "
                    "leaves unmeasurable calls out)."
                ),
                allow_retries=False,
            )
        yield dg.Output(
            metrics,
            metadata={
                "days": len(context.partition_keys),
                "rows": metrics.height,
                "agents": metrics.get_column("agent_id").n_unique(),
                "calls_counted": int(metrics.get_column("total_calls").sum()),
                "unmeasurable_calls": quality.unmeasurable_calls,
                "preview": dg.MetadataValue.md(to_markdown(metrics.head(PREVIEW_ROWS))),
            },
        )

    return agent_metrics
