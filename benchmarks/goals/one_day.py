"""Goal 1: one day at 10 M calls, materialized in process, costs at most 1.2× the bare aggregate
once Dagster's fixed cost is taken out.

One worker process on the embedded engine runs, per round: the bare aggregate (one query, same
engine, same process), ``dg.materialize`` of ``agent_metrics`` for the day with the project's
definitions (local CSV output), and ``dg.materialize`` of two assets that do nothing on the same
partitions: one bare (Dagster's fixed cost of a run), one that records a passing result of each
of ``agent_metrics``'s checks (Dagster's fixed cost of a run of an asset of that shape: each
check result is an output and an evaluation in the event log, whatever the day holds). The
asset's own queries (the day's calls, then the metrics) are also run alone, the way the asset
sends them, to show where the difference goes. A first round warms the process up and is
dropped. The net cost of each round is its materialize minus its checked trivial run (minus the
bare one, shown too). The metrics query also runs over a ReplacingMergeTree copy of the day in
which a fifth of the calls have a second, unmerged version, as stored and with FINAL: the price
of counting each call once on such a table.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import run_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import FIRST_DAY, seed_calls, seed_versioned_copy, table_for

GOAL = "1"
TARGET = 1.2


@dataclass(frozen=True)
class Params:
    calls_per_day: int
    agents: int
    rounds: int


FULL = Params(calls_per_day=10_000_000, agents=2000, rounds=9)
QUICK = Params(calls_per_day=1_000_000, agents=2000, rounds=2)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    source = table_for(params.calls_per_day, agents=params.agents)
    result = run_worker(
        "benchmarks.goals.one_day:work",
        {"calls_per_day": params.calls_per_day, "agents": params.agents, "rounds": params.rounds},
        context.embedded_env(source),
    ).value
    bare, full = result["bare"], result["materialize"]
    trivial, checked = result["trivial"], result["trivial_checked"]
    net = [m - t for m, t in zip(full, checked, strict=True)]
    ratio = statistics.median(net) / statistics.median(bare)
    net_of_run = [m - t for m, t in zip(full, trivial, strict=True)]
    calls = f"{params.calls_per_day / 1e6:g} M calls"
    return Section(
        rows=[
            Row(GOAL, f"bare aggregate (avg, exact p90, count per agent), {calls}", bare),
            Row(GOAL, "the asset's metrics query alone", result["metrics_query"]),
            Row(GOAL, "the asset's count of the day's calls", result["calls_query"]),
            Row(
                GOAL,
                "metrics query, ReplacingMergeTree copy (1 in 5 calls twice, unmerged)",
                result["versioned_as_stored"],
            ),
            Row(
                GOAL,
                "the same read as its latest versions (FINAL, the default for such tables)",
                result["versioned_final"],
                ratio=statistics.median(result["versioned_final"])
                / statistics.median(result["versioned_as_stored"]),
                target="vs as stored",
            ),
            Row(GOAL, "dg.materialize agent_metrics, one day", full),
            Row(GOAL, "Dagster fixed cost of a run (trivial asset, same partitions)", trivial),
            Row(
                GOAL,
                f"Dagster fixed cost with the asset's {result['checks']} check results recorded",
                checked,
            ),
            Row(
                GOAL,
                "materialize − fixed cost of a run, vs bare aggregate",
                net_of_run,
                ratio=statistics.median(net_of_run) / statistics.median(bare),
                target="(checks' recording in)",
            ),
            Row(
                GOAL,
                "materialize − fixed cost with the checks recorded, vs bare aggregate",
                net,
                ratio=ratio,
                target=f"≤ {TARGET}×",
                met=ratio <= TARGET,
            ),
        ],
        notes=[
            f"Goal {GOAL}: {result['agents']} distinct agent ids ({params.agents} asked of the "
            f"generator), {result['calls_counted']:,} answered calls of {calls}; seeding took "
            f"{result['seed_sec']:.1f} s. Interleaved rounds after one warm-up round; "
            "embedded engine, local CSV output.",
        ],
    )


def work(calls_per_day: int, agents: int, rounds: int) -> dict:
    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    source, seed_sec = seed_calls(clickhouse, calls_per_day, agents=agents)
    versioned = seed_versioned_copy(clickhouse, source)
    trivial = pipeline.trivial_asset(defs)
    checked = pipeline.trivial_asset_with_checks(defs)
    times: dict[str, list[float]] = {
        "bare": [],
        "metrics_query": [],
        "calls_query": [],
        "versioned_as_stored": [],
        "versioned_final": [],
        "materialize": [],
        "trivial": [],
        "trivial_checked": [],
    }
    for round_number in range(rounds + 1):
        measured = {
            "bare": pipeline.bare_aggregate(clickhouse, source, FIRST_DAY),
            "materialize": pipeline.materialize(defs, FIRST_DAY),
            "trivial": pipeline.materialize_trivial(defs, trivial, FIRST_DAY),
            "trivial_checked": pipeline.materialize_trivial(defs, checked, FIRST_DAY),
            **pipeline.pipeline_queries(clickhouse, FIRST_DAY),
        }
        if round_number:  # round 0 warms up
            for name, seconds in measured.items():
                times[name].append(seconds)
    # Apart: a FINAL read holds far more memory than the rest, and slowed whatever ran next.
    for round_number in range(rounds + 1):
        measured = pipeline.versioned_reads(clickhouse, versioned, FIRST_DAY)
        if round_number:
            for name, seconds in measured.items():
                times[name].append(seconds)
    answered = clickhouse.query_polars(*pipeline.bare_aggregate_sql(source, FIRST_DAY))
    return {
        **times,
        "seed_sec": seed_sec,
        "checks": len(checked.check_specs),
        "agents": answered.height,
        "calls_counted": int(answered.get_column("total_calls").sum()),
    }
