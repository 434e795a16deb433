"""Source tables of generated calls, made inside ClickHouse by the project's own generator.

A day comes from ``demo.seed_sample_calls`` (deterministic, ``INSERT … SELECT … FROM numbers``).
It runs at about a million calls a second on two cores, so a long range (365 days of a million
calls) would take six minutes; more days are instead copies of the first day shifted by whole
days, about four times faster. The metrics read no call id, so ids that repeat across days
change nothing they measure.
"""

from __future__ import annotations

import datetime as dt
import time

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.demo.sample_calls import source_table_ddl

# Well before today in any timezone, and on or after the default AGENT_METRICS_START_DATE.
FIRST_DAY = dt.date(2025, 1, 1)


def table_for(
    calls_per_day: int, days: int = 1, agents: int = 2000, first_day: dt.date = FIRST_DAY
) -> SourceTable:
    """One table per shape, so goals of one run that need the same rows share them."""
    since = "" if first_day == FIRST_DAY else f"_from{first_day:%Y%m%d}"
    return SourceTable(table=f"calls_{calls_per_day}x{days}d_{agents}a{since}")


def day_window(first_day: dt.date, days: int = 1) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=days)


def _row_count(clickhouse: ClickHouseResource, source: SourceTable) -> int:
    with clickhouse.get_client() as client:
        exists = client.command(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": source.database, "t": source.table},
        )
        if not int(exists):
            return 0
        return int(client.command(f"SELECT count() FROM {source.qualified_name}"))


def seed_calls(
    clickhouse: ClickHouseResource,
    calls_per_day: int,
    days: int = 1,
    agents: int = 2000,
    first_day: dt.date = FIRST_DAY,
) -> tuple[SourceTable, float]:
    """The table of ``days`` days of ``calls_per_day`` calls from ``first_day``, and the seconds
    it took to fill and merge (0 when an earlier goal of the run already filled it)."""
    # The demo module builds the definitions from the environment when imported: only workers,
    # whose environment a goal has set, get this far.
    from agent_metrics_pipeline.demo.sample_calls import seed_sample_calls

    source = table_for(calls_per_day, days, agents, first_day)
    if _row_count(clickhouse, source) == calls_per_day * days:
        return source, 0.0
    started = time.perf_counter()
    if days == 1 and first_day == FIRST_DAY:
        seed_sample_calls(
            clickhouse, source, FIRST_DAY, days=1, calls_per_day=calls_per_day, agents=agents
        )
        _merge(clickhouse, source)
        return source, time.perf_counter() - started
    first = table_for(calls_per_day, 1, agents)
    if _row_count(clickhouse, first) != calls_per_day:
        seed_sample_calls(
            clickhouse, first, FIRST_DAY, days=1, calls_per_day=calls_per_day, agents=agents
        )
        _merge(clickhouse, first)
    col = source.column
    offset = (first_day - FIRST_DAY).days
    with clickhouse.get_client() as client:
        for statement in source_table_ddl(source):
            client.command(statement)
        client.command(f"TRUNCATE TABLE {source.qualified_name}")
        client.command(
            f"""
            INSERT INTO {source.qualified_name}
            SELECT
                `{col("call_id")}`, `{col("agent_id")}`,
                `{col("started_at")}` + toIntervalDay(shift.number + {offset}),
                `{col("duration_sec")}`, `{col("status")}`
            FROM {first.qualified_name} CROSS JOIN numbers({days}) AS shift
            """,
            settings={"max_insert_threads": 2},
        )
    _merge(clickhouse, source)
    return source, time.perf_counter() - started


def _merge(clickhouse: ClickHouseResource, source: SourceTable) -> None:
    """Merge the freshly inserted parts now, as the engine would in the background: a month's
    merge takes the cores for seconds, which would otherwise go to the runs being measured."""
    with clickhouse.get_client() as client:
        client.command(f"OPTIMIZE TABLE {source.qualified_name} FINAL")


def seed_versioned_copy(clickhouse: ClickHouseResource, source: SourceTable) -> SourceTable:
    """A ReplacingMergeTree copy of ``source`` in which a fifth of the calls have a second,
    unmerged version, as a table of call updates has between merges; merges stay stopped so
    every round reads the same parts."""
    copy = SourceTable(table=f"{source.table}_versioned")
    with clickhouse.get_client() as client:
        client.command(f"DROP TABLE IF EXISTS {copy.qualified_name}")
        client.command(
            f"CREATE TABLE {copy.qualified_name} AS {source.qualified_name} "
            f"ENGINE = ReplacingMergeTree ORDER BY (`{source.column('started_at')}`, "
            f"`{source.column('call_id')}`)"
        )
        client.command(f"SYSTEM STOP MERGES {copy.qualified_name}")
        client.command(f"INSERT INTO {copy.qualified_name} SELECT * FROM {source.qualified_name}")
        client.command(
            f"INSERT INTO {copy.qualified_name} SELECT * FROM {source.qualified_name} "
            f"WHERE cityHash64(`{source.column('call_id')}`) % 5 = 0"
        )
    return copy
