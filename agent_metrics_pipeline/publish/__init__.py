"""Publishing the days: the ``agent_metrics`` asset, and its run's reading of the days chunk
after chunk, each aggregated, judged by the checks and staged while the next is read, so that
nothing is published unless every day passed.

May import the foundations (``core``), the ClickHouse client (``clickhouse``), storage
(``storage``), the aggregation (``aggregate``) and the checks (``quality``); never the
observation of the source (``observe``), its peer.
"""
