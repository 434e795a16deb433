"""Encryption at rest and the bucket's owner: what every request to S3 carries, read back from
the S3 server and seen on the wire, and what a bucket that demands them says when it refuses."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
import requests

from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import ServerSideEncryption, Settings
from agent_metrics_pipeline.storage.destination import csv_io_manager
from agent_metrics_pipeline.storage.io_manager import ObjectStoreError
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager, TimedS3Resource
from agent_metrics_pipeline_tests.helpers import (
    REPO_ROOT,
    S3_TEST_CREDENTIALS,
    S3_TEST_REGION,
    create_calls_table,
    failure_message,
    insert_calls,
    materialize,
    measuring,
    moto_server,
    random_calls,
)
from agent_metrics_pipeline_tests.oracle import assert_csv_matches, expected_metrics
from agent_metrics_pipeline_tests.s3_proxy import RecordingS3Proxy, SentRequest

DAYS = [dt.date(2026, 3, 2), dt.date(2026, 3, 3)]
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b6e9a5c-7d51-4d7e-9a4e-3f1f8f7a2c11"
OWNER = "123456789012"
# Small enough that every day is several parts.
ROWS_PER_FILE = 7
ENCRYPTIONS = [
    pytest.param(ServerSideEncryption.AES256, None, id="AES256"),
    pytest.param(ServerSideEncryption.AWS_KMS, KMS_KEY, id="aws:kms"),
    pytest.param(ServerSideEncryption.AWS_KMS_DSSE, KMS_KEY, id="aws:kms:dsse"),
]
LAYOUTS = [pytest.param(None, id="one-file"), pytest.param(ROWS_PER_FILE, id="parts")]


@pytest.fixture(scope="module")
def source(embedded_clickhouse) -> SourceTable:
    """Two days of calls, on the embedded engine: what is read does not matter here."""
    table = SourceTable(table=f"calls_{uuid.uuid4().hex[:12]}")
    create_calls_table(embedded_clickhouse, table)
    insert_calls(embedded_clickhouse, table, CALLS)
    return table


CALLS = random_calls(DAYS[0], days=len(DAYS), calls_per_day=120, seed=35)


@pytest.fixture
def proxy(s3_server) -> Iterator[RecordingS3Proxy]:
    with RecordingS3Proxy(s3_server.endpoint_url).running() as running:
        yield running


def through(proxy: RecordingS3Proxy, bucket, **settings) -> S3CsvIOManager:
    """The IO manager the settings make, its requests going through the proxy."""
    made = csv_io_manager(
        Settings(s3_bucket=bucket.name, s3_endpoint_url=proxy.endpoint_url, **settings)
    )
    return made.model_copy(update={"s3": bucket.server.resource(endpoint_url=proxy.endpoint_url)})


def publish(clickhouse, source, io_manager, raise_on_error: bool = True):
    return materialize(
        clickhouse,
        measuring(source),
        io_manager,
        str(DAYS[0]),
        str(DAYS[-1]),
        raise_on_error=raise_on_error,
    )


def assert_published_as_the_oracle(io_manager: S3CsvIOManager) -> None:
    """Each day, read back through the IO manager, against the oracle over the calls."""
    expected = expected_metrics(CALLS)
    for day in DAYS:
        frame = io_manager.load_day("agent_metrics", str(day))
        assert_csv_matches(frame.write_csv().encode(), expected[day], day)


@pytest.mark.parametrize("rows_per_file", LAYOUTS)
@pytest.mark.parametrize(("encryption", "kms_key"), ENCRYPTIONS)
def test_every_object_written_carries_the_configured_encryption(
    embedded_clickhouse, source, bucket, proxy, encryption, kms_key, rows_per_file
):
    io_manager = through(
        proxy,
        bucket,
        s3_server_side_encryption=encryption,
        s3_sse_kms_key_id=kms_key,
        rows_per_file=rows_per_file,
    )
    publish(embedded_clickhouse, source, io_manager)

    keys = bucket.keys()
    manifests = [key for key in keys if key.endswith("manifest.json")]
    if rows_per_file:
        assert len(manifests) == len(DAYS) and len(keys) > 2 * len(DAYS), keys
    else:
        assert len(keys) == len(DAYS), keys
    client = bucket.server.client()
    for key in keys:
        stored = client.head_object(Bucket=bucket.name, Key=key)
        assert stored["ServerSideEncryption"] == encryption.value, key
        if encryption is ServerSideEncryption.AWS_KMS:
            # The S3 server keeps the key of aws:kms (not of the dual-layer mode).
            assert stored["SSEKMSKeyId"] == kms_key, key
    writes = [request for request in proxy.requests_to(bucket.name) if request.writes_object]
    assert len(writes) == len(keys)
    for write in writes:
        assert write.headers["x-amz-server-side-encryption"] == encryption.value
        assert write.headers.get("x-amz-server-side-encryption-aws-kms-key-id") == kms_key
    assert_published_as_the_oracle(io_manager)


def test_without_the_setting_no_encryption_is_asked_for(embedded_clickhouse, source, bucket, proxy):
    """The bucket's default encryption applies: the writes send none of the headers."""
    publish(embedded_clickhouse, source, through(proxy, bucket))
    writes = [request for request in proxy.requests_to(bucket.name) if request.writes_object]
    assert len(writes) == len(DAYS)
    for write in writes:
        assert not any(name.startswith("x-amz-server-side-encryption") for name in write.headers)
        assert "x-amz-expected-bucket-owner" not in write.headers


