"""Builds the image and runs a day through it, as a deployment would (`make image-test`).

1. A base image: Debian bookworm with Python 3.11 from debootstrap, standing in for
   ``python:3.11-slim`` where no container registry is reachable; kept between runs.
2. The project's image on it, from the Dockerfile, with this machine's package index (and its
   CA bundle, as a build secret) passed in: read from the pip and uv settings at run time.
3. On loopback: a ClickHouse server (the tests' HTTP stand-in), moto's S3 server and PostgreSQL
   for the instance; one day of calls seeded.
4. From the image, on the host's network: the code location's gRPC server, the daemon and the
   webserver, with deploy/dagster.yaml and deploy/workspace.yaml as the image holds them.
5. The day materialized through the webserver's GraphQL API (a backfill the daemon launches).
6. The published object compared, byte for byte, with an embedded run of the same day here.

Needs root, podman, runc and debootstrap (installed with apt-get when missing) and the network
to the package index. Every phase prints its time.
"""

from __future__ import annotations

import configparser
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

import requests

from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    REPO_ROOT,
    S3_TEST_CREDENTIALS,
    S3_TEST_REGION,
    STAND_IN_USERS,
    S3Server,
    backfill_to_its_end,
    calls_to_parquet,
    free_port,
    graphql,
    key_for,
    load_into_engine,
    postgres_server,
    random_calls,
    run_ok,
    subprocess_env,
)
from clickhouse_stand_in import start_server as start_clickhouse_server

BASE_IMAGE = "localhost/agent-metrics-base:bookworm-python3.11"
IMAGE = "localhost/agent-metrics-pipeline:image-test"
DEFAULT_PACKAGE_INDEX = "https://pypi.org/simple"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# This machine's container runtime needs runc and these limits; the default ones fail here.
PODMAN = ("podman", "--runtime", "runc")
LIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
DAY = dt.date(2026, 11, 20)
CALLS_PER_DAY = 5_000
BUCKET = "agent-metrics-image-test"
# The image's runtime user, which owns the step logs the containers share.
IMAGE_UID = 10001
STARTUP_TIMEOUT_SEC = 180
RUN_TIMEOUT_SEC = 300


