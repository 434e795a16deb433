"""The ``agent_metrics`` asset: per-agent call metrics for each day, from ClickHouse."""

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence

import dagster as dg

from agent_metrics_pipeline.checks import (
    Evidence,
    Verdict,
    check_specs,
    describe_days,
    describe_failures,
    evaluate_checks,
)
from agent_metrics_pipeline.chunking import MAX_AGENT_SHARDS, Chunk, Chunking, next_chunk
from agent_metrics_pipeline.clickhouse import (
    ClickHouseMemoryLimitError,
    ClickHouseResource,
    ClickHouseSession,
)
from agent_metrics_pipeline.config import Measurement
from agent_metrics_pipeline.deferred import polars as pl
from agent_metrics_pipeline.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.metrics import (
    COLUMN_DESCRIPTIONS,
    DUPLICATE_COUNT,
    METRIC_TYPES,
    UNCOUNTED_VARIANT_CALLS,
    UNMEASURABLE_COUNTS,
    SourceQuality,
    StagedDays,
    calls_per_status,
    counted_status_calls,
    escape_formula_agent_ids,
    metrics_for_day,
    shape_metrics,
    to_markdown,
)
from agent_metrics_pipeline.orphaned_steps import scratch_folder, stop_with_run_process
from agent_metrics_pipeline.source_relation import SourceRelation, describe_source
from agent_metrics_pipeline.sql import (
    build_calls_per_day_query,
    build_duplicate_samples_query,
    build_metrics_query,
    build_samples_query,
    build_status_variants_query,
)

ASSET_NAME = "agent_metrics"
GROUP_NAME = "call_center"
CSV_IO_MANAGER_KEY = "csv_io_manager"
PREVIEW_ROWS = 10
# Days counted per query when sizing a run: a year's range takes four small queries.
DAYS_PER_COUNT_QUERY = 100


def published_schema() -> dg.TableSchema:
    """The columns of the published CSV, for the catalog."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=COLUMN_DESCRIPTIONS[name])
            for name, kind in METRIC_TYPES.items()
        ]
    )


def day_metadata(
    metrics: "pl.DataFrame",
    quality: SourceQuality,
    statuses: "pl.DataFrame",
    day: dt.date,
    days: Sequence[str],
    agent_shards: int,
    source_rows: int,
) -> dict[str, object]:
    """What one day's materialization shows, whether it ran alone or in a range."""
    rows = metrics_for_day(metrics, day)
    unmeasurable = quality.per_day.filter(pl.col("date") == day).select(UNMEASURABLE_COUNTS)
    return {
        "dagster/row_count": rows.height,
        "calls_counted": int(rows.get_column("total_calls").sum()),
        "unmeasurable_calls": int(unmeasurable.sum_horizontal().sum()),
        "statuses_seen": calls_per_status(statuses, day),
        "source_rows": source_rows,
        "run_days": describe_days(days),
        "agent_shards": agent_shards,
        "preview": dg.MetadataValue.md(to_markdown(rows.head(PREVIEW_ROWS))),
    }


