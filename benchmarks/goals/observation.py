"""Goal 8: the hourly observation of a 30-day window of 10 M calls a day takes under a second
when nothing changed.

One worker on the embedded engine seeds the 30 days that end yesterday (the window the
observation covers) and ticks the observation sensor as the daemon does, on one instance:
first on an instance with no history, which fingerprints every day, as every observation did
before (the baseline); then unchanged, which reads the table's parts from the server's metadata
and no granule of the table; then after one late call, which fingerprints its day alone.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import dataclass

import dagster as dg

from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import seed_calls, table_for

GOAL = "8"
TARGET_SEC = 1.0
WINDOW_DAYS = 30


@dataclass(frozen=True)
class Params:
    calls_per_day: int
    rounds: int


FULL = Params(calls_per_day=10_000_000, rounds=5)
QUICK = Params(calls_per_day=200_000, rounds=2)


def _window() -> tuple[dt.date, dt.date]:
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return yesterday - dt.timedelta(days=WINDOW_DAYS - 1), yesterday


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    first_day, _ = _window()
    source = table_for(params.calls_per_day, WINDOW_DAYS, first_day=first_day)
    result = run_worker(
        "benchmarks.goals.observation:work",
        {"calls_per_day": params.calls_per_day, "rounds": params.rounds},
        {
            **context.embedded_env(source),
            "AGENT_METRICS_START_DATE": (first_day - dt.timedelta(days=30)).isoformat(),
            "AGENT_METRICS_OBSERVE_WINDOW_DAYS": str(WINDOW_DAYS),
        },
    ).value
    full, unchanged, late = result["full"], result["unchanged"], result["one_late_call"]
    ratio = statistics.median(unchanged) / statistics.median(full)
    return Section(
        rows=[
            Row(
                GOAL,
                f"observe {WINDOW_DAYS} days × {params.calls_per_day / 1e6:g} M calls, "
                "every day fingerprinted (no history: the baseline)",
                full,
            ),
            Row(
                GOAL,
                "the same observation, nothing changed since the last",
                unchanged,
                ratio=ratio,
                target=f"≤ {TARGET_SEC:g} s",
                met=statistics.median(unchanged) <= TARGET_SEC,
            ),
            Row(
                GOAL,
                "after one late call: its day fingerprinted again",
                late,
                ratio=statistics.median(late) / statistics.median(full),
                target="vs every day",
            ),
        ],
        notes=[
            f"Goal {GOAL}: the observation sensor (observation and late-calls check) ticked in "
            f"process on one instance, embedded engine; seeding took {result['seed_sec']:.1f} s. "
            "An unchanged observation recorded "
            f"{statistics.median(result['unchanged_events']):g} event(s). "
            f"The table has {result['parts']:,} active parts; its merges are stopped during the "
            "rounds (a merge rewrites the days of its parts, which the next observation "
            "fingerprints again). Each 'one late call' round inserts a call into the window's "
            "middle day first.",
        ],
    )


def work(calls_per_day: int, rounds: int) -> dict:
    from agent_metrics_pipeline.core.settings import Settings
    from agent_metrics_pipeline.observe.readings import read_parts
    from agent_metrics_pipeline_tests.helpers import observe as observe_once

    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    first_day, _ = _window()
    source, seed_sec = seed_calls(clickhouse, calls_per_day, days=WINDOW_DAYS, first_day=first_day)
    with clickhouse.get_client() as client:
        # Merges still running from the seeding would rewrite the days of their parts between
        # two observations: the observation rightly fingerprints those days again, and
        # "nothing changed" would not hold. The stop ends with this worker's engine.
        client.command(f"SYSTEM STOP MERGES {source.qualified_name}")
    parts = len(read_parts(clickhouse, source).modified)

    cursors: dict[int, str | None] = {}

    def observe(instance: dg.DagsterInstance) -> float:
        """One due tick, its events recorded as the daemon records them."""
        started = time.perf_counter()
        tick = observe_once(defs, instance, clickhouse, cursors.get(id(instance)))
        seconds = time.perf_counter() - started
        assert "failed" not in (tick.skip_message or ""), tick.skip_message
        cursors[id(instance)] = tick.cursor
        events.append(len(tick.asset_events))
        return seconds

    middle_day = first_day + dt.timedelta(days=WINDOW_DAYS // 2)
    # A counted call, so that its day's fingerprint changes.
    counted = Settings.from_env().measurement.statuses[0]
    col = source.column
    times: dict[str, list[float]] = {"full": [], "unchanged": [], "one_late_call": []}
    events: list[int] = []
    unchanged_events = []
    for _ in range(rounds):
        instance = dg.DagsterInstance.ephemeral()
        times["full"].append(observe(instance))
        times["unchanged"].append(observe(instance))
        unchanged_events.append(events[-1])
        with clickhouse.get_client() as client:
            client.command(
                f"INSERT INTO {source.qualified_name} "
                f"SELECT `{col('call_id')}` || '-late', `{col('agent_id')}`, "
                f"toDateTime64('{middle_day} 12:00:00', 3, 'UTC'), `{col('duration_sec')}`, "
                f"`{col('status')}` FROM {source.qualified_name} "
                f"WHERE `{col('status')}` = '{counted}' LIMIT 1"
            )
        times["one_late_call"].append(observe(instance))
    return {**times, "unchanged_events": unchanged_events, "seed_sec": seed_sec, "parts": parts}
