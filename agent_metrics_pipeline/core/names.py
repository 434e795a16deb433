"""The names the parts of the pipeline share, so that none imports another for a name: Dagster's
(asset, job, pool, tags) and the few of the published contract."""

ASSET_NAME = "agent_metrics"
GROUP_NAME = "call_center"
CSV_IO_MANAGER_KEY = "csv_io_manager"
JOB_NAME = "agent_metrics_job"
SCHEDULE_NAME = "agent_metrics_daily"
CALLS_ASSET_NAME = "calls"
# The sensor that observes the calls table (no run: its observations are recorded as events).
OBSERVE_SENSOR_NAME = "observe_calls"
# The sensor refreshing today's running figures, when today is a partition.
TODAY_SENSOR_NAME = "agent_metrics_today"
# Metadata of the materialization of a day published before it ended: when it was read.
PARTIAL_AS_OF = "partial_as_of"
# The embedded engine's folder can be opened by one process at a time; the instance limits
# every pool to one slot, so runs that use it queue instead of failing on the lock.
EMBEDDED_ENGINE_POOL = "embedded_clickhouse"

# Tags Dagster sets on a run to select its days.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# The key prefix the days are published under, unless S3_PREFIX names another.
DEFAULT_S3_PREFIX = "agent_metrics"
# How many call or agent ids a check's metadata shows, of each kind.
SAMPLE_SIZE = 5
# A run tagged with this, set to "true", publishes its days whatever their volume: an operator's
# way to publish a day held back as partial (AGENT_METRICS_HOLD_BACK_PARTIAL_DAYS).
PUBLISH_PARTIAL_TAG = "agent_metrics/publish_partial_day"
