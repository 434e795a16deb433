"""Scratch files are named after the process that made them, and swept once it is gone: a run
killed mid-write leaves nothing behind after the next run. The end-to-end kill is in
``test_watchdog``; here the processes are real, and short-lived."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from agent_metrics_pipeline.core import processes
from agent_metrics_pipeline_tests.helpers import ended_owner_tag, owner_tag_of

PREFIX = "scratch-"


def test_what_a_gone_process_left_is_swept_and_a_live_one_s_kept(tmp_path):
    gone_folder = tmp_path / f"{PREFIX}{ended_owner_tag()}abc"
    gone_folder.mkdir()
    (gone_folder / "2026-11-20.csv").write_bytes(b"staged")
    gone_file = tmp_path / (f"{PREFIX}{ended_owner_tag()}abc" + ".csv")
    gone_file.write_bytes(b"half a day")
    mine = tmp_path / f"{PREFIX}{processes.owner_tag()}xyz"
    mine.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        try:
            tag = owner_tag_of(sleeper.pid)  # PID.START-
            live = tmp_path / f"{PREFIX}{tag}live"
            start = int(tag.removesuffix("-").split(".")[1])
            live.write_bytes(b"still writing")
            # The same pid with another start time is another process: its owner is gone.
            reused = tmp_path / f"{PREFIX}{sleeper.pid}.{start + 1}-reused"
            reused.write_bytes(b"left by an earlier process of that pid")
            others = [tmp_path / "published.csv", tmp_path / f"{PREFIX}not-an-owner"]
            for other in others:
                other.write_bytes(b"not scratch")

            processes.sweep(tmp_path, PREFIX)

            assert not gone_folder.exists() and not gone_file.exists() and not reused.exists()
            assert mine.exists() and live.exists()
            assert all(other.exists() for other in others)
        finally:
            sleeper.kill()


def test_a_scratch_folder_is_named_after_its_process_and_removed_on_exit(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / f"{PREFIX}{ended_owner_tag()}abc"
    left.mkdir()
    with processes.scratch_folder(PREFIX) as folder:
        assert folder.name.startswith(f"{PREFIX}{os.getpid()}.")
        assert not left.exists(), "what a gone process left is swept first"
    assert not folder.exists()


def test_a_process_s_start_is_when_ps_says_it_started():
    elapsed = subprocess.run(
        ["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
    )
    started = processes.started_at(os.getpid())
    assert started is not None
    # ps counts whole seconds since the start, read a moment later.
    assert abs(started - (time.time() - int(elapsed.stdout))) < 2
    assert processes.started_at(2**22 + 1) is None  # above the kernel's pid limit
