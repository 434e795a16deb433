"""``python -m clickhouse_stand_in --data DIR ...``: the command line, which runs the stand-in
in this process."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import clickhouse_stand_in
from clickhouse_stand_in.engine import DEFAULT_USERS
from clickhouse_stand_in.server import serve
from clickhouse_stand_in.tls import CLIENT_VERIFICATION_MODES, MAXIMUM_VERSIONS, TlsConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description=clickhouse_stand_in.__doc__.splitlines()[0],
    )
    parser.add_argument("--data", required=True, type=Path, help="engine data folder")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--users",
        type=Path,
        help="users JSON (default: user 'default', no password, empty profile)",
    )
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (start_server uses it, so that the stand-in does not "
        "outlive a test process that dies)",
    )
    parser.add_argument(
        "--statement-log",
        type=Path,
        help="append each statement run, as a JSON line (user, statement, parameters, query_id)",
    )
    parser.add_argument("--certfile", type=Path, help="serve HTTPS with this certificate chain")
    parser.add_argument("--keyfile", type=Path, help="the private key of --certfile")
    parser.add_argument(
        "--client-ca", type=Path, help="check client certificates against this CA bundle"
    )
    parser.add_argument(
        "--client-verification",
        choices=sorted(CLIENT_VERIFICATION_MODES),
        default="relaxed",
        help="with --client-ca, as a server's verificationMode: relaxed checks a client "
        "certificate when one is sent, strict refuses a client without one",
    )
    parser.add_argument(
        "--tls-max-version",
        choices=sorted(MAXIMUM_VERSIONS),
        default="1.3",
        help="the newest TLS version served (1.2: as a server that disables TLS 1.3)",
    )
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    if args.client_ca is not None and args.certfile is None:
        parser.error("--client-ca needs --certfile and --keyfile")
    tls = (
        TlsConfig(
            args.certfile,
            args.keyfile,
            args.client_ca,
            args.client_verification,
            args.tls_max_version,
        )
        if args.certfile
        else None
    )
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    users = json.loads(args.users.read_text()) if args.users else DEFAULT_USERS
    args.data.mkdir(parents=True, exist_ok=True)
    serve(args.data, args.port, users, args.stop_on_stdin_eof, args.statement_log, tls)


if __name__ == "__main__":
    main()