def build_agent_metrics_asset(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    backfill_policy: dg.BackfillPolicy | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    owners: Sequence[str] = (),
    freshness_policy: dg.FreshnessPolicy | None = None,
    source: dg.SourceAsset | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    chunking: Chunking | None = None,
) -> dg.AssetsDefinition:
    """The asset over ``partitions_def``, measuring what ``measurement`` says.

    A range of days runs as one run, in queries of consecutive days and agent shards within the
    limits of ``chunking``; each chunk is checked and staged on local disk before the next is
    read, and nothing is published unless every day passed.
    ``pool`` serialises the steps that share a resource only one process may hold (the
    embedded engine's folder); ``retry_policy`` applies
    to transient faults only. With ``source``, the observed calls table, Dagster knows which
    source fingerprint each day was computed from; ``automation_condition`` acts on that.
    """
    chunking = chunking or Chunking()

    @dg.asset(
        name=ASSET_NAME,
        partitions_def=partitions_def,
        backfill_policy=backfill_policy or dg.BackfillPolicy.single_run(),
        io_manager_key=CSV_IO_MANAGER_KEY,
        check_specs=check_specs(ASSET_NAME, partitions_def, measurement),
        retry_policy=retry_policy,
        pool=pool,
        kinds={"clickhouse", "polars", "s3"},
        group_name=GROUP_NAME,
        owners=list(owners),
        freshness_policy=freshness_policy,
        deps=[source] if source is not None else None,
        automation_condition=automation_condition,
        metadata={
            "dagster/column_schema": published_schema(),
            **measurement.describe(),
            **chunking.describe(),
        },
        description=(
            "Per agent and day: average and 90th-percentile call length (seconds, 2 decimals, "
            "p90 by linear interpolation) and the number of calls counted, published as one "
            "CSV per day once the checks pass."
        ),
    )
    def agent_metrics(
        context: dg.AssetExecutionContext, clickhouse: ClickHouseResource
    ) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
        stop_with_run_process(context.log)
        days = context.partition_keys
        if not days:
            key_range = context.partition_key_range
            raise dg.Failure(
                description=(
                    f"The run selects no day: the range {key_range.start}...{key_range.end} is "
                    "reversed. Give the first day first, as FIRST...LAST."
                ),
                allow_retries=False,
            )
        window = context.partition_time_window
        context.log.info(
            f"Aggregating {len(days)} day(s) [{window.start.isoformat()}, "
            f"{window.end.isoformat()}) on the {clickhouse.description}"
        )
        verdicts: list[Verdict] = []
        metadata_by_day: dict[str, dict[str, object]] = {}
        with (
            no_retry_for_permanent_errors(),
            scratch_folder(prefix="agent_metrics-") as staging_folder,
        ):
            staged = StagedDays(staging_folder)
            with clickhouse.session() as source:
                relation = describe_source(source, measurement.source)
                final = relation.reads_final(measurement.read_final)
                if final:
                    context.log.info(
                        f"{measurement.source.database}.{measurement.source.table} is a "
                        f"{relation.engine or 'relation'}: reading each row's latest version "
                        "(FINAL)"
                    )
                calls_per_day = calls_held_per_day(
                    source, measurement, partitions_def, days, relation
                )
                rows_per_call: float | None = None
                remaining = list(days)
                while remaining:
                    chunk = next_chunk(remaining, calls_per_day, chunking, rows_per_call)
                    remaining = remaining[len(chunk.days) :]
                    metrics, quality, statuses, shards, rows = _read_chunk(
                        context, source, measurement, partitions_def, chunk, final
                    )
                    calls = sum(calls_per_day.get(key, 0) for key in chunk.days)
                    if calls:
                        rows_per_call = max(rows_per_call or 0.0, rows / calls)
                    chunk_verdicts = evaluate_checks(
                        Evidence(metrics, quality, statuses, chunk.days, measurement)
                    )
                    verdicts += chunk_verdicts
                    for key in chunk.days:
                        metadata_by_day[key] = {
                            **day_metadata(
                                metrics,
                                quality,
                                statuses,
                                dt.date.fromisoformat(key),
                                days,
                                shards,
                                calls_per_day.get(key, 0),
                            ),
                            **relation.describe(measurement.read_final),
                        }
                    # A chunk that fails a blocking check is never published: its rows (some
                    # maybe dated outside it) need no staging, and the failure below names them.
                    if not any(verdict.blocks_publication for verdict in chunk_verdicts):
                        staged.stage(metrics, [dt.date.fromisoformat(key) for key in chunk.days])

            # A failed blocking check must stop publication here: once the Output is yielded,
            # Dagster hands it to the IO manager whatever the checks said.
            blocking = [verdict for verdict in verdicts if verdict.blocks_publication]
            if blocking:
                yield from _day_evaluations(context, verdicts, published=False)
                raise dg.Failure(
                    description=(
                        f"Nothing published for {describe_days(days)}: failed checks "
                        f"{describe_failures(blocking)}. Each day's check results hold counts "
                        "and sample ids. Fix the source rows, or the check's knob "
                        '(docs/how-it-works.md, "Data-quality checks"; '
                        "AGENT_METRICS_INVALID_ROWS=exclude leaves unmeasurable calls out)."
                    ),
                    allow_retries=False,
                )
            for key, metadata in metadata_by_day.items():
                context.add_asset_metadata(metadata, partition_key=key)
            yield dg.Output(staged)
        # After the Output, each day's materialization is recorded: the evaluations judge it.
        yield from _day_evaluations(context, verdicts, published=True)

    return agent_metrics


