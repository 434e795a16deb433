"""Per-day CSV objects: read back as Polars downstream, and S3 faults classified with a fix.

Transient faults (unreachable endpoint, throttling, server trouble) are retried; permanent ones
(missing bucket, rejected credentials, unknown profile) name what to change.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import dagster as dg
import polars as pl
import pytest
from dagster_aws.s3 import S3Resource

from agent_metrics_pipeline.core.names import CSV_IO_MANAGER_KEY
from agent_metrics_pipeline.core.partitions import days_of
from agent_metrics_pipeline.storage.io_manager import ObjectStoreError, ObjectStoreUnavailableError
from agent_metrics_pipeline.storage.local import LocalCsvIOManager
from agent_metrics_pipeline.storage.published_format import metrics_schema
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager, TimedS3Resource
from agent_metrics_pipeline_tests.helpers import (
    S3_TEST_REGION,
    build_asset,
    ended_owner_tag,
    failure_message,
    free_port,
    insert_calls,
    key_for,
    materialize,
    measuring,
    owner_tag_of,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics

FIRST_DAY = dt.date(2026, 11, 10)
DAYS = [FIRST_DAY + dt.timedelta(days=i) for i in range(3)]
DAY = "2026-11-20"


def test_downstream_asset_reads_one_day_and_a_range(clickhouse, calls_table, bucket):
    calls = random_calls(FIRST_DAY, days=len(DAYS), calls_per_day=150, seed=51)
    insert_calls(clickhouse, calls_table, calls)
    agent_metrics = build_asset(measuring(calls_table))
    received = []

    @dg.asset(
        partitions_def=agent_metrics.partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={"agent_metrics": dg.AssetIn()},
    )
    def busiest_agent(agent_metrics) -> None:
        received.append(agent_metrics)

    resources = {
        "clickhouse": clickhouse,
        CSV_IO_MANAGER_KEY: bucket.io_manager(),
    }
    range_tags = {
        "dagster/asset_partition_range_start": str(DAYS[0]),
        "dagster/asset_partition_range_end": str(DAYS[-1]),
    }
    dg.materialize([agent_metrics], resources=resources, tags=range_tags)

    dg.materialize(
        [agent_metrics, busiest_agent],
        selection=[busiest_agent],
        partition_key=str(DAYS[1]),
        resources=resources,
    )
    dg.materialize(
        [agent_metrics, busiest_agent],
        selection=[busiest_agent],
        resources=resources,
        tags=range_tags,
    )

    one_day, per_day = received
    expected = expected_metrics(calls)

    def check(frame: pl.DataFrame, day: dt.date) -> None:
        assert frame.schema == metrics_schema()
        assert frame.get_column("agent_id").to_list() == [r.agent_id for r in expected[day]]
        assert frame.get_column("total_calls").to_list() == [r.total_calls for r in expected[day]]
        assert set(frame.get_column("date")) == {day}

    assert isinstance(one_day, pl.DataFrame)
    check(one_day, DAYS[1])
    assert sorted(per_day) == [str(day) for day in DAYS]
    for day in DAYS:
        check(per_day[str(day)], day)


def test_missing_bucket_says_to_create_it(clickhouse, calls_table, s3_server):
    insert_calls(clickhouse, calls_table, random_calls(dt.date(2026, 11, 20), 1, 50))
    output = S3CsvIOManager(s3=s3_server.resource(), bucket="no-such-bucket-here")
    result = materialize(clickhouse, measuring(calls_table), output, DAY, raise_on_error=False)
    message = failure_message(result)
    assert "'no-such-bucket-here'" in message and "does not exist" in message
    assert "S3_BUCKET" in message


def test_unreachable_s3_endpoint_fails_fast(clickhouse, calls_table, s3_server):
    insert_calls(clickhouse, calls_table, random_calls(dt.date(2026, 11, 20), 1, 50))
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    output = S3CsvIOManager(
        s3=s3_server.resource(endpoint_url=dead_endpoint, max_attempts=0), bucket="any"
    )
    started = time.monotonic()
    with pytest.raises(ObjectStoreUnavailableError, match="S3_ENDPOINT_URL"):
        output._write("k", b"x")
    assert time.monotonic() - started < 10


ALLOW_ALL = {"Effect": "Allow", "Action": "*", "Resource": "*"}


@dataclass
class GuardedBucket:
    """A bucket on an S3 server that checks access keys and the writer's IAM policy."""

    endpoint: str
    key_id: str
    secret: str
    name: str = "guarded"

    def _iam(self):
        return boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=S3_TEST_REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def allow(self, *statements: dict) -> None:
        document = {"Version": "2012-10-17", "Statement": [ALLOW_ALL, *statements]}
        self._iam().put_user_policy(
            UserName="writer", PolicyName="pipeline", PolicyDocument=json.dumps(document)
        )

    def io_manager(self, secret: str | None = None) -> S3CsvIOManager:
        resource = S3Resource(
            endpoint_url=self.endpoint,
            region_name=S3_TEST_REGION,
            max_attempts=0,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=secret or self.secret,
        )
        return S3CsvIOManager(s3=resource, bucket=self.name)

    def keys(self) -> list[str]:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_TEST_REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )
        response = client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in response.get("Contents", []))


