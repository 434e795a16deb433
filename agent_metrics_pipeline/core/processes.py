"""Processes of this machine: whether one still runs, and the scratch files named after the
process that made them.

A run's process can be killed at any point (SIGKILL, out of memory, a closed terminal), and
nothing of it cleans up then: its staging folder, or a file it was writing, stays behind. So
each is named after its process (pid and start time, which tell a reused pid apart), and the
next run sweeps away those whose process no longer runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")
# ``{prefix}{pid}.{start}-{random}``: the start is the process's, in clock ticks since boot.
OWNER = re.compile(r"(?P<pid>\d+)\.(?P<start>\d+)-")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, if the process runs."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _boot_time() -> float:
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("/proc/stat has no btime")


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it does not run.
    Raises PermissionError where /proc hides other users' processes (``hidepid``)."""
    ticks = _start_ticks(pid)
    return None if ticks is None else _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def owner_tag() -> str:
    """This process, as scratch names carry it."""
    return _owner_tag(os.getpid())


@functools.cache
def _owner_tag(pid: int) -> str:
    return f"{pid}.{_start_ticks(pid) or 0}-"


def owner_is_gone(name: str, prefix: str) -> bool:
    """Whether ``name`` is a scratch name under ``prefix`` whose process no longer runs (a
    process of the same pid started since is another)."""
    if not name.startswith(prefix):
        return False
    owner = OWNER.match(name, len(prefix))
    if owner is None:
        return False
    try:
        return _start_ticks(int(owner["pid"])) != int(owner["start"])
    except PermissionError:
        return False  # another user's process, hidden by /proc's hidepid: it may well run


def sweep(folder: Path, prefix: str) -> None:
    """Remove what processes now gone left in ``folder`` under ``prefix``."""
    if not PROC.is_dir():
        return  # no way to tell a live owner from a dead one: leave everything
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in folder.iterdir():
            if owner_is_gone(entry.name, prefix):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder named after this process, removed on exit; those of processes now
    gone are removed first."""
    sweep(Path(tempfile.gettempdir()), prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}") as folder:
        yield Path(folder)
