"""Reading a run's days: chunk after chunk, each read and checked, then staged while the next
is read, so the step's memory follows the chunk, never the range."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg

from agent_metrics_pipeline.aggregate.chunking import Chunk, Chunker
from agent_metrics_pipeline.aggregate.metrics import (
    CALLS_PER_COUNTED_STATUS,
    DUPLICATE_COUNT,
    UNCOUNTED_VARIANT_CALLS,
    UNUSUAL_CALLS,
    SourceQuality,
    counted_status_calls,
    escape_formula_agent_ids,
    shape_metrics,
    to_markdown,
)
from agent_metrics_pipeline.aggregate.queries import (
    build_calls_per_day_query,
    build_duplicate_samples_query,
    build_metrics_query,
    build_quality_query,
    build_status_variants_query,
)
from agent_metrics_pipeline.aggregate.query_parts import DayWindow
from agent_metrics_pipeline.clickhouse.errors import ClickHouseMemoryLimitError
from agent_metrics_pipeline.clickhouse.relation import SourceRelation, read_relation
from agent_metrics_pipeline.clickhouse.session import ClickHouseSession
from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.measurement import MAX_AGENT_SHARDS, Chunking, Measurement
from agent_metrics_pipeline.core.partitions import format_days
from agent_metrics_pipeline.quality.findings import Check, Evidence, Verdict, judge_days
from agent_metrics_pipeline.quality.usual_volume import days_to_count
from agent_metrics_pipeline.storage.published_format import metrics_for_day
from agent_metrics_pipeline.storage.staged_days import StagedDays

PREVIEW_ROWS = 10
# Days counted per query when sizing a run: a year's range takes four small queries.
DAYS_PER_COUNT_QUERY = 100


@dataclass(frozen=True)
class ChunkReading:
    """What the queries of one chunk returned, shaped for the checks."""

    metrics: pl.DataFrame
    quality: SourceQuality
    # Calls per day of each counted status and each status spelled like one.
    statuses: pl.DataFrame
    # The agent shards the chunk was read in, after any the server's memory limit asked for.
    agent_shards: int
    rows_read: int


@dataclass
class RunReading:
    """What a run learned of its days: every check's verdict on each, and each day's metadata."""

    verdicts: list[Verdict] = field(default_factory=list)
    metadata_by_day: dict[dt.date, dict[str, object]] = field(default_factory=dict)

    @property
    def blocking(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if verdict.blocks_publication]


def read_days(
    log: dg.DagsterLogManager,
    session: ClickHouseSession,
    measurement: Measurement,
    checks: Sequence[Check],
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[dt.date],
    chunking: Chunking,
    staged: StagedDays,
) -> RunReading:
    """Read ``days``, judge them by ``checks`` (those of ``measurement``) and stage them; a
    chunk that fails a blocking check is not staged."""
    relation = read_relation(session, measurement.source)
    final = relation.reads_final(measurement.read_final)
    if final:
        log.info(
            f"{measurement.source.database}.{measurement.source.table} is a "
            f"{relation.engine or 'relation'}: reading each row's latest version (FINAL)"
        )
    counted_days = days_to_count(days, measurement.usual_volume)
    calls_per_day = calls_held_per_day(session, measurement, partitions_def, counted_days, relation)
    chunker = Chunker(days, calls_per_day, chunking)
    run = RunReading()
    # A chunk that passed its checks is staged while the next chunk is read: encoding the
    # files and the engine's query both let go of the GIL, and the query leaves a core idle.
    # Its rows are held until written, about a tenth of the next query's time.
    staging: Future[None] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="stage") as stager:
        try:
            for chunk in chunker:
                reading = read_chunk(log, session, measurement, partitions_def, chunk, final)
                chunker.learn(chunk, reading.rows_read)
                if staging is not None:
                    staging.result()
                evidence = Evidence(
                    reading.metrics,
                    reading.quality,
                    reading.statuses,
                    chunk.days,
                    measurement,
                    calls_per_day,
                )
                verdicts = judge_days(checks, evidence)
                run.verdicts += verdicts
                for day in chunk.days:
                    run.metadata_by_day[day] = {
                        **day_metadata(reading, evidence, day, days),
                        **relation.run_metadata(measurement.read_final),
                    }
                # A chunk that fails a blocking check is never published: its rows are not
                # staged, and the run's failure names them.
                if not any(verdict.blocks_publication for verdict in verdicts):
                    staging = stager.submit(staged.stage, reading.metrics, chunk.days)
                del reading, evidence
        finally:
            # A fault of the last staging is raised too, after any fault of the reading.
            if staging is not None:
                staging.result()
    return run


def day_metadata(
    reading: ChunkReading, evidence: Evidence, day: dt.date, run_days: Sequence[dt.date]
) -> dict[str, object]:
    """What one day's materialization shows, whether it ran alone or in a range."""
    rows = metrics_for_day(reading.metrics, day)
    return {
        "dagster/row_count": rows.height,
        "calls_counted": int(rows.get_column("total_calls").sum()),
        "unmeasurable_calls": reading.quality.unmeasurable_calls(day),
        "statuses_seen": evidence.statuses_by_day[day],
        "source_rows": evidence.calls_held.get(day, 0),
        "run_days": format_days(run_days),
        "agent_shards": reading.agent_shards,
        "preview": dg.MetadataValue.md(to_markdown(rows.head(PREVIEW_ROWS))),
    }


