"""The ``agent_metrics`` asset: per-agent call metrics for each day, from ClickHouse."""

import dataclasses
import datetime as dt
import warnings
from collections.abc import Iterator, Mapping, Sequence

import dagster as dg

# Dagster's clock, which its partitions read: a day is today for the asset when it is for them.
from dagster._time import get_current_datetime

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.core.measurement import Chunking, Measurement
from agent_metrics_pipeline.core.names import (
    ASSET_NAME,
    CSV_IO_MANAGER_KEY,
    GROUP_NAME,
    PARTIAL_AS_OF,
    PUBLISH_PARTIAL_TAG,
)
from agent_metrics_pipeline.core.partitions import days_of, format_days, running_days
from agent_metrics_pipeline.core.processes import scratch_folder
from agent_metrics_pipeline.publish.reading import read_days
from agent_metrics_pipeline.quality.checks import check_specs, checks_for
from agent_metrics_pipeline.quality.findings import format_failures, record_verdicts
from agent_metrics_pipeline.quality.usual_volume import held_back
from agent_metrics_pipeline.storage.published_format import published_schema
from agent_metrics_pipeline.storage.staged_days import StagedDays


def build_agent_metrics_asset(
    partitions_def: dg.DailyPartitionsDefinition,
    measurement: Measurement,
    backfill_policy: dg.BackfillPolicy | None = None,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = None,
    owners: Sequence[str] = (),
    freshness_policy: dg.FreshnessPolicy | None = None,
    calls: dg.SourceAsset | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    chunking: Chunking | None = None,
) -> dg.AssetsDefinition:
    """The asset over ``partitions_def``, measuring what ``measurement`` says.

    A range of days runs as one run, in queries of consecutive days and agent shards within the
    limits of ``chunking``; each chunk is checked and staged on local disk before the next is
    read, and nothing is published unless every day passed.
    ``pool`` serialises the steps that share a resource only one process may hold (the
    embedded engine's folder); ``retry_policy`` applies
    to transient faults only. With ``calls``, the observed calls table, Dagster knows which
    source fingerprint each day was computed from; ``automation_condition`` acts on that.
    """
    chunking = chunking or Chunking()

    # backfill_policy is beta in Dagster 1.13, but the CLI's --partition-range requires it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

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
            deps=[calls] if calls is not None else None,
            automation_condition=automation_condition,
            metadata={
                "dagster/column_schema": published_schema(),
                **measurement.catalog_metadata(),
                **chunking.catalog_metadata(),
            },
            description=(
                "Per agent and day: average and 90th-percentile call length (seconds, 2 "
                "decimals, p90 by linear interpolation) and the number of calls counted, "
                "published as one CSV per day once the checks pass."
            ),
        )
        def agent_metrics(
            context: dg.AssetExecutionContext, clickhouse: ClickHouseResource
        ) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
            days = _run_days(context)
            window = context.partition_time_window
            read_at = get_current_datetime()
            running = running_days(partitions_def, days, read_at)
            context.log.info(
                f"Aggregating {len(days)} day(s) [{window.start.isoformat()}, "
                f"{window.end.isoformat()}) on the {clickhouse.description}"
                + (f"; {format_days(running)} has not ended: partial" if running else "")
            )
            with (
                no_retry_for_permanent_errors(),
                scratch_folder(prefix="agent_metrics-") as staging_folder,
            ):
                staged = StagedDays(staging_folder, running=dict.fromkeys(running, read_at))
                this_run = _for_this_run(measurement, context.run.tags, running)
                with clickhouse.session() as session:
                    run = read_days(
                        context.log,
                        session,
                        this_run,
                        checks_for(this_run),
                        partitions_def,
                        days,
                        chunking,
                        staged,
                    )
                # A failed blocking check must stop publication here: once the Output is
                # yielded, Dagster hands it to the IO manager whatever the checks said.
                if run.blocking:
                    yield from record_verdicts(context, run.verdicts, published=False)
                    raise dg.Failure(
                        description=(
                            f"{held_back(run.blocking)}"
                            f"Nothing published for {format_days(days)}: failed checks "
                            f"{format_failures(run.blocking)}. Each day's check results hold "
                            "counts and sample ids. Fix the source rows, or the check's knob "
                            '(docs/how-it-works.md, "Data-quality checks"; '
                            "AGENT_METRICS_INVALID_ROWS=exclude leaves unmeasurable calls out)."
                        ),
                        allow_retries=False,
                    )
                for day, metadata in run.metadata_by_day.items():
                    if day in staged.running:
                        metadata = {
                            **metadata,
                            PARTIAL_AS_OF: dg.MetadataValue.timestamp(read_at),
                        }
                    context.add_asset_metadata(metadata, partition_key=day.isoformat())
                yield dg.Output(staged)
            # After the Output, each day's materialization is recorded: the evaluations judge it.
            yield from record_verdicts(context, run.verdicts, published=True)

    return agent_metrics


def _for_this_run(
    measurement: Measurement, tags: Mapping[str, str], running: Sequence[dt.date]
) -> Measurement:
    """The measurement, with the operator's override when the run carries it, and the days
    still running, which are partial by nature."""
    on_purpose = tags.get(PUBLISH_PARTIAL_TAG, "").strip().lower() == "true"
    if not on_purpose and not running:
        return measurement
    usual_volume = dataclasses.replace(
        measurement.usual_volume, published_on_purpose=on_purpose, running_days=tuple(running)
    )
    return dataclasses.replace(measurement, usual_volume=usual_volume)


def _run_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The run's days; a reversed range selects none, which is refused with its fix."""
    days = days_of(context.partition_keys)
    if not days:
        key_range = context.partition_key_range
        raise dg.Failure(
            description=(
                f"The run selects no day: the range {key_range.start}...{key_range.end} is "
                "reversed. Give the first day first, as FIRST...LAST."
            ),
            allow_retries=False,
        )
    return days
