"""An orphaned step leaves no scratch folder behind, whenever its run process died.

The end-to-end kill is in ``test_watchdog``; here the order of the two threads involved is
forced: the leaving thread goes first, the step's own thread then asks for a folder.
"""

from __future__ import annotations

import tempfile
import threading
import types

from agent_metrics_pipeline.core import orphaned_steps


class Log:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: str) -> None:
        self.errors.append(msg)


def test_a_step_leaving_removes_its_folders_and_makes_no_new_one(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # The leaving thread keeps the publishing lock until the process ends: this test's own, so
    # the steps of later tests in this process still publish.
    monkeypatch.setattr(orphaned_steps, "_publishing", threading.Lock())
    monkeypatch.setattr(orphaned_steps, "_scratch_lock", threading.Lock())
    monkeypatch.setattr(orphaned_steps, "_scratch_folders", set())
    monkeypatch.setattr(orphaned_steps, "_leaving", False, raising=False)
    exits: list[int] = []
    # The process must not end here: record the exit the leaving thread asks for instead.
    monkeypatch.setattr(orphaned_steps, "os", types.SimpleNamespace(_exit=exits.append))

    made_before = orphaned_steps.scratch_folder(prefix="before-")
    before = made_before.__enter__()
    log = Log()
    orphaned_steps._leave(parent_pid=12345, log=log)
    assert exits == [orphaned_steps.ORPHANED_EXIT_CODE]
    assert not before.exists(), "a folder made before the run process died is removed"
    assert "this step stops here" in log.errors[0]

    asked = threading.Event()

    def ask_for_a_folder() -> None:
        asked.set()
        with orphaned_steps.scratch_folder(prefix="after-"):
            pass  # never reached: the process ends first

    # A daemon thread: it waits for the exit that ends a real step's process.
    asker = threading.Thread(target=ask_for_a_folder, daemon=True)
    asker.start()
    asked.wait()
    asker.join(timeout=1)
    assert asker.is_alive(), "the step's thread waits for the process to end"
    assert not any(tmp_path.iterdir()), "no folder is made once the step is leaving"
    made_before.__exit__(None, None, None)
