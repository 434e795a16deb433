"""Goal 9: three years of publication history cost what one month costs, within 1.5×.

Two instances are filled as the daily schedule would have filled them (see benchmarks/history.py):
one month (30 days) and three years (1,095 days), each day a run with its materialization and 11
check evaluations, and its observation. Against each, in the same run: the UI's own GraphQL
operations for the asset's Partitions, Checks and Events tabs, a check's partitions and the Runs
page (captured from Chromium opening the one-month instance's pages, then sent to both
webservers in turn), how long each page takes to settle in the browser, one observation of the
(unchanged) window and one evaluation of the republish condition.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from benchmarks import ui_operations as ui
from benchmarks.context import Context
from benchmarks.history import folder_bytes, yesterday
from benchmarks.processes import finish_worker, run_worker, spawn_worker
from benchmarks.report import Row, Section
from benchmarks.seeding import table_for

GOAL = "9"
TARGET_RATIO = 1.5
WINDOW_DAYS = 30
# What a day leaves in the instance does not depend on its calls: a small window is seeded.
CALLS_PER_DAY = 20_000
CHECK = "no_nulls"
# Operations answered this fast at both sizes are counted, not listed.
QUICK_SEC = 0.02
TICKS = {
    "observation": "one observation, nothing changed",
    "republish": "one republish-condition evaluation",
}
ASSET_PAGE = "/assets/agent_metrics?view="


def _pages() -> tuple[ui.Page, ...]:
    # Days are clicked in the list beside the health bar (the same text is also drawn hidden).
    newest_day = f'text="{yesterday().isoformat()}" >> visible=true >> nth=-1'
    check_partitions = "role=tab[name='Partitions'] >> nth=1"
    return (
        ui.Page("Partitions tab", ASSET_PAGE + "partitions"),
        ui.Page("Partitions tab, a click on a day", ASSET_PAGE + "partitions", (newest_day,)),
        ui.Page("Checks tab", ASSET_PAGE + "checks"),
        ui.Page(
            "a check's Partitions", f"{ASSET_PAGE}checks&checkDetail={CHECK}", (check_partitions,)
        ),
        ui.Page(
            "a check's Partitions, a click on a day",
            f"{ASSET_PAGE}checks&checkDetail={CHECK}",
            (check_partitions, newest_day),
        ),
        ui.Page("Events tab", ASSET_PAGE + "events"),
        ui.Page("Runs page", "/runs"),
    )


@dataclass(frozen=True)
class Params:
    long_days: int
    rounds: int


FULL = Params(long_days=1095, rounds=5)
QUICK = Params(long_days=120, rounds=2)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    env = goal_env(context, params.long_days)
    recorded = run_worker("benchmarks.goals.history:record", {}, env).value
    folder = context.subfolder("history")
    homes = {"month": folder / "month", "years": folder / "years"}
    sizes = {"month": WINDOW_DAYS, "years": params.long_days}
    build_sec = _build_in_parallel(env, homes, sizes, recorded)
    ticks = {
        name: run_worker(
            "benchmarks.goals.history:ticks",
            {"dagster_home": str(home), "rounds": params.rounds},
            {**env, "DAGSTER_HOME": str(home)},
        ).value
        for name, home in homes.items()
    }
    operations, settle = _ui_timings(env, homes, params.rounds)
    return _section(params, sizes, build_sec, ticks, operations, settle, homes)


def goal_env(context: Context, long_days: int) -> dict[str, str]:
    """The workers' settings: the seeded window as the source, partitions from ``long_days``
    before yesterday."""
    source = table_for(CALLS_PER_DAY, WINDOW_DAYS, first_day=_first_window_day())
    return {
        **context.embedded_env(source),
        "AGENT_METRICS_START_DATE": (yesterday() - dt.timedelta(days=long_days)).isoformat(),
        "AGENT_METRICS_OBSERVE_WINDOW_DAYS": str(WINDOW_DAYS),
    }


def _first_window_day() -> dt.date:
    return yesterday() - dt.timedelta(days=WINDOW_DAYS - 1)


def record() -> dict:
    """Seed the observed window and capture what the pipeline records of a day."""
    from benchmarks import history, pipeline
    from benchmarks.seeding import seed_calls

    clickhouse = pipeline.clickhouse_of(pipeline.definitions())
    source, _ = seed_calls(
        clickhouse, CALLS_PER_DAY, days=WINDOW_DAYS, first_day=_first_window_day()
    )
    with clickhouse.get_client() as client:
        # A merge would change a day's parts between two observations (see goal 8).
        client.command(f"SYSTEM STOP MERGES {source.qualified_name}")
    return history.capture(WINDOW_DAYS)


def ticks(dagster_home: str, rounds: int) -> dict[str, list[float]]:
    """Seconds of one observation of the window, nothing changed, and of one evaluation of the
    republish condition, ``rounds`` times each, on the instance in ``dagster_home``."""
    import dagster as dg

    from agent_metrics_pipeline_tests.helpers import observe
    from benchmarks import pipeline

    defs = pipeline.definitions()
    clickhouse = pipeline.clickhouse_of(defs)
    times: dict[str, list[float]] = {"observation": [], "republish": [], "recorded": []}
    with dg.DagsterInstance.from_config(dagster_home) as instance:
        cursor = observe(defs, instance, clickhouse).cursor
        automation_cursor = None
        for _ in range(rounds):
            started = time.perf_counter()
            tick = observe(defs, instance, clickhouse, cursor)
            times["observation"].append(time.perf_counter() - started)
            times["recorded"].append(len(tick.asset_events))
            cursor = tick.cursor
            started = time.perf_counter()
            result = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=automation_cursor
            )
            times["republish"].append(time.perf_counter() - started)
            automation_cursor = result.cursor
            assert not result.get_requested_partitions(dg.AssetKey("agent_metrics")), (
                "an unchanged window requested republication"
            )
    return times


def _build_in_parallel(
    env: dict[str, str], homes: dict[str, Path], sizes: dict[str, int], recorded: dict
) -> dict[str, float]:
    """Both instances at once: building them opens no engine, and the machine has two cores."""
    workers = {}
    for name, home in homes.items():
        result_path = home.parent / f"{name}.json"
        process = spawn_worker(
            "benchmarks.history:build",
            {"dagster_home": str(home), "days": sizes[name], "recorded": recorded},
            env,
            result_path,
        )
        workers[name] = (process, result_path)
    return {
        name: finish_worker(process, "build", result_path, timeout=3600)["result"]
        for name, (process, result_path) in workers.items()
    }


def _ui_timings(
    env: dict[str, str], homes: dict[str, Path], rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    from benchmarks.services import dagster_webserver

    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(dagster_webserver({**env, "DAGSTER_HOME": str(home)}, home))
            for name, home in homes.items()
        }
        pages = _pages()
        captured = ui.capture(urls["month"], pages)
        operations: dict[str, dict[str, list[float]]] = {
            op.key: {name: [] for name in urls} for op in captured
        }
        settle: dict[str, dict[str, list[float]]] = {
            page.name: {name: [] for name in urls} for page in pages
        }
        for _ in range(rounds):
            for name, url in urls.items():
                for op in captured:
                    operations[op.key][name].append(ui.send(f"{url}/graphql", op))
                for page, seconds in ui.settle_times(url, pages).items():
                    settle[page][name].append(seconds)
    return operations, settle


def _ratio_row(measurement: str, samples: dict[str, list[float]], goal: bool = True) -> Row:
    ratio = statistics.median(samples["years"]) / statistics.median(samples["month"])
    return Row(
        GOAL,
        measurement,
        samples["years"],
        ratio=ratio,
        target=f"≤ {TARGET_RATIO:g}×" if goal else "vs one month",
        met=ratio <= TARGET_RATIO if goal else None,
    )


def _section(params, sizes, build_sec, ticks, operations, settle, homes) -> Section:
    years = f"{params.long_days:,} days"
    rows = []
    for page in _pages():
        rows.append(Row(GOAL, f"{page.name}, one month, settled", settle[page.name]["month"]))
        rows.append(_ratio_row(f"{page.name}, {years}, settled", settle[page.name], goal=False))
        quick = []
        for key, samples in operations.items():
            if not key.startswith(page.name + ":"):
                continue
            month = statistics.median(samples["month"])
            if max(month, statistics.median(samples["years"])) < QUICK_SEC:
                quick.append(key.split(": ", 1)[1])
                continue
            rows.append(_ratio_row(f"{key}, {years} (one month: {month:.3f} s)", samples))
        if quick:
            rows.append(
                Row(GOAL, f"{page.name}: {len(quick)} more, each under {QUICK_SEC * 1000:g} ms")
            )
    for name, label in TICKS.items():
        rows.append(Row(GOAL, f"{label}, one month", ticks["month"][name]))
        rows.append(_ratio_row(f"{label}, {years}", {k: ticks[k][name] for k in ticks}))
    sizes_mb = {name: folder_bytes(home) / 2**20 for name, home in homes.items()}
    return Section(
        rows=rows,
        notes=[
            f"Goal {GOAL}: instances of {sizes['month']} and {sizes['years']:,} published days "
            f"(SQLite, the development instance's settings), built in {build_sec['month']:.0f} s "
            f"and {build_sec['years']:.0f} s; {sizes_mb['month']:.1f} MB and "
            f"{sizes_mb['years']:.1f} MB on disk. 'Settled': from navigation (and each click) to "
            "the page's last GraphQL answer, in Chromium; each operation row: the same request "
            "sent again to the webserver alone. An unchanged observation recorded "
            f"{statistics.median(ticks['years']['recorded']):g} event(s).",
        ],
    )
