"""A step process whose run process died leaves at once, instead of working on alone.

Dagster runs each step of a multiprocess run in a child process that reports to the run
process through a queue. When only the run process is killed (out of memory, a stray
``kill``), the step carries on: it publishes every day of its range for a run already marked
failed, then hangs for ever at exit flushing the queue nobody reads, holding its pool slot and
the embedded engine's folder. Here a thread of the step process waits for the run process to
end; when the step is still running then, it lets the day being written finish (each object is
written whole or not at all), removes the step's scratch folders and ends the process. The
watchdog then sees no live process of the run and gives its pool slot back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# How long an orphaned step waits for the day it is writing: an object store that stopped
# answering must not keep it alive until its read timeout.
PUBLISH_GRACE_SEC = 30
LOG_GRACE_SEC = 10
ORPHANED_EXIT_CODE = 70

_publishing = threading.Lock()
# Guards the scratch folders against a folder made while the step is leaving: one made then
# would outlive the process.
_scratch_lock = threading.Lock()
_scratch_folders: set[Path] = set()
_leaving = False
_watching = threading.Lock()
_watched = False


class _Log(Protocol):
    def error(self, msg: str) -> None: ...


def _leave(parent_pid: int | None, log: _Log) -> None:
    global _leaving
    try:
        finished_writing = _publishing.acquire(timeout=PUBLISH_GRACE_SEC)
        with _scratch_lock:
            _leaving = True
            folders = list(_scratch_folders)
        for folder in folders:
            _remove(folder)
        message = (
            f"The run's process (pid {parent_pid}) is gone: this step stops here, "
            + (
                "after the day it was writing."
                if finished_writing
                else f"{PUBLISH_GRACE_SEC} s into a write that did not finish (nothing of it "
                "is published: objects are written whole)."
            )
            + " Days not yet published stay as they were; materialize them again."
        )
        # The log reaches the instance's event log directly; nothing else can be reported now.
        # An instance that does not answer must not keep the process alive.
        writer = threading.Thread(target=_log_quietly, args=(log, message), daemon=True)
        writer.start()
        writer.join(timeout=LOG_GRACE_SEC)
    finally:
        # Not sys.exit: the exit handlers would wait for the queue to the dead run process.
        os._exit(ORPHANED_EXIT_CODE)


def _log_quietly(log: _Log, message: str) -> None:
    with contextlib.suppress(Exception):
        log.error(message)


def _remove(folder: Path) -> None:
    """Out of the way first, then removed: a file the step is still writing lands in the
    renamed folder, not in a new one under the old name."""
    doomed = folder.with_name(f"{folder.name}.removed")
    with contextlib.suppress(OSError):
        folder.rename(doomed)
    for _ in range(2):  # a file created while the first pass ran makes it fail once
        shutil.rmtree(doomed, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_run_process(parent: multiprocessing.process.BaseProcess, log: _Log) -> None:
    parent.join()
    _leave(parent.pid, log)


def stop_with_run_process(log: _Log) -> None:
    """In a step's own process, leave as soon as the run process that started it ends.

    Steps that run in the run's own process (the in-process executor, ``dg.materialize``) have
    nothing to watch: this does nothing for them.
    """
    global _watched
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    with _watching:
        if _watched:
            return
        _watched = True
    threading.Thread(
        target=_wait_for_run_process,
        args=(parent, log),
        name="run-process-watch",
        daemon=True,
    ).start()


@contextlib.contextmanager
def publishing() -> Iterator[None]:
    """Around the write of one day: an orphaned step waits for it before it leaves."""
    with _publishing:
        yield


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed on exit and also when the step leaves orphaned."""
    with _scratch_lock:
        leaving = _leaving
        if not leaving:
            folder = Path(tempfile.mkdtemp(prefix=prefix))
            _scratch_folders.add(folder)
    if leaving:
        # The step is about to end its process: make nothing it would leave behind.
        threading.Event().wait()
    try:
        yield folder
    finally:
        with _scratch_lock:
            _scratch_folders.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)
