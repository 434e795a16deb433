"""Aggregating the calls: how a run's days are cut into queries (consecutive days, and agent
shards for a day too large for one), the metrics queries pushed down to ClickHouse and the
fragments they share, and the pure steps from their rows to the published metrics.

May import the foundations (``core``), the ClickHouse client (``clickhouse``) and storage
(``storage``, for the published columns).
"""
