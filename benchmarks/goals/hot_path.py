"""Profile: where one day's materialize at 10 M calls spends its time.

A worker on the embedded engine seeds the day (or finds it seeded), warms up with one
materialize, then waits while py-spy attaches to it, and materializes the day again a few
times. py-spy samples every thread, idle ones included (a thread waiting for the engine inside a
query is the query's time), without pausing the process: pausing it at every sample made the
runs half again as long and doubled Dagster's apparent share, out of line with the timings of
the one-day goal. Only the main thread's samples inside those materializes are kept
(the worker's ``profiled_runs`` frame), then:

- top self-time frames: the innermost Python frame of each sample (where a C extension runs, the
  Python function that called it);
- shares by phase: the innermost frame of the package's own hot path that a sample is under
  (query, Arrow to Polars, shaping, checks, CSV write), and Dagster for the rest.

py-spy comes with the development dependencies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks import pipeline
from benchmarks.context import Context
from benchmarks.processes import REPO_ROOT, finish_worker, spawn_worker
from benchmarks.report import Section
from benchmarks.seeding import FIRST_DAY, seed_calls, table_for

SAMPLES_PER_SEC = 100
ATTACH_SEC = 2.0
TOP_FRAMES = 12
MARKER = "profiled_runs"
LIBRARY_ROOT = re.compile(r"^.*/lib/python3\.\d+/(site-packages/)?")
# (phase, file, functions): a sample belongs to the innermost listed frame it is under.
PHASES = (
    ("ClickHouse query", "clickhouse/session.py", {"query_polars"}),
    ("ClickHouse client open and close", "clickhouse/resource.py", {"get_client"}),
    ("Arrow → Polars", "clickhouse/session.py", {"_binary_as_text"}),
    ("Arrow → Polars", "convert/general.py", {"from_arrow"}),
    ("shaping the frame", "aggregate/metrics.py", {"shape_metrics"}),
    ("checks", "quality/checks.py", None),
    ("checks", "quality/source_checks.py", None),
    ("checks", "quality/findings.py", None),
    ("CSV write (IO manager)", "storage/io_manager.py", {"handle_output"}),
    ("asset body, other (SQL, metadata)", "publish/reading.py", None),
    ("asset body, other (SQL, metadata)", "publish/asset.py", None),
)
DAGSTER = "Dagster (run, events, instance)"


@dataclass(frozen=True)
class Params:
    calls_per_day: int
    agents: int
    runs: int


FULL = Params(calls_per_day=10_000_000, agents=2000, runs=3)
QUICK = Params(calls_per_day=1_000_000, agents=2000, runs=1)


def measure(context: Context) -> Section:
    params = QUICK if context.quick else FULL
    folder = context.subfolder("profile")
    seconds, raw = _record(context, params, folder)
    stacks = _main_thread_stacks(raw)
    total = sum(stacks.values())
    if not total:
        raise RuntimeError(f"py-spy recorded no sample inside {MARKER}:\n{_tail(folder)}")
    calls = f"{params.calls_per_day / 1e6:g} M calls"
    notes = [
        f"Profile: one-day materialize at {calls}, {params.runs} run(s) of "
        f"{', '.join(f'{s:.2f} s' for s in seconds)} after a warm-up; py-spy at "
        f"{SAMPLES_PER_SEC} Hz, {total} main-thread samples.",
        "Profile, share by phase:",
    ]
    for phase, count in _by_phase(stacks).most_common():
        notes.append(f"  {100 * count / total:5.1f}%  {phase}")
    notes.append("Profile, top self-time frames:")
    for frame, count in _self_time(stacks).most_common(TOP_FRAMES):
        notes.append(f"  {100 * count / total:5.1f}%  {frame}")
    return Section(notes=notes)


def _record(context: Context, params: Params, folder: Path) -> tuple[list[float], Path]:
    """Run the profiled worker under py-spy; the seconds of its runs and py-spy's raw output."""
    py_spy = _py_spy()
    raw = folder / "profile.txt"
    result_path = folder / "result.json"
    target = "benchmarks.goals.hot_path:profiled"
    args = {"calls_per_day": params.calls_per_day, "agents": params.agents, "runs": params.runs}
    source = table_for(params.calls_per_day, agents=params.agents)
    with (folder / "worker.log").open("w") as log:
        worker = spawn_worker(
            target,
            args,
            context.embedded_env(source),
            result_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert worker.stdin is not None and worker.stdout is not None
        if not any(line.strip() == "ready" for line in worker.stdout):
            worker.wait()
            raise RuntimeError(f"the profiled worker exited before it was ready:\n{_tail(folder)}")
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(worker.pid), "--rate", str(SAMPLES_PER_SEC)]
            + ["--idle", "--threads", "--nonblocking", "--format", "raw", "--output", str(raw)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(ATTACH_SEC)
        worker.stdin.write("go\n")
        worker.stdin.flush()
        seconds = finish_worker(worker, target, result_path, timeout=900)["result"]["seconds"]
        if spy.wait(timeout=120) != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed:\n{_tail(folder)}")
    return seconds, raw


def _tail(folder: Path) -> str:
    return "\n".join((folder / "worker.log").read_text(errors="replace").splitlines()[-30:])


def profiled(calls_per_day: int, agents: int, runs: int) -> dict:
    defs = pipeline.definitions()
    seed_calls(pipeline.clickhouse_of(defs), calls_per_day, agents=agents)
    pipeline.materialize(defs, FIRST_DAY)  # warm-up, not profiled
    print("ready", flush=True)
    sys.stdin.readline()
    return {"seconds": profiled_runs(defs, runs)}


def profiled_runs(defs, runs: int) -> list[float]:
    """The frame that marks the samples to keep."""
    return [pipeline.materialize(defs, FIRST_DAY) for _ in range(runs)]


def _py_spy() -> str:
    """py-spy from the locked environment (a development dependency), else from PATH."""
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("py-spy is missing: `uv sync` installs it with the development group")


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return stack.split(";"), int(count)


def _main_thread_stacks(raw: Path) -> Counter[tuple[str, ...]]:
    """Stacks (outermost first, from just inside the marker) with their sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text().splitlines():
        frames, count = _frames(line)
        marked = [i for i, frame in enumerate(frames) if frame.startswith(f"{MARKER} (")]
        if marked:
            stacks[tuple(frames[marked[0] + 1 :])] += count
    return stacks


def _function_and_file(frame: str) -> tuple[str, str]:
    """py-spy frames read ``Class.function (path/to/file.py:line)``."""
    function, _, where = frame.partition(" (")
    return function, where.rsplit(":", 1)[0]


def _by_phase(stacks: Counter[tuple[str, ...]]) -> Counter[str]:
    phases: Counter[str] = Counter()
    for stack, count in stacks.items():
        phase = DAGSTER
        for frame in stack:
            function, path = _function_and_file(frame)
            bare_name = function.rsplit(".", 1)[-1]
            for name, file, functions in PHASES:
                if path.endswith(file) and (functions is None or bare_name in functions):
                    phase = name
        phases[phase] += count
    return phases


def _self_time(stacks: Counter[tuple[str, ...]]) -> Counter[str]:
    frames: Counter[str] = Counter()
    for stack, count in stacks.items():
        function, path = _function_and_file(stack[-1]) if stack else (MARKER, "")
        frames[f"{function} ({_short(path)})"] += count
    return frames


def _short(path: str) -> str:
    """Paths from the package root: .../site-packages/dagster/x.py → dagster/x.py."""
    return LIBRARY_ROOT.sub("", path).removeprefix(f"{REPO_ROOT}/")
