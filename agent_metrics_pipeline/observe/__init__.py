"""Observing the source: the ``calls`` source asset and its hourly observation, each day's
fingerprint and the table parts behind it, the check for late calls older than the window, and
the condition that republishes the published days whose source changed.

May import the foundations (``core``), the ClickHouse client (``clickhouse``) and storage
(``storage``); never the aggregation, checks or publication of the days (``aggregate``,
``quality``, ``publish``), its peers.
"""