def calls_held_per_day(
    session: ClickHouseSession,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[dt.date],
    relation: SourceRelation,
) -> dict[dt.date, int]:
    """The calls the source holds on each day, any status, as stored: they size the chunks."""
    by_primary_key = relation.sorted_by(measurement.source.column("started_at"))
    calls: dict[dt.date, int] = {}
    for first in range(0, len(days), DAYS_PER_COUNT_QUERY):
        bounds = []
        for day in days[first : first + DAYS_PER_COUNT_QUERY]:
            window = partitions_def.time_window_for_partition_key(day.isoformat())
            bounds.append((day, window.start, window.end))
        counted = session.query_polars(
            *build_calls_per_day_query(measurement, bounds, partitions_def.timezone, by_primary_key)
        )
        calls |= {day: int(count) for day, count in counted.iter_rows()}
    return calls


def read_chunk(
    log: dg.DagsterLogManager,
    session: ClickHouseSession,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    chunk: Chunk,
    final: bool,
) -> ChunkReading:
    """The metrics, source quality and calls per status (counted statuses and those spelled
    like one) of the chunk's days: the quality query and the status variants are read only
    when the metrics or the quality query counted calls they would show.

    A server that stops a query at the user's per-query memory limit would stop it again: the
    chunk is read again in twice as many shards, until the limit lets each through.
    """
    day_windows = []
    for day in chunk.days:
        partition_window = partitions_def.time_window_for_partition_key(day.isoformat())
        day_windows.append(DayWindow(day, partition_window.start, partition_window.end))
    each_day = (measurement, day_windows, partitions_def.timezone)
    whole_window = (
        measurement,
        day_windows[0].start,
        day_windows[-1].end,
        partitions_def.timezone,
    )
    while True:
        try:
            raw = pl.concat(
                [
                    session.query_polars(*build_metrics_query(*each_day, shard=shard, final=final))
                    for shard in chunk.agent_shards()
                ],
                how="vertical_relaxed",
            )
            break
        except ClickHouseMemoryLimitError as error:
            if chunk.shards >= MAX_AGENT_SHARDS:
                raise
            finer = dataclasses.replace(chunk, shards=min(MAX_AGENT_SHARDS, chunk.shards * 2))
            log.warning(
                f"{format_days(chunk.days)} in {chunk.shards} agent shard(s) exceeded the "
                f"server's per-query memory limit; reading it in {finer.shards}. Setting "
                f"AGENT_METRICS_AGENT_SHARDS={finer.shards} (or a lower "
                f"AGENT_METRICS_MAX_CALLS_PER_QUERY) starts there. ({error})"
            )
            chunk = finer
    log.debug(f"Read {format_days(chunk.days)} in {chunk.shards} agent shard(s): {raw.height} rows")
    unusual = None
    if SourceQuality.counts_any(raw, [UNUSUAL_CALLS]):
        unusual = session.query_polars(*build_quality_query(*each_day, final=final))
    metrics, quality = shape_metrics(raw, unusual)
    if measurement.escapes_formulas:
        metrics = escape_formula_agent_ids(metrics)
    if SourceQuality.counts_any(quality.per_day, [DUPLICATE_COUNT]):
        quality = quality.with_samples(
            session.query_polars(*build_duplicate_samples_query(*whole_window, final=final))
        )
    per_status = [raw.select("date", CALLS_PER_COUNTED_STATUS)]
    if unusual is not None:
        per_status.append(unusual.select("date", CALLS_PER_COUNTED_STATUS))
    statuses = counted_status_calls(
        pl.concat(per_status, how="vertical_relaxed"), measurement.statuses
    )
    if unusual is not None and SourceQuality.counts_any(unusual, [UNCOUNTED_VARIANT_CALLS]):
        variants = session.query_polars(*build_status_variants_query(*each_day, final=final))
        statuses = pl.concat([statuses, variants.cast(statuses.schema)]).sort("date", "status")
    return ChunkReading(metrics, quality, statuses, chunk.shards, raw.height)