class Phases:
    """Times each phase and prints it as it ends, and all of them at the end."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"-- {name} ...", flush=True)
        started = time.monotonic()
        yield
        self.times.append((name, time.monotonic() - started))
        print(f"-- {name}: {self.times[-1][1]:.1f} s", flush=True)

    def summary(self) -> str:
        width = max(len(name) for name, _ in self.times)
        lines = [f"{name:<{width}}  {seconds:7.1f} s" for name, seconds in self.times]
        lines.append(f"{'total':<{width}}  {sum(s for _, s in self.times):7.1f} s")
        return "\n".join(lines)


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """A command whose failure stops the script with its output."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:6])} ... failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def require_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"Missing {', '.join(missing)}: apt-get install podman runc debootstrap")
    run("apt-get", "update", "-qq")
    run("apt-get", "install", "-y", "-qq", "podman", "runc", "debootstrap",
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip


# -- what this machine installs from ------------------------------------------------------------


def pip_setting(name: str) -> str | None:
    """A pip setting from the environment or pip's configuration files, as pip reads them."""
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if value:
        return value
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", f"global.{name}"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


def package_index() -> str:
    """The index this machine installs from: uv's settings first, then pip's."""
    for variable in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if os.environ.get(variable):
            return os.environ[variable]
    return pip_setting("index-url") or DEFAULT_PACKAGE_INDEX


def ca_bundle() -> Path | None:
    """The CA bundle this machine trusts for the index (a TLS-inspecting proxy's, say)."""
    candidates = [os.environ.get("SSL_CERT_FILE"), pip_setting("cert")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def debian_mirror() -> str:
    """The Debian mirror apt uses here, from its deb822 or one-line sources."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        parser = configparser.ConfigParser()
        parser.read_string("[s]\n" + sources.read_text().split("\n\n")[0])
        uris = parser.get("s", "URIs", fallback="").split()
        if uris:
            return uris[0]
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "bookworm" in parts:
                return next(part for part in parts[1:] if "://" in part)
    return DEFAULT_DEBIAN_MIRROR


# -- images -------------------------------------------------------------------------------------


def image_exists(name: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", name]).returncode == 0


def build_base_image(workdir: Path) -> None:
    """Debian bookworm (whose Python is 3.11) with venv and CA certificates, as a local image."""
    rootfs = workdir / "rootfs"
    run(
        "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
        "bookworm", str(rootfs), debian_mirror(),
    )  # fmt: skip
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--exclude=./var/cache/apt/archives/*.deb", "-c", "."],
        stdout=subprocess.PIPE,
    )
    run(*PODMAN, "import", "--change", 'CMD ["python3"]', "-", BASE_IMAGE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs)


def build_image() -> None:
    index = package_index()
    command = [*PODMAN, "build", "--network", "host", *LIMITS, "--tag", IMAGE]
    command += ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    command += ["--build-arg", f"PACKAGE_INDEX_URL={index}"]
    bundle = ca_bundle()
    if bundle is not None:
        command += ["--secret", f"id=index-ca,src={bundle}"]
    host = urllib.parse.urlsplit(index).hostname
    print(f"   package index: {host}; CA bundle: {bundle or 'the image’s own'}", flush=True)
    run(*command, str(REPO_ROOT))


def image_size(name: str) -> str:
    return run(*PODMAN, "image", "inspect", "--format", "{{.Size}}", name).stdout.strip()


# -- services on loopback -----------------------------------------------------------------------


@contextmanager
def moto_s3(workdir: Path) -> Iterator[S3Server]:
    port = free_port()
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    with (workdir / "moto.log").open("w") as log:
        process = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: answers(f"{server.endpoint_url}/moto-api/"), "moto_server")
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def clickhouse_server(data: Path, workdir: Path) -> Iterator[dict[str, str]]:
    """The stand-in over ``data``, read as the read-only user with a password."""
    server = start_clickhouse_server(data, STAND_IN_USERS, workdir / "clickhouse.log")
    try:
        yield {
            "CLICKHOUSE_HOST": server.host,
            "CLICKHOUSE_PORT": str(server.port),
            "CLICKHOUSE_USER": READER,
            "CLICKHOUSE_PASSWORD": READER_PASSWORD,
        }
    finally:
        server.stop()


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


def wait_for(ready, what: str, timeout: float = STARTUP_TIMEOUT_SEC) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} was not up after {timeout:.0f} s")
        time.sleep(0.5)


# -- the deployment, from the image -------------------------------------------------------------


@contextmanager
def containers(env: dict[str, str], workdir: Path) -> Iterator[str]:
    """Code location, daemon and webserver from the image; yields the GraphQL URL."""
    env_file = workdir / "deployment.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    # The step logs, shared as a volume would share them, so the UI shows what runs wrote.
    storage = workdir / "dagster-storage"
    storage.mkdir()
    os.chown(storage, IMAGE_UID, IMAGE_UID)
    webserver_port = free_port()
    suffix = uuid.uuid4().hex[:8]
    services = {
        f"agent-metrics-code-{suffix}": [
            "dagster", "code-server", "start", "-m", "agent_metrics_pipeline.definitions",
            "-h", "127.0.0.1", "-p", env["DAGSTER_CODE_LOCATION_PORT"],
        ],
        f"agent-metrics-daemon-{suffix}": ["dagster-daemon", "run", "-w", "workspace.yaml"],
        f"agent-metrics-webserver-{suffix}": [
            "dagster-webserver", "-h", "127.0.0.1", "-p", str(webserver_port),
            "-w", "workspace.yaml",
        ],
    }  # fmt: skip
    started: list[str] = []
    try:
        for name, command in services.items():
            run(
                *PODMAN, "run", "--detach", "--name", name, "--network", "host", *LIMITS,
                "--env-file", str(env_file),
                "--volume", f"{storage}:/opt/dagster/dagster_home/storage",
                IMAGE, *command,
            )  # fmt: skip
            started.append(name)
            if command[1] == "code-server":
                # As compose's health check does: the webserver loads a location that is up.
                port = env["DAGSTER_CODE_LOCATION_PORT"]
                wait_for(partial(grpc_healthy, name, port), "the code location's gRPC server")
        url = f"http://127.0.0.1:{webserver_port}/graphql"
        wait_for(lambda: location_loaded(url), "the webserver with the code location loaded")
        yield url
    except BaseException:
        for name in started:
            logs = subprocess.run([*PODMAN, "logs", "--tail", "40", name], capture_output=True)
            print(f"--- {name}:\n{logs.stdout.decode()}{logs.stderr.decode()}", file=sys.stderr)
        raise
    finally:
        for name in started:
            subprocess.run([*PODMAN, "rm", "--force", "--time", "20", name], capture_output=True)


def grpc_healthy(container: str, port: str) -> bool:
    check = [*PODMAN, "exec", container, "dagster", "api", "grpc-health-check", "-p", port]
    return subprocess.run(check, capture_output=True).returncode == 0


LOCATION_STATUS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""


def location_loaded(url: str) -> bool:
    try:
        entries = graphql(url, LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
    except (requests.ConnectionError, requests.HTTPError):
        return False
    for entry in entries:
        location = entry["locationOrLoadError"] or {}
        if location.get("__typename") == "PythonError":
            raise SystemExit(f"The code location failed to load: {location['message']}")
    return any(entry["loadStatus"] == "LOADED" for entry in entries)


def materialize_day(url: str) -> list[dict]:
    try:
        status, runs = backfill_to_its_end(url, [DAY], RUN_TIMEOUT_SEC)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    if not all(run["status"] == "SUCCESS" for run in runs):
        raise SystemExit(f"The day's run did not succeed: backfill {status}, runs {runs}")
    return runs


def embedded_run(home: Path, workdir: Path) -> bytes:
    """The same day on the embedded engine under ``home``, in this environment, through the
    definitions."""
    (workdir / "embedded-dagster-home").mkdir()
    run_ok(
        [
            str(Path(sys.executable).parent / "dagster"),
            *("asset", "materialize", "-m", "agent_metrics_pipeline.definitions"),
            *("--select", "agent_metrics", "--partition", str(DAY)),
        ],
        env=subprocess_env(home, workdir / "embedded-dagster-home"),
    )
    return (home / "output" / key_for(DAY)).read_bytes()


def main() -> None:
    phases = Phases()
    require_tools()
    with (
        tempfile.TemporaryDirectory(prefix="agent-metrics-image-test-") as folder,
        ExitStack() as stack,
    ):
        workdir = Path(folder)
        os.chmod(workdir, 0o755)  # PostgreSQL runs as another user below it
        with phases.phase("base image (debootstrap; kept between runs)"):
            if image_exists(BASE_IMAGE):
                print(f"   {BASE_IMAGE} exists: kept")
            else:
                build_base_image(workdir)
        with phases.phase("project image"):
            build_image()
            print(f"   {IMAGE}: {int(image_size(IMAGE)) / 1e6:.0f} MB")
        with phases.phase("services on loopback and a day of calls"):
            embedded_home = workdir / "embedded-home"
            calls_to_parquet(
                random_calls(DAY, days=1, calls_per_day=CALLS_PER_DAY), workdir / "calls.parquet"
            )
            # One engine folder for the server, one for the embedded run: a copied folder would
            # keep links into the other.
            for engine in (workdir / "served-engine", embedded_home / "clickhouse"):
                load_into_engine(engine, workdir / "calls.parquet")
            env = stack.enter_context(clickhouse_server(workdir / "served-engine", workdir))
            s3 = stack.enter_context(moto_s3(workdir))
            env |= stack.enter_context(postgres_server(workdir / "postgres"))
            env |= {
                "S3_BUCKET": BUCKET,
                "S3_ENDPOINT_URL": s3.endpoint_url,
                "AWS_ACCESS_KEY_ID": S3_TEST_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": S3_TEST_CREDENTIALS["aws_secret_access_key"],
                "AWS_REGION": S3_TEST_REGION,
                "DAGSTER_CODE_LOCATION_HOST": "127.0.0.1",
                "DAGSTER_CODE_LOCATION_PORT": str(free_port()),
            }
        with phases.phase("code location, daemon and webserver up"):
            url = stack.enter_context(containers(env, workdir))
        with phases.phase("one day through the webserver and the daemon"):
            (run_info,) = materialize_day(url)
            published = s3.client().get_object(Bucket=BUCKET, Key=key_for(DAY))["Body"].read()
            print(
                f"   run {run_info['runId']}: {len(published)} bytes at s3://{BUCKET}/{key_for(DAY)}"
            )
        with phases.phase("the same day embedded, in this environment"):
            expected = embedded_run(embedded_home, workdir)
        if published != expected:
            raise SystemExit(
                f"The image published {len(published)} bytes, the embedded run {len(expected)}: "
                "they differ"
            )
        print(
            f"The published object is byte-identical to the embedded run ({len(expected)} bytes)."
        )
    print(phases.summary())


if __name__ == "__main__":
    main()
