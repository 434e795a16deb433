"""A bad setting stops every way in before anything starts, with one line naming the variable
and its fix: the demo, the UI (`make dev`), the CLI, and the UI's own load error."""

from __future__ import annotations

import shutil
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline_tests.helpers import REPO_ROOT

BAD = {"AGENT_METRICS_TIMEZONE": "Mars/Base"}
LOCATION = "agent_metrics_pipeline"


@pytest.fixture
def expected_line() -> str:
    """The settings' own message for the bad value, computed apart from every way in."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(BAD)
    message = str(raised.value)
    assert "AGENT_METRICS_TIMEZONE" in message and "\n" not in message
    return message


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=REPO_ROOT, env={**env, **BAD}, capture_output=True, text=True, timeout=300
    )


def test_the_demo_stops_with_one_line(project_env, expected_line):
    result = run([sys.executable, "-m", "agent_metrics_pipeline.demo"], project_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Configuration error: {expected_line}"]
    assert not result.stdout.strip()


def test_the_settings_check_make_dev_runs_first_stops_with_one_line(project_env, expected_line):
    result = run([sys.executable, "-m", "agent_metrics_pipeline.core.settings"], project_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"Configuration error: {expected_line}"]


@pytest.mark.e2e
def test_make_dev_stops_before_the_ui_starts(project_env, expected_line):
    # The uv that set up this environment: the project's own .venv leads the tests' PATH.
    uv = shutil.which("uv") or f"{sys._base_executable} -m uv"
    result = run(["make", "--no-print-directory", "dev", "PORT=0", f"UV={uv}"], project_env)
    assert result.returncode != 0
    assert f"Configuration error: {expected_line}" in result.stderr.splitlines()
    assert "The Dagster UI opens" not in result.stdout


@pytest.mark.e2e
def test_the_cli_s_load_error_is_the_line(project_env, expected_line):
    result = run(
        [
            *("dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"),
            *("--select", "agent_metrics", "--partition", "2026-11-20"),
        ],
        project_env,
    )
    assert result.returncode != 0
    assert f"ConfigError: {expected_line}" in result.stderr


@pytest.mark.e2e
def test_the_ui_s_load_error_is_the_line(project_env, expected_line, monkeypatch, tmp_path):
    """The code location the UI lists fails to load with the line as its error's message."""
    for name, value in {**project_env, **BAD}.items():
        monkeypatch.setenv(name, value)
    target = ModuleTarget(
        module_name="agent_metrics_pipeline.definitions",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name=LOCATION,
    )
    with (
        dg.DagsterInstance.local_temp(str(tmp_path)) as instance,
        WorkspaceProcessContext(instance, target) as workspace,
    ):
        error = workspace.create_request_context().get_code_location_error(LOCATION)
    assert error is not None
    messages = [error.message, *(cause.message for cause in [error.cause] if cause)]
    assert any(expected_line in message for message in messages), messages