def test_every_request_names_the_expected_bucket_owner(embedded_clickhouse, source, bucket, proxy):
    """Writes, listings, deletes and reads: a day in parts, published again in fewer parts
    (stale parts listed and deleted), final days clearing a partial folder, then read back."""
    publish(
        embedded_clickhouse,
        source,
        through(proxy, bucket, s3_expected_bucket_owner=OWNER, rows_per_file=ROWS_PER_FILE),
    )
    again = through(
        proxy,
        bucket,
        s3_expected_bucket_owner=OWNER,
        rows_per_file=ROWS_PER_FILE * 3,
        publish_today=True,
    )
    publish(embedded_clickhouse, source, again)
    assert_published_as_the_oracle(again)

    sent = proxy.requests_to(bucket.name)
    kinds = {kind_of(request) for request in sent}
    assert kinds == {"write", "list", "delete", "read"}
    for request in sent:
        assert request.headers.get("x-amz-expected-bucket-owner") == OWNER, request


def kind_of(request: SentRequest) -> str:
    if request.method == "GET" and "list-type=2" in request.path:
        return "list"
    return {"PUT": "write", "GET": "read", "DELETE": "delete"}.get(request.method, request.method)


def test_a_bucket_of_another_owner_refuses_and_the_message_names_the_owner_setting(
    embedded_clickhouse, source, bucket, proxy
):
    # What S3 does when the bucket's owner is not the expected one: AccessDenied.
    proxy.refuse = lambda request: request.headers.get("x-amz-expected-bucket-owner") != OWNER
    result = publish(
        embedded_clickhouse,
        source,
        through(proxy, bucket, s3_expected_bucket_owner="210987654321"),
        raise_on_error=False,
    )
    message = failure_message(result)
    assert "S3_EXPECTED_BUCKET_OWNER" in message and "210987654321" in message
    assert bucket.keys() == []


def test_a_bucket_that_requires_encryption_refuses_plain_writes_naming_the_setting(
    embedded_clickhouse, source, bucket, proxy
):
    # A bucket policy that denies s3:PutObject without server-side encryption.
    proxy.refuse = lambda request: (
        request.writes_object and "x-amz-server-side-encryption" not in request.headers
    )
    result = publish(embedded_clickhouse, source, through(proxy, bucket), raise_on_error=False)
    message = failure_message(result)
    assert "s3:PutObject" in message and "S3_SERVER_SIDE_ENCRYPTION" in message
    assert bucket.keys() == []

    publish(
        embedded_clickhouse,
        source,
        through(proxy, bucket, s3_server_side_encryption=ServerSideEncryption.AES256),
    )
    assert len(bucket.keys()) == len(DAYS)


# Least privilege: the documented IAM policies, held by an S3 server that enforces them.

