"""The per-day CSV objects in an S3 (or S3-compatible) bucket, through dagster-aws.

Apart from the other IO managers because importing dagster-aws costs as much as importing
Dagster itself: definitions without a bucket never pay for it.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.handlers import disable_signing
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from agent_metrics_pipeline.core.settings import (
    DEFAULT_S3_CONNECT_TIMEOUT_SEC,
    DEFAULT_S3_READ_TIMEOUT_SEC,
)
from agent_metrics_pipeline.storage.io_manager import (
    DailyCsvIOManager,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)

CREDENTIAL_ERROR_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
# Valid credentials, without the permission for this request.
PERMISSION_ERROR_CODES = {"AccessDenied", "403"}
MISSING_BUCKET_ERROR_CODES = {"NoSuchBucket"}
MISSING_OBJECT_ERROR_CODES = {"NoSuchKey", "404"}
# Answers that a later attempt may not get: throttling, timeouts, server trouble.
TRANSIENT_ERROR_CODES = {
    "RequestTimeout",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
}


# Guards the shared loader while a session registers with it.
_LOADER_LOCK = threading.Lock()


@functools.cache
def _botocore_data() -> botocore.loaders.Loader:
    """botocore's data (the S3 service model, its endpoint rules), parsed once per process:
    each session would otherwise parse it again, about 60 ms of every client."""
    return botocore.loaders.create_loader(
        botocore.session.Session().get_config_variable("data_path")
    )


def _session(profile_name: str | None) -> boto3.session.Session:
    """A session of its own, so that credentials are resolved afresh for each client, reading
    the process's shared botocore data."""
    core = botocore.session.Session(profile=profile_name)
    with _LOADER_LOCK:
        loader = _botocore_data()
        core.register_component("data_loader", loader)
        session = boto3.session.Session(botocore_session=core)
        # Each boto3 session adds boto3's own data folder to the loader's search path.
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


class TimedS3Resource(S3Resource):
    """dagster-aws ``S3Resource`` whose clients give up on an endpoint that does not answer.

    dagster-aws leaves botocore's 60 s connect and read timeouts in place; every other field
    keeps its meaning (``max_attempts`` counts retries, in botocore's standard retry mode, with
    exponential backoff).
    """

    connect_timeout_sec: int = Field(
        default=DEFAULT_S3_CONNECT_TIMEOUT_SEC, description="Seconds to connect."
    )
    read_timeout_sec: int = Field(
        default=DEFAULT_S3_READ_TIMEOUT_SEC, description="Seconds to wait for each answer."
    )

    def get_client(self) -> Any:
        config = Config(
            connect_timeout=self.connect_timeout_sec,
            read_timeout=self.read_timeout_sec,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )
        client = _session(self.profile_name).client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )
        if self.use_unsigned_session:
            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


