"""Goal 5: importing the definitions takes at most 1.3× importing Dagster itself.

Each import runs in a fresh interpreter and times itself (interpreter start-up is left out of
both), with a valid embedded configuration in a temporary AGENT_METRICS_HOME. The goal is judged
with bytecode cached, as in an installed environment: one import of each is run first and
dropped, so that neither side pays for writing the cache; the measured ones alternate.

Without a bytecode cache (PYTHONDONTWRITEBYTECODE and an empty cache folder, as in an image
built by ``uv sync`` without ``--compile-bytecode`` on a machine that sets that variable), every
process compiles everything it imports; that case is shown too, for information.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass

from benchmarks.context import Context
from benchmarks.processes import REPO_ROOT, project_env
from benchmarks.report import Row, Section

GOAL = "5"
TARGET = 1.3
# The definitions are built when Dagster loads them, not at import: both are timed, as every
# run process, the code server and the daemon do both.
MODULES = {
    "dagster": "import dagster",
    "definitions": "from agent_metrics_pipeline.definitions import defs; defs()",
}
TIMED_IMPORT = (
    "import time; started = time.perf_counter(); {statement}; print(time.perf_counter() - started)"
)


@dataclass(frozen=True)
class Params:
    repeats: int
    uncached_repeats: int


FULL = Params(repeats=5, uncached_repeats=2)
QUICK = Params(repeats=2, uncached_repeats=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    env = project_env(AGENT_METRICS_HOME=str(context.subfolder("imports-home")))
    uncached_env = {
        **env,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPYCACHEPREFIX": str(context.subfolder("imports-no-bytecode")),
    }
    cached = _alternating(env, params.repeats, drop_first=True)
    uncached = _alternating(uncached_env, params.uncached_repeats, drop_first=False)
    ratio = statistics.median(cached["definitions"]) / statistics.median(cached["dagster"])
    uncached_ratio = statistics.median(uncached["definitions"]) / statistics.median(
        uncached["dagster"]
    )
    return Section(
        rows=[
            Row(GOAL, "import dagster (fresh interpreter)", cached["dagster"]),
            Row(
                GOAL,
                "import and load agent_metrics_pipeline.definitions",
                cached["definitions"],
                ratio=ratio,
                target=f"≤ {TARGET}×",
                met=ratio <= TARGET,
            ),
            Row(GOAL, "import dagster, no bytecode cache", uncached["dagster"]),
            Row(
                GOAL,
                "import and load definitions, no bytecode cache",
                uncached["definitions"],
                ratio=uncached_ratio,
            ),
        ],
        notes=[
            f"Goal {GOAL}: fresh interpreters, the two imports alternating; with bytecode cached "
            "after one dropped import of each; without, every import compiles from source."
        ],
    )


def _alternating(env: dict[str, str], repeats: int, drop_first: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in MODULES}
    for repeat in range(repeats + drop_first):
        for name, statement in MODULES.items():
            seconds = _timed_import(statement, env)
            if repeat or not drop_first:
                times[name].append(seconds)
    return times


def _timed_import(statement: str, env: dict[str, str]) -> float:
    result = subprocess.run(
        [sys.executable, "-c", TIMED_IMPORT.format(statement=statement)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{statement!r} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])
