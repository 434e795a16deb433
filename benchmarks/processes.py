"""Fresh Python processes for the measurements, and what they report back.

Every measurement that touches the embedded engine or whose memory is measured runs in a worker
process of its own: the engine serves one data folder per process, a process's peak RSS only
grows, and the harness itself must not be what is measured. A worker is::

    python -m benchmarks.processes MODULE:FUNCTION ARGS_JSON RESULT_PATH

It imports MODULE, calls FUNCTION(**ARGS), and writes ``{"result": ..., "peak_rss_bytes": N}``
to RESULT_PATH (not stdout, which Dagster and the engine may write to).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_BIN = Path(sys.executable).parent
# The project's configuration lives in these variables; workers get exactly the ones a goal sets.
PROJECT_PREFIXES = ("AGENT_METRICS_", "CLICKHOUSE_", "S3_", "DAGSTER_", "AWS_")
# The query limits: a value set by the caller is passed on (the range-memory goal reports the
# values in force).
PASSED_THROUGH = (
    "AGENT_METRICS_MAX_DAYS_PER_QUERY",
    "AGENT_METRICS_MAX_CALLS_PER_QUERY",
    "AGENT_METRICS_MAX_ROWS_PER_QUERY",
    "AGENT_METRICS_AGENT_SHARDS",
)


class WorkerError(RuntimeError):
    """A worker process failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class WorkerResult:
    value: Any
    peak_rss_bytes: int


def project_env(**variables: str) -> dict[str, str]:
    """This process's environment without the project's variables, plus ``variables``.

    The venv's bin folder comes first on PATH, for ``dagster`` and ``moto_server``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(PROJECT_PREFIXES) or key in PASSED_THROUGH
    }
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(variables)
    return env


PROJECT_MODULE = "agent_metrics_pipeline.definitions"


def materialize_with_cli(
    env: Mapping[str, str],
    folder: Path,
    partitions: list[str],
    timeout_sec: float,
    module: str = PROJECT_MODULE,
    asset: str = "agent_metrics",
) -> float:
    """Seconds for ``dagster asset materialize`` of ``asset`` over ``partitions`` (its
    ``--partition`` or ``--partition-range`` arguments), a fresh process timed whole."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            str(PYTHON_BIN / "dagster"),
            *("asset", "materialize", "-m", module, "--select", asset, *partitions),
        ],
        cwd=folder,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_sec,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"dagster asset materialize {asset} {' '.join(partitions)} failed:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    return seconds


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM, the high-water mark of its own memory.

    Not ru_maxrss: Linux carries it across exec, so a worker started by a big parent would
    report at least the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def spawn_worker(
    target: str, args: Mapping[str, Any], env: Mapping[str, str], result_path: Path, **popen: Any
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.processes", target, json.dumps(args), str(result_path)],
        cwd=REPO_ROOT,
        env=dict(env),
        text=True,
        **popen,
    )


def finish_worker(
    process: subprocess.Popen[str], target: str, result_path: Path, timeout: float
) -> dict[str, Any]:
    """Wait for a worker; its result, or a WorkerError with the tail of its output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise WorkerError(f"{target} ran past {timeout:.0f} s:\n{(output or '')[-3000:]}") from None
    if process.returncode != 0 or not result_path.exists():
        raise WorkerError(
            f"{target} failed with exit code {process.returncode}:\n{(output or '')[-3000:]}"
        )
    return json.loads(result_path.read_text())


def run_worker(
    target: str, args: Mapping[str, Any], env: Mapping[str, str], timeout: float = 900
) -> WorkerResult:
    """Run ``MODULE:FUNCTION(**args)`` in a fresh process with ``env``; wait for its result."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        result_path = Path(folder) / "result.json"
        process = spawn_worker(
            target, args, env, result_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        payload = finish_worker(process, target, result_path, timeout)
    return WorkerResult(payload["result"], payload["peak_rss_bytes"])


def _main(target: str, args_json: str, result_path: str) -> None:
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**json.loads(args_json))
    payload = {"result": result, "peak_rss_bytes": peak_rss_bytes()}
    Path(result_path).write_text(json.dumps(payload))


if __name__ == "__main__":
    _main(*sys.argv[1:])
