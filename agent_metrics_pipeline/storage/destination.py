"""Where the days go: the bucket ``S3_BUCKET`` names, or else a local folder with the same keys."""

from __future__ import annotations

from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.storage.io_manager import DailyCsvIOManager
from agent_metrics_pipeline.storage.local import LocalCsvIOManager


def csv_io_manager(settings: Settings) -> DailyCsvIOManager:
    """The IO manager the settings ask for: the bucket S3_BUCKET names, else the local folder."""
    if settings.s3_bucket is None:
        return LocalCsvIOManager(
            base_dir=str(settings.local_output_dir),
            prefix=settings.s3_prefix,
            gzip=settings.gzip,
            rows_per_file=settings.rows_per_file,
            partial_days=settings.publish_today,
        )
    # Only a bucket needs dagster-aws, whose import costs seconds.
    from agent_metrics_pipeline.storage.s3 import S3CsvIOManager, TimedS3Resource

    return S3CsvIOManager(
        s3=TimedS3Resource(
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.aws_region,
            max_attempts=settings.s3_max_retries,
            connect_timeout_sec=settings.s3_connect_timeout_sec,
            read_timeout_sec=settings.s3_read_timeout_sec,
        ),
        bucket=settings.s3_bucket,
        server_side_encryption=encryption.value
        if (encryption := settings.s3_server_side_encryption)
        else None,
        sse_kms_key_id=settings.s3_sse_kms_key_id,
        expected_bucket_owner=settings.s3_expected_bucket_owner,
        prefix=settings.s3_prefix,
        gzip=settings.gzip,
        rows_per_file=settings.rows_per_file,
        partial_days=settings.publish_today,
    )
