"""Reading and publishing a day: the ``agent_metrics`` asset, how its days are cut into
queries, the metrics queries, the shaping of their rows, and the checks that decide, before
anything is published, whether a day may be.

May import the foundations (``core``), the ClickHouse client (``clickhouse``) and storage
(``storage``); never the observation of the source (``observe``), its peer.
"""
