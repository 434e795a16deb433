"""Encryption at rest and the bucket's owner: what every request to S3 carries, read back from
the S3 server and seen on the wire, and what a bucket that demands them says when it refuses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import ServerSideEncryption, Settings
from agent_metrics_pipeline.storage.destination import csv_io_manager
from agent_metrics_pipeline.storage.io_manager import ObjectStoreError
from agent_metrics_pipeline.storage.s3 import S3CsvIOManager
from agent_metrics_pipeline_tests.helpers import failure_message
from agent_metrics_pipeline_tests.s3_proxy import RecordingS3Proxy, SentRequest
from agent_metrics_pipeline_tests.two_days import (
    DAYS,
    ROWS_PER_FILE,
    assert_published_as_the_oracle,
    publish,
    seed_calls,
)

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b6e9a5c-7d51-4d7e-9a4e-3f1f8f7a2c11"
OWNER = "123456789012"
ENCRYPTIONS = [
    pytest.param(ServerSideEncryption.AES256, None, id="AES256"),
    pytest.param(ServerSideEncryption.AWS_KMS, KMS_KEY, id="aws:kms"),
    pytest.param(ServerSideEncryption.AWS_KMS_DSSE, KMS_KEY, id="aws:kms:dsse"),
]
LAYOUTS = [pytest.param(None, id="one-file"), pytest.param(ROWS_PER_FILE, id="parts")]


@pytest.fixture(scope="module")
def source(embedded_clickhouse) -> SourceTable:
    """On the embedded engine: what is read does not matter here."""
    return seed_calls(embedded_clickhouse)


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
    proxy.refuse = lambda request: (
        "AccessDenied" if request.headers.get("x-amz-expected-bucket-owner") != OWNER else None
    )
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
        "AccessDenied"
        if request.writes_object and "x-amz-server-side-encryption" not in request.headers
        else None
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


def test_refusals_with_a_kms_key_name_the_kms_actions_and_a_missing_key_the_key_setting(
    embedded_clickhouse, source, bucket, proxy
):
    """What KMS decides, S3 answers for: a write without kms:GenerateDataKey, a read without
    kms:Decrypt (both AccessDenied), and a key that does not exist."""
    kms = {"s3_server_side_encryption": ServerSideEncryption.AWS_KMS, "s3_sse_kms_key_id": KMS_KEY}
    proxy.refuse = lambda request: "AccessDenied" if request.writes_object else None
    message = failure_message(
        publish(embedded_clickhouse, source, through(proxy, bucket, **kms), raise_on_error=False)
    )
    assert "s3:PutObject" in message and "kms:GenerateDataKey" in message

    proxy.refuse = lambda request: "KMS.NotFoundException" if request.writes_object else None
    message = failure_message(
        publish(embedded_clickhouse, source, through(proxy, bucket, **kms), raise_on_error=False)
    )
    assert "KMS.NotFoundException" in message and "S3_SSE_KMS_KEY_ID" in message
    assert bucket.keys() == []

    proxy.refuse = lambda request: None
    io_manager = through(proxy, bucket, **kms)
    publish(embedded_clickhouse, source, io_manager)
    proxy.refuse = lambda request: "AccessDenied" if request.method == "GET" else None
    with pytest.raises(ObjectStoreError) as refused:
        io_manager.load_day("agent_metrics", str(DAYS[0]))
    for cause in ("s3:GetObject", "kms:Decrypt", "may not exist"):
        assert cause in str(refused.value)