@pytest.fixture
def authenticating_s3() -> Iterator[GuardedBucket]:
    """A second S3 server that checks access keys and IAM policies after its first three
    requests, which create the writer, its policy and its key."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    moto = str(Path(sys.executable).parent / "moto_server")
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=S3_TEST_REGION,
        aws_access_key_id="boot",
        aws_secret_access_key="boot",
    )
    for _ in range(100):
        try:
            iam.create_user(UserName="writer")
            break
        except Exception:
            time.sleep(0.1)
    iam.put_user_policy(
        UserName="writer",
        PolicyName="pipeline",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [ALLOW_ALL]}),
    )
    key = iam.create_access_key(UserName="writer")["AccessKey"]
    guarded = GuardedBucket(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_TEST_REGION,
        aws_access_key_id=guarded.key_id,
        aws_secret_access_key=guarded.secret,
    ).create_bucket(Bucket=guarded.name)
    yield guarded
    process.terminate()
    process.wait(timeout=10)


def test_rejected_s3_credentials_say_which_variables_to_check(authenticating_s3):
    wrong_secret = "wrong-secret-value"
    output = authenticating_s3.io_manager(secret=wrong_secret)
    with pytest.raises(ObjectStoreError) as raised:
        output._write("agent_metrics/x.csv", b"x")
    assert "AWS_ACCESS_KEY_ID" in str(raised.value)
    assert wrong_secret not in str(raised.value)


def test_a_missing_permission_is_named_and_a_partial_range_says_which_days_are_published(
    clickhouse, calls_table, authenticating_s3
):
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(7)]
    first, last = str(days[0]), str(days[-1])
    calls = random_calls(days[0], days=7, calls_per_day=120, seed=61)
    insert_calls(clickhouse, calls_table, calls)
    authenticating_s3.allow(
        {
            "Effect": "Deny",
            "Action": "s3:PutObject",
            # The first day: refused while the next ones are being written and the rest wait.
            "Resource": f"arn:aws:s3:::guarded/agent_metrics/{days[0]}/*",
        }
    )
    output = authenticating_s3.io_manager()

    measurement = measuring(calls_table)
    failed = materialize(clickhouse, measurement, output, first, last, raise_on_error=False)

    message = failure_message(failed)
    assert "lack the permission s3:PutObject" in message
    assert "arn:aws:s3:::guarded/agent_metrics/*" in message
    assert "AWS_ACCESS_KEY_ID" not in message, "the credentials are fine: a permission is missing"
    # Days are written a few at once: those started before the refusal are published too.
    listed = re.search(r"Days published: (.*); not published: (.*)\. Running", message)
    assert listed, message
    published = days_of(listed[1].split(", ")) if listed[1] != "none" else []
    assert days[0] in days_of(listed[2].split(", "))
    assert sorted(published + days_of(listed[2].split(", "))) == days
    assert authenticating_s3.keys() == [key_for(day) for day in published]
    partial = {day: output._read(key_for(day)) for day in published}

    authenticating_s3.allow()
    materialize(clickhouse, measurement, output, first, last)

    assert authenticating_s3.keys() == [key_for(day) for day in days]
    expected = expected_metrics(calls)
    for day in days:
        assert_csv_matches(output._read(key_for(day)), expected[day], day)
    assert {day: output._read(key_for(day)) for day in published} == partial


def test_reading_a_day_never_published_says_so(tmp_path):
    with pytest.raises(ObjectStoreError, match="materialize that partition"):
        LocalCsvIOManager(base_dir=str(tmp_path)).load_day("agent_metrics", DAY)


def test_each_s3_client_resolves_its_own_credentials(monkeypatch):
    # The parsed botocore data is shared by the process's clients; credentials are not.
    resource = TimedS3Resource(region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    keys = []
    for key_id in ("first-key", "second-key", "third-key"):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"secret-of-{key_id}")
        credentials = resource.get_client()._request_signer._credentials
        keys.append((credentials.access_key, credentials.secret_key))
    assert keys == [(k, f"secret-of-{k}") for k in ("first-key", "second-key", "third-key")]


def test_unknown_aws_profile_is_a_permanent_error(s3_server):
    output = S3CsvIOManager(
        s3=s3_server.resource(
            profile_name="no-such-profile", aws_access_key_id=None, aws_secret_access_key=None
        ),
        bucket="any",
    )
    with pytest.raises(ObjectStoreError, match="AWS_PROFILE"):
        output._write("k", b"x")


@pytest.mark.parametrize(
    ("status", "code"), [(503, "SlowDown"), (400, "RequestTimeout"), (500, "InternalError")]
)
def test_throttling_and_server_trouble_are_transient(status, code):
    # Throttling cannot be provoked on the local S3 server, so its answer is replayed over HTTP.
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>try again</Message></Error>"
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        output = S3CsvIOManager(
            s3=S3Resource(
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                region_name=S3_TEST_REGION,
                max_attempts=0,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ),
            bucket="metrics",
        )
        with pytest.raises(ObjectStoreUnavailableError, match=code):
            output._write("agent_metrics/x.csv", b"x")
    finally:
        server.shutdown()


def test_writing_a_day_sweeps_the_half_written_file_of_a_killed_run_only(
    clickhouse, calls_table, tmp_path
):
    calls = random_calls(FIRST_DAY, days=1, calls_per_day=50, seed=5)
    insert_calls(clickhouse, calls_table, calls)
    day_folder = tmp_path / key_for(FIRST_DAY).rsplit("/", 1)[0]
    day_folder.mkdir(parents=True)
    # A run killed mid-write left this, named after its process (which has exited since).
    ended = ended_owner_tag()
    left = day_folder / f".tmp-{ended}half"
    left.write_bytes(b"agent_id,avg_call")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as writer:
        try:
            writing = day_folder / f".tmp-{owner_tag_of(writer.pid)}now"
            writing.write_bytes(b"another run still writing this day")
            materialize(
                clickhouse,
                measuring(calls_table),
                LocalCsvIOManager(base_dir=str(tmp_path)),
                str(FIRST_DAY),
            )
        finally:
            writer.kill()
    assert not left.exists()
    assert writing.exists()
    published = (tmp_path / key_for(FIRST_DAY)).read_bytes()
    assert_csv_matches(published, expected_metrics(calls)[FIRST_DAY], FIRST_DAY)


class FirstDayRefusedIOManager(LocalCsvIOManager):
    """A folder that refuses the range's first day at once and is slow to take the next few,
    so the refusal comes while they are being written and the rest of the range waits: a store
    cannot be made to answer in that order for real."""

    refused_day: str

    def _write(self, key: str, data: bytes, content_type: str | None = None) -> None:
        if f"/{self.refused_day}/" in key:
            raise ObjectStoreError(f"refused {key}")
        time.sleep(1)
        super()._write(key, data, content_type)


def test_a_refusal_mid_range_stops_the_days_not_started_and_the_run_ends(
    clickhouse, calls_table, tmp_path
):
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(10)]
    insert_calls(clickhouse, calls_table, random_calls(days[0], days=10, calls_per_day=30, seed=4))
    output = FirstDayRefusedIOManager(base_dir=str(tmp_path), refused_day=str(days[0]))
    results: list[dg.ExecuteInProcessResult] = []
    run = threading.Thread(
        target=lambda: results.append(
            materialize(
                clickhouse,
                measuring(calls_table),
                output,
                str(days[0]),
                str(days[-1]),
                raise_on_error=False,
            )
        ),
        daemon=True,
    )
    run.start()
    run.join(timeout=120)
    assert not run.is_alive(), "the run must end once a day is refused"
    listed = re.search(
        r"Days published: (.*); not published: (.*)\. Running", failure_message(results[0])
    )
    assert listed
    published = [day for day in days if str(day) in listed[1]]
    assert days[0] not in published and len(published) < len(days) - 1, "later days not started"
    written = sorted(path.parent.name for path in tmp_path.rglob("*.csv"))
    assert written == [str(day) for day in published]
