"""Runs the whole pipeline on the embedded default: no server to install, no credentials.

``python -m agent_metrics_pipeline.demo`` seeds five weeks of sample calls into the embedded
ClickHouse engine, then launches runs through the code location, as the UI does: a day seeded
with broken rows whose blocking checks fail so nothing is published for it, the seven days after
it in one run, then yesterday. It prints a short summary; Dagster's own log lines go to
``demo.log`` in the instance folder. With ``S3_BUCKET`` set, the files go to that bucket.

With ``DAGSTER_HOME`` set (``make demo`` sets it), the runs are recorded in that instance, the
one ``make dev`` opens, and ``demo.env`` there holds the first seeded day, so the UI's
partitions start where the sample data does.
"""
