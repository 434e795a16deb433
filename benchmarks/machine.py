"""The machine a run measured on, printed with its table: figures mean little without it."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("dagster", "clickhouse-connect", "chdb", "polars", "pyarrow")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _engine_version() -> str:
    # The version the embedded engine reports; the HTTP stand-in serves the same engine.
    import chdb

    return str(chdb.engine_version)


def describe() -> list[str]:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES)
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} cores; RAM {_memory_gib()}",
        f"Python {platform.python_version()} ({sys.implementation.name}), {platform.platform()}",
        f"ClickHouse engine {_engine_version()} (chdb, embedded; also behind the HTTP stand-in)",
        f"Packages: {versions}",
    ]
