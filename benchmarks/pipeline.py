"""The pipeline as the workers run it: the project's own definitions, materialized in process.

Workers configure the pipeline the way users do, through environment variables, and take
``defs`` from ``agent_metrics_pipeline.definitions``: the same asset, resources, checks and
IO manager as ``dagster dev``. They are built from the environment when loaded, so they are only
loaded inside a worker, whose environment the goal has set.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace

import dagster as dg
import polars as pl

from agent_metrics_pipeline.aggregate.queries import build_calls_per_day_query, build_metrics_query
from agent_metrics_pipeline.aggregate.query_parts import DayWindow
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.names import ASSET_NAME
from agent_metrics_pipeline.core.settings import Settings
from benchmarks.seeding import day_window


def definitions() -> dg.Definitions:
    from agent_metrics_pipeline.definitions import defs

    return defs()


def clickhouse_of(defs: dg.Definitions) -> ClickHouseResource:
    """The definitions' ClickHouse resource, usable outside a run: its password is an EnvVar,
    which Dagster resolves only when it initializes the resource."""
    clickhouse = defs.resources["clickhouse"]
    assert isinstance(clickhouse, ClickHouseResource)
    return clickhouse.process_config_and_initialize()


def materialize(
    defs: dg.Definitions,
    first_day: dt.date,
    days: int = 1,
    instance: dg.DagsterInstance | None = None,
) -> float:
    """Seconds for one in-process run of ``agent_metrics`` over ``days`` days from ``first_day``,
    as ``dg.materialize`` runs it: in-step checks, the IO manager's write, and ``instance``, an
    ephemeral one (events held in memory) unless given.
    """
    return _materialize([agent_metrics(defs)], defs, first_day, days, instance)


def agent_metrics(defs: dg.Definitions) -> dg.AssetsDefinition:
    """The asset as defined, before Definitions binds its resources: both this and the trivial
    asset get their resources from ``dg.materialize``, the same way."""
    key = dg.AssetKey(ASSET_NAME)
    return next(a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition) and a.key == key)


def trivial_asset(defs: dg.Definitions) -> dg.AssetsDefinition:
    """An asset that does nothing, on the same partitions: what Dagster itself costs a run."""
    partitions_def = agent_metrics(defs).partitions_def

    @dg.asset(name="trivial", partitions_def=partitions_def)
    def trivial() -> None:
        return None

    return trivial


def trivial_asset_with_checks(defs: dg.Definitions) -> dg.AssetsDefinition:
    """An asset that does nothing but record a passing result of each of ``agent_metrics``'s
    checks, on the same partitions: what Dagster itself costs a run of an asset of that shape
    (each check result is an output and an evaluation in the run's event log)."""
    real = agent_metrics(defs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs = [
            dg.AssetCheckSpec(name, asset="trivial_checked", partitions_def=real.partitions_def)
            for name in sorted(spec.name for spec in real.check_specs)
        ]

    @dg.asset(name="trivial_checked", partitions_def=real.partitions_def, check_specs=specs)
    def trivial_checked() -> Iterator[dg.Output | dg.AssetCheckResult]:
        yield dg.Output(None)
        for spec in specs:
            yield dg.AssetCheckResult(check_name=spec.name, passed=True)

    return trivial_checked


def materialize_trivial(
    defs: dg.Definitions, asset: dg.AssetsDefinition, first_day: dt.date
) -> float:
    return _materialize([asset], defs, first_day, 1)


def _materialize(
    assets: list[dg.AssetsDefinition],
    defs: dg.Definitions,
    first_day: dt.date,
    days: int,
    instance: dg.DagsterInstance | None = None,
) -> float:
    options: dict = {"resources": defs.resources, "instance": instance}
    if days == 1:
        options["partition_key"] = first_day.isoformat()
    else:
        last_day = first_day + dt.timedelta(days=days - 1)
        options["tags"] = {
            "dagster/asset_partition_range_start": first_day.isoformat(),
            "dagster/asset_partition_range_end": last_day.isoformat(),
        }
    started = time.perf_counter()
    dg.materialize(assets, **options)
    return time.perf_counter() - started


def bare_aggregate_sql(source: SourceTable, day: dt.date) -> tuple[str, dict[str, object]]:
    """The least a day's metrics can cost: avg, exact linear p90 and count per agent of the
    day's answered calls in one query, without the pipeline's quality counts."""
    agent, started_at, duration, status = (
        f"`{source.column(role)}`" for role in ("agent_id", "started_at", "duration_sec", "status")
    )
    sql = f"""
SELECT {agent} AS agent_id,
       avg({duration}) AS avg_call_length_sec,
       quantileExactInclusive(0.9)({duration}) AS p90_call_length_sec,
       count() AS total_calls
FROM {source.qualified_name}
WHERE {started_at} >= {{start:DateTime64(3, 'UTC')}} AND {started_at} < {{end:DateTime64(3, 'UTC')}}
  AND {status} = 'Answered'
GROUP BY agent_id
ORDER BY agent_id
"""
    return sql, window_parameters(day)


def bare_aggregate(clickhouse: ClickHouseResource, source: SourceTable, day: dt.date) -> float:
    """Seconds for the bare aggregate through the resource's own query path (a client opened and
    closed, Arrow to Polars), as the pipeline's queries go."""
    started = time.perf_counter()
    frame = clickhouse.query_polars(*bare_aggregate_sql(source, day))
    assert isinstance(frame, pl.DataFrame)
    return time.perf_counter() - started


def window_parameters(day: dt.date) -> dict[str, object]:
    """``start`` and ``end`` of the day in UTC, as ClickHouse parses DateTime64 parameters."""
    return {
        name: moment.strftime("%Y-%m-%d %H:%M:%S")
        for name, moment in zip(("start", "end"), day_window(day), strict=True)
    }


def versioned_reads(
    clickhouse: ClickHouseResource, versioned: SourceTable, day: dt.date
) -> dict[str, float]:
    """Seconds for the metrics query over a table of row versions, as stored and with FINAL."""
    measurement = replace(Settings.from_env().measurement, source=versioned)
    start, end = day_window(day)
    times = {}
    for name, final in (("versioned_as_stored", False), ("versioned_final", True)):
        started = time.perf_counter()
        clickhouse.query_polars(
            *build_metrics_query(measurement, [DayWindow(day, start, end)], "UTC", final=final)
        )
        times[name] = time.perf_counter() - started
    return times


def pipeline_queries(clickhouse: ClickHouseResource, day: dt.date) -> dict[str, float]:
    """Seconds for each query the asset sends for ``day``, run alone the same way."""
    settings = Settings.from_env()
    start, end = day_window(day)
    measurement = settings.measurement
    queries = {
        "calls_query": build_calls_per_day_query(
            measurement, [(day, start, end)], settings.timezone, by_primary_key=True
        ),
        "metrics_query": build_metrics_query(
            measurement, [DayWindow(day, start, end)], settings.timezone
        ),
    }
    times = {}
    for name, query in queries.items():
        started = time.perf_counter()
        clickhouse.query_polars(*query)
        times[name] = time.perf_counter() - started
    return times
