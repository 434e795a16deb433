"""Foundations: what every other part of the pipeline stands on.

The settings read from the environment (with the TLS files of ClickHouse, tried at load), the
model of what is measured (the source table, the
counted statuses, the checks' bounds), the Dagster names shared across parts, the daily
partitions and their days, the kinds of error, and the guard of a step whose run died.

Imports nothing else of the package: every other part may import from here.
"""
