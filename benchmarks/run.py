"""Benchmarks of the agent-metrics pipeline, each against a baseline measured in the same run.

    python -m benchmarks.run [--quick] [--only GOAL]... [--markdown PATH]
    python benchmarks/run.py ...

Goals (each row of the table says how it is measured; ``benchmarks/goals/`` has the details):

1. one-day: a day at 10 M calls in process, less Dagster's fixed cost, ≤ 1.2× the bare aggregate.
2. server-memory: over the ClickHouse HTTP stand-in, the client's peak RSS flat (±10%) from 100 k
   to 10 M calls a day; ≥ 3× faster and ≥ 10× less memory above the floor than pulling the calls;
   one HTTP request per query, the client's greeting once per step aside.
3. backfills: 30 days as one run ≥ 10× faster than one run per day, through ``dagster dev`` and
   through the CLI; one step process per one-day run.
4. range-memory: a 30-day range as one run peaks ≤ 1.5× one day, a 365-day range no higher than
   the 30-day one, a day in agent shards no higher than in one query (not in the default run: it
   seeds a year of 300 k agents a day; ``--only range-memory``).
5. imports: loading ``agent_metrics_pipeline.definitions`` ≤ 1.3× ``import dagster``.
6. s3: a day at 5 M calls end to end to S3 ≤ 2× ClickHouse writing the same aggregate to S3.
7. memory-limit: a 40 M-call day read by a user whose profile caps each query at 250 MB
   publishes the same bytes as an unlimited user (not in the default run: ``--only
   memory-limit``).
8. observation: the hourly observation of 30 days × 10 M calls, nothing changed, under a second
   (the baseline: the same observation fingerprinting every day).
9. history: with three years published (1,095 days, each a run with its 11 check evaluations),
   the UI's own GraphQL operations for the asset's Partitions, Checks and Events tabs, a check's
   partitions and the Runs page, one observation and one republish evaluation, each ≤ 1.5× one
   month (not in the default run: it fills the three-year instance for about 6 minutes;
   ``--only history``).
10. capacity: what a published day adds to the instance on SQLite and on PostgreSQL (no
    target: the figures of docs/operating.md, "Capacity").
11. range-export: a 30-day range as one in-process run to S3 ≤ 1.3× ClickHouse's own
    partitioned s3() export of the same rows, at 50 k and at 300 k agents a day.
12. clicks: a one-day run launched as the UI launches it, through ``dagster dev``, ≤ 1.5× the
    same run from the CLI; that CLI run ≤ 1.2× a CLI run of an asset recording as many check
    results.

Plus ``profile``: py-spy over a one-day materialize at 10 M calls.

Everything runs on this machine in a temporary folder, removed at the end: the embedded engine,
moto's S3 server, the HTTP stand-in and ``dagster dev`` on loopback. Nothing is compared with
figures from elsewhere. On two cores the default run takes about 25 minutes, more than half of it
the backfills through ``dagster dev``; ``--only range-memory`` about 25 more, ``--only history``
about 15. ``--quick`` runs
every goal small, as a smoke test of the harness (its figures mean little), in about 4 minutes:
each backfill waits for the Dagster daemon's 30-second backfill tick.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is not on the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import machine
from benchmarks.context import Context
from benchmarks.report import Row, Section, markdown_table, text_table

# Name → (goal number, module), in the order of a full run: the profile reuses the one-day
# goal's rows.
GOALS = {
    "imports": ("5", "benchmarks.goals.imports"),
    "one-day": ("1", "benchmarks.goals.one_day"),
    "s3": ("6", "benchmarks.goals.s3_export"),
    "profile": ("–", "benchmarks.goals.hot_path"),
    "server-memory": ("2", "benchmarks.goals.server_memory"),
    "backfills": ("3", "benchmarks.goals.backfills"),
    "range-memory": ("4", "benchmarks.goals.range_memory"),
    "memory-limit": ("7", "benchmarks.goals.memory_limit"),
    "observation": ("8", "benchmarks.goals.observation"),
    "history": ("9", "benchmarks.goals.history"),
    "capacity": ("10", "benchmarks.goals.capacity"),
    "range-export": ("11", "benchmarks.goals.range_export"),
    "clicks": ("12", "benchmarks.goals.clicks"),
}
NOT_IN_DEFAULT_RUN = {"range-memory", "memory-limit", "history"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every goal small: a smoke test")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(GOALS),
        metavar="GOAL",
        help=f"run this goal only (repeatable): {', '.join(GOALS)}",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write the results as Markdown here"
    )
    args = parser.parse_args(argv)
    names = [name for name in GOALS if name in (args.only or set(GOALS) - NOT_IN_DEFAULT_RUN)]

    started = time.perf_counter()
    rows: list[Row] = []
    notes: list[str] = []
    runtimes: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="agent-metrics-bench-") as folder:
        _cache_bytecode(Path(folder))
        context = Context(Path(folder), quick=args.quick)
        for name in names:
            _progress(started, f"{name} ...")
            goal_started = time.perf_counter()
            try:
                section = importlib.import_module(GOALS[name][1]).measure(context)
            except Exception as error:  # one goal failing must not lose the others' figures
                failed = True
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                section = Section(
                    rows=[Row(GOALS[name][0], f"{name}: could not run", met=False)],
                    notes=[f"{name} failed: {type(error).__name__}: {error}"],
                )
                _progress(started, f"{name} failed: {first_line}")
            rows += section.rows
            notes += section.notes
            runtimes.append(f"{name} {time.perf_counter() - goal_started:.0f} s")
    total = time.perf_counter() - started
    runtimes.append(f"total {total / 60:.1f} min")

    size = "quick smoke run" if args.quick else "full-size run"
    scope = f" of {', '.join(names)}" if args.only else ""
    title = (
        f"agent-metrics-pipeline benchmarks, {size}{scope}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )
    facts = machine.describe()
    print("\n".join([title, *facts, "", text_table(rows), "", *notes, "", _runtime(runtimes)]))
    if args.markdown:
        args.markdown.write_text(_markdown(title, facts, rows, notes, runtimes))
        print(f"Markdown written to {args.markdown}")
    return 1 if failed else 0


def _cache_bytecode(folder: Path) -> None:
    """Let every process of the run share one bytecode cache in the run's folder.

    A machine may set PYTHONDONTWRITEBYTECODE, and uv installs no bytecode unless asked to: each
    fresh process (a worker, a Dagster run, a CLI call) would then compile Dagster from source,
    seconds apiece that an installed deployment does not pay. The imports goal also measures
    that case on its own.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")


def _progress(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)


def _runtime(runtimes: list[str]) -> str:
    return "Runtime: " + ", ".join(runtimes)


def _markdown(
    title: str, facts: list[str], rows: list[Row], notes: list[str], runtimes: list[str]
) -> str:
    lines = [f"_{title}_", "", *(f"- {fact}" for fact in facts), "", markdown_table(rows), ""]
    lines += [f"  - {note.strip()}" if note.startswith("  ") else f"- {note}" for note in notes]
    return "\n".join([*lines, "", _runtime(runtimes), ""])


if __name__ == "__main__":
    sys.exit(main())
