"""The demo's sample calls: five weeks of deterministic calls generated inside ClickHouse, and a
day of broken rows whose blocking checks fail on purpose.

The source table's DDL here is the contract's: the tests and the benchmarks create their tables
with it too; production tables are the user's.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource, clickhouse_resource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.demo.runs import SEED_DAYS, demo_days

SEED_AGENTS = 300
SEED_CALLS_PER_DAY = 20_000
# Source rows no metric can be computed from, on the day before the range: the blocking
# checks stop that day, and the checks tab shows these call ids.
BROKEN_CALLS = (
    ("demo-broken-no-agent-1", None, 95.0),
    ("demo-broken-no-agent-2", None, 120.5),
    ("demo-broken-negative-1", "agent-007", -30.0),
)


def source_table_ddl(source: SourceTable) -> tuple[str, str]:
    """The source table of the contract, and its database: ordered by start time so day windows
    prune parts. For the demo, the tests and the benchmarks; production tables are the user's."""
    call_id, agent, started_at, duration, status = source.column_names
    return (
        f"CREATE DATABASE IF NOT EXISTS `{source.database}`",
        f"""
CREATE TABLE IF NOT EXISTS {source.qualified_name} (
    `{call_id}` String,
    `{agent}` Nullable(String),
    `{started_at}` DateTime64(3, 'UTC'),
    `{duration}` Nullable(Float64),
    `{status}` LowCardinality(String)
) ENGINE = MergeTree ORDER BY `{started_at}`
""",
    )


def seed_sample_calls(
    clickhouse: ClickHouseResource,
    source: SourceTable,
    first_day: dt.date,
    days: int,
    calls_per_day: int = SEED_CALLS_PER_DAY,
    agents: int = SEED_AGENTS,
    timezone: str = "UTC",
) -> int:
    """Create the source table if needed and fill it with deterministic sample calls, generated
    inside ClickHouse (replacing whatever it held).

    The calls cover whole days from ``first_day`` in ``timezone``, the partitions' timezone.

    Durations are log-normal (median about 2.5 minutes); about 80% of calls are answered.
    """
    col = source.column
    total = days * calls_per_day
    # leftPad cuts longer text to the width: the width must fit the largest agent number.
    id_width = max(3, len(str(agents - 1)))
    with clickhouse.get_client() as client:
        for statement in source_table_ddl(source):
            client.command(statement)
        client.command(f"TRUNCATE TABLE {source.qualified_name}")
        client.command(
            f"""
            INSERT INTO {source.qualified_name}
            SELECT
                concat('call-', toString(number)) AS `{col("call_id")}`,
                concat(
                    'agent-', leftPad(toString(sipHash64(number, 1) % {agents}), {id_width}, '0')
                ) AS `{col("agent_id")}`,
                toDateTime64({{first_day:String}}, 3, {{timezone:String}})
                    + toIntervalMillisecond(sipHash64(number, 2) % ({days} * 86400000))
                    AS `{col("started_at")}`,
                round(exp(5 + 0.7 * sqrt(-2 * log((sipHash64(number, 3) % 1000000 + 1) / 1000001))
                    * cos(2 * pi() * (sipHash64(number, 4) % 1000000) / 1000000)), 1)
                    AS `{col("duration_sec")}`,
                multiIf(sipHash64(number, 5) % 100 < 80, 'Answered',
                        sipHash64(number, 5) % 100 < 90, 'Missed',
                        sipHash64(number, 5) % 100 < 95, 'Voicemail', 'Abandoned')
                    AS `{col("status")}`
            FROM numbers({total})
            """,
            parameters={"first_day": f"{first_day.isoformat()} 00:00:00", "timezone": timezone},
        )
    return total


def add_broken_calls(
    clickhouse: ClickHouseResource, source: SourceTable, day: dt.date, timezone: str
) -> None:
    """Answered calls at noon on ``day`` without an agent or with a negative length."""
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=zoneinfo.ZoneInfo(timezone))
    rows = [(call_id, agent, noon, length, "Answered") for call_id, agent, length in BROKEN_CALLS]
    with clickhouse.get_client() as client:
        client.insert(source.qualified_name, rows, column_names=list(source.column_names))


def seed_demo_calls(settings: Settings, today: dt.date) -> int:
    """Sample calls for the demo's five weeks, the broken day's rows among them."""
    clickhouse = clickhouse_resource(settings)
    source = settings.measurement.source
    first_day, broken_day, _, _ = demo_days(today)
    seeded = seed_sample_calls(clickhouse, source, first_day, SEED_DAYS, timezone=settings.timezone)
    add_broken_calls(clickhouse, source, broken_day, settings.timezone)
    return seeded + len(BROKEN_CALLS)
