"""ClickHouse's HTTP interface over the embedded ClickHouse engine: a test stand-in, not a server.

Why it exists: the pipeline reaches ClickHouse servers through clickhouse-connect's HTTP
client, and no ClickHouse server can run in CI. This package answers that client the way a
server's HTTP interface does, and runs every statement in the real ClickHouse engine that chdb
embeds, so query results, types, output formats, settings checks and error texts are the
engine's own. Only the server's HTTP layer is written here, after ClickHouse's
``src/Server/HTTPHandler.cpp`` and ``src/Server/HTTP/`` (authentication, settings from the URL,
compression, response headers, the exception-code to HTTP-status table, in-band errors).

The engine opens one data folder per process, so the stand-in runs in a process of its own::

    python -m clickhouse_stand_in --data DIR [--port 0] [--users FILE] [--stop-on-stdin-eof]
        [--statement-log FILE]
        [--certfile PEM --keyfile PEM [--tls-max-version 1.2|1.3]
         [--client-ca PEM [--client-verification relaxed|strict]]]

It prints one line, ``listening 127.0.0.1:PORT``, then serves until SIGTERM or SIGINT (or, with
``--stop-on-stdin-eof``, until its stdin closes) and closes the engine. From Python,
``start_server(data_dir, users, log_path)`` starts it and returns a ``ServerProcess`` with
``host``, ``port`` and ``stop()``; the stand-in then also stops if the starting process dies.

With ``--certfile`` and ``--keyfile`` (``start_server(..., tls=TlsConfig(...))``) it serves
HTTPS only on its port, as a server's ``https_port``: a plain HTTP request there is dropped
unanswered, as the server drops it. ``--client-ca`` checks client certificates against that
CA, as the server's ``caConfig``; ``--client-verification`` is its ``verificationMode``:
``relaxed`` checks a certificate when one is sent, ``strict`` ends the handshake of a client
without one (TLS 1.3's certificate_required alert; with ``--tls-max-version 1.2``, as a server
that disables TLS 1.3, TLS 1.2's handshake_failure).

With ``--statement-log FILE`` (``start_server(..., statement_log=FILE)``) it appends every
statement it is about to run to FILE, one JSON object a line: ``user`` (the HTTP user),
``statement`` (its text, without INSERT data), ``parameters`` (the ``param_*`` values as sent)
and ``query_id``: what a test holds to the grants a server would require, which the stand-in
itself does not enforce (see below).

The users file is JSON: each user has a password and a settings profile that applies to
every query of theirs, like a profile in a server's users.xml::

    {"default": {"password": "", "profile": {}},
     "reader": {"password": "s3cret", "profile": {"readonly": "1"}},
     "cert_reader": {"ssl_certificates": {"common_name": ["reader.example"]},
                     "profile": {"readonly": "1"}}}

A user with ``ssl_certificates`` (``common_name``, and ``subject_alt_name`` entries such as
``DNS:reader.example``) is a certificate user, as in users.xml: they log in with
``X-ClickHouse-SSL-Certificate-Auth: on`` and ``X-ClickHouse-User`` over a connection whose
verified client certificate carries one of those subjects, and never with a password.

What it does as a server does:

- Query text in the body, in the ``query`` URL parameter, or both (parameter, a line break,
  then the body, as for INSERT data); multipart/form-data fields; ``param_*`` query
  parameters bound by the engine's own ``{name:Type}`` substitution; ``database``,
  ``default_format`` and their ``X-ClickHouse-*`` headers; ``query_id`` (refused while a
  query of that id runs); ``session_id`` (with ``session_timeout``, ``session_check``,
  ``close_session``); every other URL parameter is a setting, as on a server. One statement
  per request; INTO OUTFILE and FROM INFILE are refused as a server refuses them.
- Users and passwords from HTTP Basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key`` or the
  ``user``/``password`` parameters, and certificate users from the client certificate of the
  connection, with the server's failure codes, texts and statuses.
- HTTPS on the port, with the server's certificate and client certificates checked against a
  CA; the handshake runs on the request's thread, and a failed one is drained until the client
  closes, so its alert reaches the client rather than a connection reset.
- Each request starts from a fresh engine connection: the user's profile, then the session's
  earlier SET/USE statements, then ``readonly=2`` for a GET, then the URL settings, then the
  query. The engine itself enforces ``readonly`` and refuses setting changes, with its own
  error texts, and its ``system.settings`` shows the profile (what clients read on connect).
- INSERT data (after ``FORMAT name`` or ``VALUES``) goes to the engine's streaming insert, in
  any Content-Encoding the server decodes (lz4, zstd, gzip, deflate, xz, bz2). Responses are
  compressed as the server chooses from Accept-Encoding when ``enable_http_compression`` is
  on; chunked transfer both ways.
- ``KILL QUERY WHERE ... [SYNC|ASYNC|TEST]`` from another request, over the query ids clients
  sent (or were given) and the HTTP users: the request's own query is left out, a user in
  readonly mode (no KILL QUERY privilege) may stop only their own queries, and the engine
  cancels the rest; the cancelled query's request gets QUERY_WAS_CANCELLED.
- Headers X-ClickHouse-Query-Id, -Format, -Timezone, -Summary, -Server-Display-Name,
  -Exception-Code and -Exception-Tag; the server's HTTP status for each exception code.
- ``wait_end_of_query=1`` buffers the whole result, so errors get their status; otherwise
  SELECTs in Native, RowBinary, TabSeparated and ArrowStream stream block by block, and an
  error after the first megabyte was sent comes inside the body between the server's
  ``__exception__`` markers, after which the connection is dropped without a final chunk.

What it cannot show (check these against a real server):

- Server configuration beyond the users file: grants, roles, row policies, quotas,
  constraints on settings, custom setting prefixes, concurrency and memory limits across
  queries, listen/keep-alive/session limits. The engine runs every query as its built-in user
  ``default``, whatever the HTTP user (``currentUser()`` says so; user names in its readonly
  errors are rewritten to the HTTP user's).
- HTTP and HTTPS on two ports at once, TLS settings beyond the certificates, the client
  verification mode and the newest protocol version (ciphers, session tickets,
  ``verificationMode`` ``once``), certificate revocation lists, Kerberos and bearer tokens,
  clusters and Distributed or Replicated tables, ZooKeeper/Keeper, system.processes and
  system.query_log entries matching the query ids it returns (the engine assigns its own
  ``queryID()``; only KILL QUERY maps them), KILL QUERY ON CLUSTER, progress headers
  (``send_progress_in_http_headers``), cancelling a buffered query when the client goes away,
  HEAD and OPTIONS requests, the Play UI.
- The native ``client_protocol_version`` (block headers, DateTime time zones in Native
  output): the stand-in ignores it, as a proxy that drops the parameter would, and
  clickhouse-connect then falls back to protocol 0.
- Version skew: the engine is chdb's build (see ``SELECT version()``); a server in production
  may be older or newer, with other defaults and error texts.
- External data (file parts of multipart/form-data), the ``compress``/``decompress``
  parameters (ClickHouse's own block compression) and brotli/snappy bodies: refused with
  NOT_IMPLEMENTED. Session temporary tables do not survive between requests.
- Memory: request bodies are read whole, and results that do not stream are held whole (a
  server spills them to disk). Functions that read local files (``file()``) see the stand-in's
  working directory, not a server's user_files.

The modules, each importing only those above it:

- ``errors``: ``ServerError``, the engine's errors in the server's form, the exception-code to
  HTTP-status table and the hint texts.
- ``statements``: quoting, and a statement's shape (FORMAT clause, INSERT data, KILL QUERY).
- ``engine``: the embedded engine, the users and their profiles.
- ``formats``: content types, the formats that stream, request and response compression,
  Arrow streams joined.
- ``request``: a request's body and form fields, and the query request parsed from them.
- ``sessions``: the named sessions, and a request's session from its parameters.
- ``host``: what the request handler needs from its server, as a protocol (so the handler
  never imports the server).
- ``authentication``: the user and password of a request, checked.
- ``reply``: the response, its chunked and compressed body, errors with their status or in
  the body.
- ``settings``: a query's settings on its connection, and those the HTTP layer reads.
- ``kill_query``: KILL QUERY over the requests' query ids and users.
- ``streaming``: results sent block by block.
- ``execution``: a request's statement and its answer.
- ``query``: a query request's run, from its session and connection to its statement.
- ``tls``: ``TlsConfig``, the server's TLS context, the handshake on the request's thread,
  and the subjects of a client certificate.
- ``handler``: the HTTP request handler: routes, errors, the log line.
- ``server``: the HTTP(S) server, ``serve``, ``start_server`` and ``ServerProcess``.
- ``__main__``: the command line.
"""

from clickhouse_stand_in.server import ServerProcess, start_server
from clickhouse_stand_in.tls import TlsConfig

__all__ = ["ServerProcess", "TlsConfig", "start_server"]
