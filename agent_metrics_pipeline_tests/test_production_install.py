"""A production install: the locked dependencies without the `embedded` extra and without the
development group, in a virtual environment of its own, next to one with the extra.

Without the engine the definitions load and run a day against a ClickHouse server (the HTTP
stand-in); asking for the engine (no CLICKHOUSE_HOST) fails at load, naming the extra and the
alternative. The sizes of both installs are printed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import (
    EMBEDDED_ENGINE_EXTRA,
    Settings,
    require_clickhouse_engine,
)
from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    REPO_ROOT,
    S3_TEST_CREDENTIALS,
    S3_TEST_REGION,
    create_calls_table,
    insert_calls,
    key_for,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

DAY = dt.date(2026, 11, 20)
# What `pip install agent-metrics-pipeline` brings without the extra, and what it leaves out.
EMBEDDED_ENGINE_MIN_BYTES = 400 * 10**6
INSTALL_TIMEOUT_SEC = 600

pytestmark = pytest.mark.e2e


def uv() -> str:
    """uv sets UV for what `uv run` starts; otherwise it must be on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("uv not found: run the tests with `make test` (uv run) or put uv on PATH")
    return found


def install(venv: Path, *options: str) -> Path:
    """The locked environment, as a deployment installs it (the package itself not editable)."""
    subprocess.run(
        [uv(), "sync", "--frozen", "--no-dev", "--no-editable", "--quiet", *options],
        cwd=REPO_ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        check=True,
        timeout=INSTALL_TIMEOUT_SEC,
    )
    return venv / "bin" / "python"


def installed_bytes(venv: Path) -> int:
    """Bytes of the files in ``venv``: a file linked twice inside it counts once."""
    seen: set[int] = set()
    total = 0
    for folder, _, files in os.walk(venv):
        for name in files:
            status = os.lstat(os.path.join(folder, name))
            if status.st_ino not in seen:
                seen.add(status.st_ino)
                total += status.st_size
    return total


@pytest.fixture(scope="module")
def production_python(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("production") / "venv")


def run_in(
    python: Path, args: list[str], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    """One of ``python``'s environment's commands, with only ``env`` of the project's variables."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENT_METRICS_", "CLICKHOUSE_", "S3_", "DAGSTER_", "VIRTUAL_ENV"))
    }
    return subprocess.run(
        [str(python.parent / args[0]), *args[1:]],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def load_definitions(python: Path, env: Mapping[str, str], cwd: Path):
    load = "from agent_metrics_pipeline.definitions import defs; defs()"
    return run_in(python, ["python", "-c", load], env, cwd)


def test_the_engine_is_an_extra_of_half_a_gigabyte(production_python, tmp_path):
    with_engine = install(tmp_path / "venv", "--extra", EMBEDDED_ENGINE_EXTRA)
    without, with_extra = (
        installed_bytes(python.parents[1]) for python in (production_python, with_engine)
    )
    print(
        f"\ninstalled: {without / 1e6:.0f} MB without the engine, "
        f"{with_extra / 1e6:.0f} MB with the '{EMBEDDED_ENGINE_EXTRA}' extra"
    )
    probe = "import importlib.util; print(importlib.util.find_spec('chdb') is not None)"
    found = [
        subprocess.run([str(p), "-c", probe], capture_output=True, text=True).stdout.strip()
        for p in (production_python, with_engine)
    ]
    assert found == ["False", "True"]
    assert with_extra - without > EMBEDDED_ENGINE_MIN_BYTES


def test_asking_for_the_engine_without_it_fails_at_load(production_python, tmp_path):
    result = load_definitions(production_python, {"AGENT_METRICS_HOME": str(tmp_path)}, tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "agent_metrics_pipeline.core.errors.ConfigError: CLICKHOUSE_HOST is unset"
    )
    assert "agent-metrics-pipeline[embedded]" in message
    assert "set CLICKHOUSE_HOST" in message


def test_the_check_passes_when_a_server_is_named_or_the_engine_is_installed(monkeypatch):
    server = Settings(clickhouse_host="clickhouse.internal")
    assert require_clickhouse_engine(server) is server
    embedded = Settings()
    assert require_clickhouse_engine(embedded) is embedded  # this environment has the engine
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert require_clickhouse_engine(server) is server
    with pytest.raises(ConfigError, match=r"CLICKHOUSE_HOST is unset"):
        require_clickhouse_engine(embedded)


def test_a_day_runs_against_a_server_without_the_engine(
    production_python, tmp_path, stand_in, server_clickhouse, bucket
):
    if stand_in is None:
        pytest.skip("runs against the stand-in, whose read-only user it knows")
    source = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(server_clickhouse, source)
    calls = random_calls(DAY, days=1, calls_per_day=500)
    insert_calls(server_clickhouse, source, calls)
    env = {
        "CLICKHOUSE_HOST": stand_in.host,
        "CLICKHOUSE_PORT": str(stand_in.port),
        "CLICKHOUSE_USER": READER,
        "CLICKHOUSE_PASSWORD": READER_PASSWORD,
        "AGENT_METRICS_SOURCE_TABLE": source.table,
        "AGENT_METRICS_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path),
        "S3_BUCKET": bucket.name,
        "S3_ENDPOINT_URL": bucket.server.endpoint_url,
        "AWS_ACCESS_KEY_ID": S3_TEST_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": S3_TEST_CREDENTIALS["aws_secret_access_key"],
        "AWS_REGION": S3_TEST_REGION,
    }
    loaded = load_definitions(production_python, env, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    command = ["dagster", "asset", "materialize", "-m", "agent_metrics_pipeline.definitions"]
    command += ["--select", "agent_metrics", "--partition", str(DAY)]
    result = run_in(production_python, command, env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_csv_matches(bucket.get(key_for(DAY)), expected_metrics(calls)[DAY], DAY)