DEPLOYMENT_DOCS = REPO_ROOT / "docs" / "deployment.md"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def documented_policies() -> tuple[str, str, dict]:
    """The one-file and parts policies (JSON text, ``BUCKET`` left in) and the KMS statement,
    as docs/deployment.md gives them to paste."""
    section = DEPLOYMENT_DOCS.read_text().split("### S3: the IAM policy", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    one_file, parts, kms = re.findall(r"```json\n(.*?)```", section, re.S)
    return one_file, parts, json.loads(kms)


ONE_FILE_POLICY, PARTS_POLICY, KMS_STATEMENT = documented_policies()


@dataclass(frozen=True)
class Scenario:
    """What a deployment does with the bucket: runs publishing the two days (each with its
    settings), then both days read back."""

    policy: str
    runs: tuple[dict, ...]
    added_actions: tuple[str, ...] = ()

    def policy_for(self, bucket: str, without: str | None = None) -> dict:
        policy = json.loads(self.policy.replace("BUCKET", bucket))
        statements = []
        for statement in policy["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else list(actions)
            if statement["Resource"].endswith("/*"):
                actions += self.added_actions
            if without in actions:
                actions.remove(without)
            if actions:
                statements.append({**statement, "Action": actions})
        return {**policy, "Statement": statements}

    def actions(self) -> list[str]:
        return [
            action
            for statement in self.policy_for("BUCKET")["Statement"]
            for action in statement["Action"]
        ]


SCENARIOS = {
    "one-file": Scenario(ONE_FILE_POLICY, ({},)),
    "one-file-with-today": Scenario(
        ONE_FILE_POLICY, ({"publish_today": True},), added_actions=("s3:DeleteObject",)
    ),
    "parts": Scenario(
        PARTS_POLICY,
        (
            {"rows_per_file": ROWS_PER_FILE},
            {"rows_per_file": ROWS_PER_FILE * 3, "publish_today": True},
        ),
    ),
}


@dataclass
class EnforcingS3:
    """An S3 server of its own that authenticates every request and holds it to the IAM
    policies of its users; ``admin`` may do anything, ``pipeline`` what a test grants."""

    endpoint_url: str
    admin: dict[str, str]
    pipeline: dict[str, str]

    def client(self, service: str, keys: dict[str, str]):
        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=S3_TEST_REGION, **keys
        )

    def grant(self, policy: dict) -> None:
        self.client("iam", self.admin).put_user_policy(
            UserName="pipeline", PolicyName="agent-metrics", PolicyDocument=json.dumps(policy)
        )

    def io_manager(self, bucket: str, **settings) -> S3CsvIOManager:
        made = csv_io_manager(
            Settings(s3_bucket=bucket, s3_endpoint_url=self.endpoint_url, **settings)
        )
        resource = TimedS3Resource(
            endpoint_url=self.endpoint_url,
            region_name=S3_TEST_REGION,
            max_attempts=1,
            **self.pipeline,
        )
        return made.model_copy(update={"s3": resource})


@pytest.fixture(scope="module")
def enforcing_s3(tmp_path_factory) -> Iterator[EnforcingS3]:
    """moto's S3 and IAM, authenticating every request once its users exist. Apart from the
    other tests' server: enforcement holds for the whole server."""
    log = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    with moto_server(log, INITIAL_NO_AUTH_ACTION_COUNT="inf") as endpoint:
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name=S3_TEST_REGION, **S3_TEST_CREDENTIALS
        )
        keys = {}
        for user, policy in (("admin", ADMIN_POLICY), ("pipeline", {"Statement": []})):
            iam.create_user(UserName=user)
            if policy["Statement"]:
                iam.put_user_policy(
                    UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy)
                )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            }
        # From here on, every request is signed by a user and checked against its policies.
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield EnforcingS3(endpoint, keys["admin"], keys["pipeline"])


def play(enforcing_s3: EnforcingS3, clickhouse, source, scenario: Scenario, bucket: str) -> str:
    """The scenario as the pipeline's user; the first refusal's message, or '' when all
    went through and both days read back equal to the oracle."""
    for settings in scenario.runs:
        io_manager = enforcing_s3.io_manager(bucket, **settings)
        result = publish(clickhouse, source, io_manager, raise_on_error=False)
        if not result.success:
            return failure_message(result)
    try:
        assert_published_as_the_oracle(io_manager)
    except ObjectStoreError as error:
        return str(error)
    return ""


@pytest.fixture
def enforced_bucket(enforcing_s3) -> str:
    name = f"metrics-{uuid.uuid4().hex[:12]}"
    enforcing_s3.client("s3", enforcing_s3.admin).create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_the_documented_policy_is_enough(
    enforcing_s3, embedded_clickhouse, source, enforced_bucket, scenario
):
    enforcing_s3.grant(scenario.policy_for(enforced_bucket))
    assert play(enforcing_s3, embedded_clickhouse, source, scenario, enforced_bucket) == ""


def without_each_action() -> list:
    return [
        pytest.param(scenario, action, id=f"{name}-without-{action}")
        for name, scenario in SCENARIOS.items()
        for action in scenario.actions()
    ]


@pytest.mark.parametrize(("scenario", "action"), without_each_action())
def test_each_action_of_the_policy_is_needed_and_named_when_missing(
    enforcing_s3, embedded_clickhouse, source, enforced_bucket, scenario, action
):
    enforcing_s3.grant(scenario.policy_for(enforced_bucket, without=action))
    message = play(enforcing_s3, embedded_clickhouse, source, scenario, enforced_bucket)
    # The table of docs/deployment.md gives the message each missing action gives.
    documented = f"The credentials lack the permission {action} on "
    assert documented in message
    assert f"`{documented}...`" in DEPLOYMENT_DOCS.read_text()


def test_the_kms_statement_grants_what_the_messages_name():
    """S3 asks KMS for a data key on each write and to decrypt it on each read: the refusal
    messages name these two actions, and the policy to paste grants them."""
    assert sorted(KMS_STATEMENT["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert KMS_STATEMENT["Effect"] == "Allow"
