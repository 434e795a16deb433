"""The ClickHouse reader's grants, as docs/deployment.md documents them, hold every statement
the pipeline sends.

The test server cannot enforce grants: it runs every statement as one built-in user. So a
stand-in of this module's own logs every statement it runs, while the reader goes through a
day's run, two observations (the second one looks for late calls), the late-calls check run by
hand and a query stopped after its time-out. The engine then says what each statement reads
(``EXPLAIN QUERY TREE``; ``EXPLAIN AST`` for its kind and a KILL QUERY's target), and each read
is held to the GRANT statements parsed from the documentation's SQL block, and to what
ClickHouse lets every user read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator, Mapping

import dagster as dg
import pytest
import requests

from agent_metrics_pipeline.clickhouse.errors import ClickHouseUnavailableError
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.names import CSV_IO_MANAGER_KEY
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.observe.late_calls import LATE_CALLS_CHECK_KEY
from agent_metrics_pipeline.observe.queries import (
    build_parts_query,
    build_recently_written_days_query,
)
from agent_metrics_pipeline_tests.helpers import (
    READER,
    READER_PASSWORD,
    REPO_ROOT,
    STAND_IN_USERS,
    Bucket,
    S3Server,
    create_calls_table,
    insert_calls,
    materialize,
    measuring,
    observe,
    random_calls,
    register_writer,
)
from agent_metrics_pipeline_tests.oracle import Call
from clickhouse_stand_in import start_server

DEPLOYMENT_DOCS = REPO_ROOT / "docs" / "deployment.md"
GRANTS_SECTION = "## The ClickHouse reader: least privilege"
# What ClickHouse lets every user read when system tables require grants
# (select_from_system_db_requires_grant): the always-accessible tables of
# ContextAccess::addImplicitAccessRights. Where system tables need no grant, all of them are.
READABLE_BY_EVERYONE = frozenset(
    f"system.{name}"
    for name in (
        "one",
        "contributors",
        "licenses",
        "time_zones",
        "collations",
        "formats",
        "privileges",
        "data_type_families",
        "database_engines",
        "table_engines",
        "table_functions",
        "disk_types",
        "dictionary_layouts",
        "aggregate_function_combinators",
        "completions",
        "functions",
        "databases",
        "tables",
        "columns",
        "settings",
        "current_roles",
        "enabled_roles",
        "quota_usage",
    )
)
# KILL QUERY looks the queries up in system.processes with the user's rights; a user may stop
# its own queries without the KILL QUERY privilege.
KILL_QUERY_READS = frozenset({"system.processes"})
# The statement's own temporary tables (a recursive WITH's steps) need no grant.
OWN_TEMPORARY_TABLES = "_temporary_and_external_tables."
TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+\w+\s*$")
TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [TODAY - dt.timedelta(days=offset) for offset in range(5, 0, -1)]
WINDOW_DAYS = 3  # DAYS[0] and DAYS[1] end before the observation window
# Thirty seconds in half-second steps, with no setting, which a readonly=1 user could not send.
SLOW_QUERY = (
    "WITH RECURSIVE steps AS (SELECT 1 AS n UNION ALL SELECT n + 1 + sleep(0.5) FROM steps "
    "WHERE n < 60) SELECT count() AS steps FROM steps"
)


def documented_grants(text: str) -> frozenset[str]:
    """The tables the section's SQL block grants to its one reader. A statement of another
    form than its CREATE USER and GRANT SELECT fails here, so none can be documented without
    being held."""
    section = text.split(GRANTS_SECTION, 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block, f"no SQL block under {GRANTS_SECTION!r}"
    users, tables = set(), set()
    for statement in filter(None, (part.strip() for part in block.group(1).split(";"))):
        if created := re.match(r"CREATE USER (\w+) ", statement):
            users.add(created.group(1))
            continue
        granted = re.fullmatch(r"GRANT SELECT ON (\w+\.\w+) TO (\w+)", statement)
        assert granted, f"a statement this test cannot hold: {statement}"
        tables.add(granted.group(1))
        users.add(granted.group(2))
    assert len(users) == 1, f"grants to several users: {sorted(users)}"
    return frozenset(tables)


GRANTS = documented_grants(DEPLOYMENT_DOCS.read_text())


@dataclasses.dataclass(frozen=True)
class Statement:
    """A statement the reader sent, and what the engine says it does."""

    text: str
    query_id: str
    kind: str  # the root of its syntax tree: SelectWithUnionQuery, KillQueryQuery...
    tables: frozenset[str]  # the tables it reads; for a KILL QUERY, where it looks queries up
    kill_target: str | None = None  # the query id a KILL QUERY names


class Explainer:
    """Asks the engine about a statement, as the server's administrator."""

    def __init__(self, url: str) -> None:
        self.url = url

    def explain(self, form: str, statement: str, parameters: Mapping[str, str]) -> list[str]:
        response = requests.post(
            self.url,
            params={"default_format": "TabSeparatedRaw"}
            | {f"param_{name}": value for name, value in parameters.items()},
            data=f"EXPLAIN {form} {statement}".encode(),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.text.splitlines()

    def statement(self, logged: Mapping[str, object]) -> Statement:
        text, parameters = str(logged["statement"]), logged["parameters"]
        assert isinstance(parameters, dict)
        # The client names its output format last; EXPLAIN would answer in it.
        text = TRAILING_FORMAT.sub("", text)
        tree = self.explain("AST", text, parameters)
        kind = tree[0].split()[0]
        if kind == "KillQueryQuery":
            return Statement(text, str(logged["query_id"]), kind, KILL_QUERY_READS, _target(tree))
        if not kind.startswith("Select"):
            return Statement(text, str(logged["query_id"]), kind, frozenset())
        tree = self.explain("QUERY TREE", text, parameters)
        assert re.match(r"(QUERY|UNION) id: ", tree[0]), f"not a query tree: {tree[:3]}"
        return Statement(text, str(logged["query_id"]), kind, reads(tree))


def reads(query_tree: list[str]) -> frozenset[str]:
    """The tables (and table functions) a query tree reads, but for its own temporary ones."""
    tables = set()
    for line in query_tree:
        if table := re.search(r"^\s*TABLE id: \d+, .*?table_name: ([^,\s]+)", line):
            if not table.group(1).startswith(OWN_TEMPORARY_TABLES):
                tables.add(table.group(1))
        elif function := re.search(r"^\s*TABLE_FUNCTION id: .*?table_function_name: (\w+)", line):
            tables.add(f"table function {function.group(1)}")
    return frozenset(tables)


def _target(kill_tree: list[str]) -> str | None:
    """The one query id a ``KILL QUERY WHERE query_id = '...'`` names, from its syntax tree."""
    text = "\n".join(kill_tree[1:])
    literal = re.fullmatch(
        r"\s*Function equals \(children 1\)\s+ExpressionList \(children 2\)\s+"
        r"Identifier query_id\s+Literal '([^']*)'\s*",
        text,
    )
    return literal.group(1) if literal else None


def ungranted(statements: list[Statement], granted: frozenset[str]) -> list[str]:
    """Each read the grants do not cover, and each statement of a kind they do not allow."""
    own_queries = {statement.query_id for statement in statements}
    found = []
    for statement in statements:
        if statement.kind == "KillQueryQuery" and statement.kill_target not in own_queries:
            found.append(f"KILL QUERY of a query not the reader's own: {statement.text}")
        elif not statement.kind.startswith(("Select", "KillQueryQuery")):
            found.append(f"a {statement.kind} statement: {statement.text}")
        for table in sorted(statement.tables - granted - READABLE_BY_EVERYONE):
            found.append(f"{table}, read by: {statement.text.strip()[:300]}")
    return found


def _late_call(day: dt.date, call_id: str) -> Call:
    return Call(
        call_id, "agent-001", dt.datetime.combine(day, dt.time(13), dt.UTC), 42.5, "Answered"
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, s3_server: S3Server) -> Iterator[list[Statement]]:
    """Every statement the reader sent during the pipeline's work, as the engine explains it."""
    folder = tmp_path_factory.mktemp("recording-server")
    log = folder / "statements.jsonl"
    server = start_server(folder / "data", STAND_IN_USERS, folder / "server.log", statement_log=log)
    try:
        reader = ClickHouseResource(
            host=server.host, port=server.port, username=READER, password=READER_PASSWORD
        )
        register_writer(reader, ClickHouseResource(host=server.host, port=server.port))
        source = SourceTable()  # the documented default.calls, on this server of its own
        create_calls_table(reader, source)
        insert_calls(reader, source, random_calls(DAYS[0], days=len(DAYS), calls_per_day=50))
        bucket = Bucket(f"grants-{uuid.uuid4().hex[:12]}", s3_server)
        s3_server.client().create_bucket(Bucket=bucket.name)
        _run_the_pipeline(reader, source, bucket)
        explainer = Explainer(f"{server.url}/")
        logged = [json.loads(line) for line in log.read_text().splitlines()]
        yield [explainer.statement(entry) for entry in logged if entry["user"] == READER]
    finally:
        server.stop()


def _run_the_pipeline(reader: ClickHouseResource, source: SourceTable, bucket: Bucket) -> None:
    measurement = measuring(source)
    materialize(reader, measurement, bucket.io_manager(), str(DAYS[-1]))
    built = build_definitions(
        Settings(
            start_date=str(DAYS[0] - dt.timedelta(days=30)),
            measurement=measurement,
            observe_window_days=WINDOW_DAYS,
        )
    )
    instance = dg.DagsterInstance.ephemeral()
    first = observe(built, instance, reader)
    insert_calls(reader, source, [_late_call(DAYS[0], "late-1")])
    observe(built, instance, reader, first.cursor)
    insert_calls(reader, source, [_late_call(DAYS[1], "late-2")])
    by_hand = dg.Definitions(
        assets=built.assets,
        asset_checks=built.asset_checks,
        jobs=[
            dg.define_asset_job("by_hand", selection=dg.AssetSelection.checks(LATE_CALLS_CHECK_KEY))
        ],
        resources={"clickhouse": reader, CSV_IO_MANAGER_KEY: bucket.io_manager()},
    )
    result = by_hand.resolve_job_def("by_hand").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    assert "late_days" in evaluation.metadata, "the check looked into the table's parts"
    impatient = reader.model_copy(update={"query_timeout_sec": 1})
    with pytest.raises(ClickHouseUnavailableError, match="CLICKHOUSE_QUERY_TIMEOUT_SEC"):
        impatient.query_polars(SLOW_QUERY)


def test_every_statement_the_reader_sends_is_covered_by_the_documented_grants(recorded):
    assert ungranted(recorded, GRANTS) == []


@pytest.mark.parametrize("left_out", sorted(GRANTS))
def test_each_documented_grant_is_needed(recorded, left_out):
    missing = ungranted(recorded, GRANTS - {left_out})
    assert missing and all(line.startswith(f"{left_out}, read by: ") for line in missing)


def test_the_engine_names_the_tables_of_subqueries_too(recorded):
    # Two of the pipeline's statements, whose tables are read off their text: scalar
    # subqueries, and a subquery under IN.
    source = SourceTable()
    parts_query, _ = build_parts_query(source)
    late_query, _ = build_recently_written_days_query(
        measuring(source), dt.datetime.now(dt.UTC), dt.datetime.now(dt.UTC), "UTC"
    )
    expected = {
        parts_query.strip(): {"system.parts", "system.mutations", "system.tables"},
        late_query.strip(): {"default.calls", "system.parts"},
    }
    found = {
        statement.text.strip(): set(statement.tables)
        for statement in recorded
        if statement.text.strip() in expected
    }
    assert found == expected


def test_a_kill_of_a_query_not_the_readers_own_is_not_covered():
    statements = [
        Statement("SELECT 1", "own", "SelectWithUnionQuery", frozenset({"system.one"})),
        Statement(
            "KILL QUERY WHERE query_id = 'other'",
            "kill",
            "KillQueryQuery",
            KILL_QUERY_READS,
            "other",
        ),
    ]
    assert ungranted(statements, KILL_QUERY_READS) == [
        "KILL QUERY of a query not the reader's own: KILL QUERY WHERE query_id = 'other'"
    ]


def test_a_documented_grant_this_test_cannot_hold_fails_the_parsing():
    text = f"{GRANTS_SECTION}\n\n```sql\nGRANT KILL QUERY ON *.* TO r;\n```\n"
    with pytest.raises(AssertionError, match="cannot hold: GRANT KILL QUERY"):
        documented_grants(text)