def calls_held_per_day(
    clickhouse: ClickHouseSession,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[str],
    relation: SourceRelation,
) -> dict[str, int]:
    """The calls the source holds on each day, any status, as stored: they size the chunks."""
    by_primary_key = relation.sorted_by(measurement.source.column("started_at"))
    calls: dict[str, int] = {}
    for first in range(0, len(days), DAYS_PER_COUNT_QUERY):
        bounds = []
        for key in days[first : first + DAYS_PER_COUNT_QUERY]:
            window = partitions_def.time_window_for_partition_key(key)
            bounds.append((dt.date.fromisoformat(key), window.start, window.end))
        counted = clickhouse.query_polars(
            *build_calls_per_day_query(measurement, bounds, partitions_def.timezone, by_primary_key)
        )
        calls |= {str(day): int(count) for day, count in counted.iter_rows()}
    return calls


def _read_chunk(
    context: dg.AssetExecutionContext,
    clickhouse: ClickHouseSession,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    chunk: Chunk,
    final: bool,
) -> "tuple[pl.DataFrame, SourceQuality, pl.DataFrame, int, int]":
    """The metrics, source quality and calls per status (counted statuses and those spelled
    like one) of the chunk's days, the agent shards it took and the rows the queries returned.

    A server that stops a query at the user's per-query memory limit would stop it again: the
    chunk is read again in twice as many shards, until the limit lets each through.
    """
    window = (
        measurement,
        partitions_def.time_window_for_partition_key(chunk.days[0]).start,
        partitions_def.time_window_for_partition_key(chunk.days[-1]).end,
        partitions_def.timezone,
    )
    while True:
        try:
            raw = pl.concat(
                [
                    clickhouse.query_polars(*build_metrics_query(*window, shard=shard, final=final))
                    for shard in chunk.agent_shards()
                ],
                how="vertical_relaxed",
            )
            break
        except ClickHouseMemoryLimitError as error:
            if chunk.shards >= MAX_AGENT_SHARDS:
                raise
            finer = dataclasses.replace(chunk, shards=min(MAX_AGENT_SHARDS, chunk.shards * 2))
            context.log.warning(
                f"{describe_days(chunk.days)} in {chunk.shards} agent shard(s) exceeded the "
                f"server's per-query memory limit; reading it in {finer.shards}. Setting "
                f"AGENT_METRICS_AGENT_SHARDS={finer.shards} (or a lower "
                f"AGENT_METRICS_MAX_CALLS_PER_QUERY) starts there. ({error})"
            )
            chunk = finer
    context.log.debug(
        f"Read {describe_days(chunk.days)} in {chunk.shards} agent shard(s): {raw.height} rows"
    )
    metrics, quality = shape_metrics(raw)
    if measurement.escapes_formulas:
        metrics = escape_formula_agent_ids(metrics)
    if SourceQuality.counts_any(raw):
        quality = quality.with_samples(
            clickhouse.query_polars(*build_samples_query(*window, final=final))
        )
    if SourceQuality.counts_any(raw, [DUPLICATE_COUNT]):
        quality = quality.with_samples(
            clickhouse.query_polars(*build_duplicate_samples_query(*window, final=final))
        )
    statuses = counted_status_calls(raw, measurement.statuses)
    if SourceQuality.counts_any(raw, [UNCOUNTED_VARIANT_CALLS]):
        variants = clickhouse.query_polars(*build_status_variants_query(*window, final=final))
        statuses = pl.concat([statuses, variants.cast(statuses.schema)]).sort("date", "status")
    return metrics, quality, statuses, chunk.shards, raw.height


def _day_evaluations(
    context: dg.AssetExecutionContext, verdicts: Sequence[Verdict], published: bool
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each verdict recorded against its day, then the step's check outputs.

    A published day's evaluations judge the materialization this run just recorded. When
    nothing was published, a day that failed is judged against what is still published for it
    (so the day shows failed); a day that passed judges nothing new and is said so.
    """
    asset_key = context.asset_key
    failed_days = sorted({verdict.day for verdict in verdicts if verdict.blocks_publication})
    # This run's materializations are the newest of its days; otherwise, only the failed days
    # are judged, each against its own newest.
    judged_days = sorted({verdict.day for verdict in verdicts}) if published else failed_days
    latest: dict[str, dg.EventLogRecord] = {}
    for days in [judged_days] if published else [[day] for day in failed_days]:
        for record in context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=days), limit=len(days)
        ).records:
            latest.setdefault(record.partition_key, record)
    for verdict in verdicts:
        if not published and verdict.day not in failed_days:
            verdict = dataclasses.replace(
                verdict,
                metadata={**verdict.metadata, "unpublished_because_of_days": failed_days},
            )
        yield verdict.evaluation(asset_key, latest.get(verdict.day))
    # Every check is an output of the step: the per-day evaluations above are its results.
    for check_key in context.selected_asset_check_keys:
        yield dg.Output(
            None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key)
        )