class S3CsvIOManager(DailyCsvIOManager):
    """The same layout in an S3 (or S3-compatible) bucket, through dagster-aws ``S3Resource``.

    Transient faults are retried by the client, at the write, with backoff (``max_attempts``
    of the resource); once those are spent the step fails without a step retry, which would
    run the ClickHouse query again for nothing.
    """

    s3: S3Resource
    bucket: str = Field(description="Bucket name, without s3://.")
    server_side_encryption: str | None = Field(
        default=None,
        description="AES256, aws:kms or aws:kms:dsse, sent with every write; unset, the "
        "bucket's default encryption applies.",
    )
    sse_kms_key_id: str | None = Field(
        default=None, description="The KMS key of aws:kms or aws:kms:dsse; unset, S3's own."
    )
    expected_bucket_owner: str | None = Field(
        default=None,
        description="Account id that must own the bucket, sent with every request: S3 refuses "
        "the request otherwise.",
    )
    _s3_client: Any = PrivateAttr(default=None)
    # Days are written from a few threads at once: they share one client, made once.
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _where(self) -> str:
        endpoint = self.s3.endpoint_url or "AWS S3"
        return f"bucket {self.bucket!r} at {endpoint}"

    def _owner(self) -> dict[str, str]:
        """Sent with every request: a bucket of that name owned by anyone else refuses it."""
        if self.expected_bucket_owner is None:
            return {}
        return {"ExpectedBucketOwner": self.expected_bucket_owner}

    def _encryption(self) -> dict[str, str]:
        if self.server_side_encryption is None:
            return {}
        if self.sse_kms_key_id is None:
            return {"ServerSideEncryption": self.server_side_encryption}
        return {
            "ServerSideEncryption": self.server_side_encryption,
            "SSEKMSKeyId": self.sse_kms_key_id,
        }

    def _other_refusals(self, action: str) -> str:
        """What else refuses a request with AccessDenied, though the IAM action is granted."""
        causes = []
        kms = (self.server_side_encryption or "").startswith("aws:kms")
        if action == "s3:PutObject":
            causes.append(
                "the bucket's policy may require server-side encryption the writes do not "
                "send (set S3_SERVER_SIDE_ENCRYPTION to AES256, aws:kms or aws:kms:dsse, and "
                "S3_SSE_KMS_KEY_ID, as it requires)"
            )
            if kms:
                causes.append("the credentials need kms:GenerateDataKey on the KMS key")
        if action == "s3:GetObject" and kms:
            causes.append("the credentials need kms:Decrypt on the KMS key")
        if self.expected_bucket_owner is not None:
            causes.append(
                f"the bucket belongs to another account than {self.expected_bucket_owner} "
                "(S3_EXPECTED_BUCKET_OWNER: check the bucket's name and its owner)"
            )
        return f" Other causes of this refusal: {'; '.join(causes)}." if causes else ""

    def _translate(self, error: Exception, key: str, action: str) -> Exception:
        if isinstance(
            error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
        ):
            return ObjectStoreUnavailableError(
                f"Could not reach the {self._where()}: {type(error).__name__}. Check "
                "S3_ENDPOINT_URL and the network."
            )
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return ObjectStoreError(
                f"No AWS credentials found for {self._where()}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role."
            )
        if isinstance(error, botocore.exceptions.BotoCoreError):
            return ObjectStoreError(
                f"The S3 client for the {self._where()} is misconfigured: {error}. Check "
                "AWS_PROFILE, AWS_REGION and the AWS credential variables."
            )
        if isinstance(error, botocore.exceptions.ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in MISSING_BUCKET_ERROR_CODES:
                return ObjectStoreError(
                    f"The {self._where()} does not exist: create it, or point S3_BUCKET at an "
                    "existing bucket."
                )
            if code in CREDENTIAL_ERROR_CODES:
                return ObjectStoreError(
                    f"The {self._where()} refused the credentials ({code}): check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
                )
            if code in PERMISSION_ERROR_CODES:
                # s3:ListBucket is granted on the bucket itself, the others on its objects.
                resource = (
                    f"arn:aws:s3:::{self.bucket}"
                    if action == "s3:ListBucket"
                    else f"arn:aws:s3:::{self.bucket}/{self.prefix}/*"
                )
                return ObjectStoreError(
                    f"The credentials lack the permission {action} on {self.uri(key)} "
                    f"({code}): grant {action} on {resource} to them (IAM or bucket policy; "
                    "docs/deployment.md has the policy to paste)." + self._other_refusals(action)
                )
            if code in MISSING_OBJECT_ERROR_CODES:
                return ObjectStoreError(
                    f"No object {self.uri(key)}: materialize that partition before reading it."
                )
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in TRANSIENT_ERROR_CODES or status >= 500 or status == 429:
                return ObjectStoreUnavailableError(
                    f"The {self._where()} failed with {code} (HTTP {status}); retry later."
                )
            return ObjectStoreError(f"The {self._where()} refused the request: {code}.")
        return ObjectStoreUnavailableError(f"The {self._where()} failed: {type(error).__name__}.")

    def _client(self) -> Any:
        """One boto3 client per IO manager instance, not one per day written."""
        with self._client_lock:
            if self._s3_client is None:
                self._s3_client = self.s3.get_client()
        return self._s3_client

    def _write(self, key: str, data: bytes, content_type: str | None = None) -> None:
        if content_type is None:
            content_type = "application/gzip" if self.gzip else "text/csv; charset=utf-8"
        try:
            self._client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                **self._encryption(),
                **self._owner(),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._translate(error, key, "s3:PutObject") from None

    def _read(self, key: str) -> bytes:
        try:
            response = self._client().get_object(Bucket=self.bucket, Key=key, **self._owner())
            return response["Body"].read()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._translate(error, key, "s3:GetObject") from None

    def _list(self, folder: str) -> list[str]:
        keys: list[str] = []
        try:
            pages = self._client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=f"{folder}/", **self._owner()):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise self._translate(error, f"{folder}/", "s3:ListBucket") from None
        return keys

    def _delete(self, keys: list[str]) -> None:
        # One request a key: a day leaves few (its partial folder's three names, the parts it no
        # longer has), and each is authorized against the object's own ARN in every
        # S3-compatible store, as the documented policy grants s3:DeleteObject.
        for key in keys:
            try:
                self._client().delete_object(Bucket=self.bucket, Key=key, **self._owner())
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
                raise self._translate(error, key, "s3:DeleteObject") from None
