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
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    users = json.loads(args.users.read_text()) if args.users else DEFAULT_USERS
    args.data.mkdir(parents=True, exist_ok=True)
    serve(args.data, args.port, users, args.stop_on_stdin_eof, args.statement_log)


if __name__ == "__main__":
    main()
