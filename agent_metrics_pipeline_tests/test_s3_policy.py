"""Least privilege in S3: the IAM policies docs/deployment.md gives to paste, held by an S3
server that authenticates every request and enforces its users' policies."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
import requests

from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.storage.destination import csv_io_manager
from agent_metrics_pipeline.storage.io_manager import ObjectStoreError
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager, TimedS3Resource
from agent_metrics_pipeline_tests.helpers import (
    REPO_ROOT,
    S3_TEST_CREDENTIALS,
    S3_TEST_REGION,
    failure_message,
    moto_server,
)
from agent_metrics_pipeline_tests.two_days import (
    ROWS_PER_FILE,
    assert_published_as_the_oracle,
    publish,
    seed_calls,
)

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
def source(embedded_clickhouse) -> SourceTable:
    return seed_calls(embedded_clickhouse)


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
