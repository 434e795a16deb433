"""The ``agent_metrics`` asset: per-agent call metrics for each day, from ClickHouse."""

import dagster as dg
import polars as pl

from agent_metrics_pipeline.errors import PermanentError
from agent_metrics_pipeline.metrics import shape_metrics, to_markdown
from agent_metrics_pipeline.resources import ClickHouseResource, MetricsSettingsResource
from agent_metrics_pipeline.sql import build_metrics_query

ASSET_NAME = "agent_metrics"
CSV_IO_MANAGER_KEY = "csv_io_manager"
PREVIEW_ROWS = 10


def build_agent_metrics_asset(
    partitions_def: dg.DailyPartitionsDefinition,
    backfill_policy: dg.BackfillPolicy | None = None,
) -> dg.AssetsDefinition:
    """The asset over ``partitions_def``; a range of days runs as one query by default."""

    @dg.asset(
        name=ASSET_NAME,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy or dg.BackfillPolicy.single_run(),
        io_manager_key=CSV_IO_MANAGER_KEY,
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
    ) -> dg.Output[pl.DataFrame]:
        window = context.partition_time_window
        sql, parameters = build_metrics_query(
            source=metrics_settings.source,
            window_start=window.start,
            window_end=window.end,
            timezone=partitions_def.timezone,
            statuses=metrics_settings.statuses,
        )
        context.log.info(
            f"Aggregating {len(context.partition_keys)} day(s) "
            f"[{window.start.isoformat()}, {window.end.isoformat()}) "
            f"on the {clickhouse.description}"
        )
        try:
            raw = clickhouse.query_polars(sql, parameters)
        except PermanentError as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None
        metrics, quality = shape_metrics(raw)
        return dg.Output(
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
