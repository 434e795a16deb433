"""agent-metrics-pipeline: per-agent call metrics from ClickHouse, validated and published as
one CSV per day, orchestrated by Dagster.

The parts follow the data, and import one way along it (``agent_metrics_pipeline_tests/
test_layout.py`` holds them to it): ``core`` (the foundations) → ``clickhouse`` and ``storage``
→ ``aggregate`` → ``quality`` → ``publish``, with ``observe`` beside those three →
``operations`` → ``definitions`` and the ``demo``.
"""
