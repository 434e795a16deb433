"""Operations: what runs the pipeline without a person and tells one when it fails. The job and
the daily schedule with its deadline, the sensors observing the source and refreshing today's
figures, the alerts on failed runs and late days, the watchdog of
runs whose process died, and the instance class that opens Dagster's storage safely.

May import every part below it: the foundations (``core``), the ClickHouse client
(``clickhouse``), storage (``storage``), the aggregation (``aggregate``), the checks
(``quality``), and the publication (``publish``) and observation (``observe``) of the days.
"""
