"""The ClickHouse client: the resource (a server over HTTP(S), or the embedded engine), the
sessions a step or a tick reads through, what the server's errors mean (a failed TLS
connection's in ``tls``), and the source relation as the server describes it (engine, sorting
key).

May import the foundations (``core``) only.
"""
