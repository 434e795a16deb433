"""The hourly observation costs what changed: exact for every way a table's rows change, and
reading no part of the table when nothing did."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import dagster as dg
import pytest

from agent_metrics_pipeline.clickhouse.errors import ClickHouseQueryError
from agent_metrics_pipeline.clickhouse.resource import ClickHouseResource
from agent_metrics_pipeline.clickhouse.syntax import key_elements
from agent_metrics_pipeline.core.measurement import SourceTable
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.definitions import build_definitions
from agent_metrics_pipeline.observe.parts import DayReading, PartsSnapshot, plan_observation
from agent_metrics_pipeline_tests.helpers import (
    insert_calls,
    latest_observations,
    measuring,
    observe,
    random_calls,
    writer,
)
from agent_metrics_pipeline_tests.oracle import Call

TODAY = dt.datetime.now(dt.UTC).date()
DAYS = [TODAY - dt.timedelta(days=offset) for offset in range(5, 0, -1)]
WINDOW_DAYS = 7
COUNTED = "Answered"


class Observer:
    """The observation sensor on one instance, ticking as the daemon runs it when an
    observation is due."""

    def __init__(self, clickhouse, source: SourceTable, read_final: str = "auto") -> None:
        self.defs = build_definitions(
            Settings(
                start_date=str(DAYS[0] - dt.timedelta(days=30)),
                measurement=dataclasses.replace(
                    measuring(source), read_final=type(measuring(source).read_final)(read_final)
                ),
                observe_window_days=WINDOW_DAYS,
            )
        )
        self.clickhouse = clickhouse
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def observe(self) -> dict[str, dg.AssetObservation]:
        """Each day's observation as the instance holds it after the tick: the ones it
        recorded, and the ones it kept."""
        self.cursor = observe(self.defs, self.instance, self.clickhouse, self.cursor).cursor
        window = [TODAY - dt.timedelta(days=offset) for offset in range(WINDOW_DAYS, 0, -1)]
        return latest_observations(self.instance, window)


def versions(observations: dict[str, dg.AssetObservation]) -> dict[str, str]:
    return {day: event.tags["dagster/data_version"] for day, event in observations.items()}


def counted_rows(calls: Sequence[Call]) -> dict[str, Counter]:
    """Per day, the multiset of what a fingerprint covers: counted calls' agent, start, length."""
    rows: dict[str, Counter] = {}
    for call in calls:
        if call.status == COUNTED:
            day = call.started_at.date().isoformat()
            rows.setdefault(day, Counter())[
                (call.agent_id, call.started_at, call.duration_sec)
            ] += 1
    return rows


def marks_selected(clickhouse) -> int:
    """Granules the engine has read from MergeTree tables so far, in this process or server."""
    with writer(clickhouse).get_client() as client:
        return int(
            client.command("SELECT sum(value) FROM system.events WHERE event = 'SelectedMarks'")
            or 0
        )


def command(clickhouse, statement: str) -> None:
    with writer(clickhouse).get_client() as client:
        client.command(statement)


def pick(calls: list[Call], day_index: int, answered: bool) -> Call:
    day = DAYS[day_index]
    return next(
        call
        for call in calls
        if call.started_at.date() == day and (call.status == COUNTED) == answered
    )


Change = Callable[[object, SourceTable, list[Call]], list[Call]]


def insert_late_call(clickhouse, source, calls):
    late = Call(
        "late-1", "agent-001", dt.datetime.combine(DAYS[1], dt.time(13), dt.UTC), 42.5, COUNTED
    )
    insert_calls(clickhouse, source, [late])
    return [*calls, late]


def insert_on_two_days(clickhouse, source, calls):
    late = [
        Call(f"late-{day}", "agent-002", dt.datetime.combine(day, dt.time(9), dt.UTC), 7.0, COUNTED)
        for day in (DAYS[0], DAYS[3])
    ]
    insert_calls(clickhouse, source, late)
    return [*calls, *late]


def insert_uncounted_call(clickhouse, source, calls):
    missed = Call(
        "missed-1", "agent-001", dt.datetime.combine(DAYS[2], dt.time(8), dt.UTC), 3.0, "Missed"
    )
    insert_calls(clickhouse, source, [missed])
    return [*calls, missed]


def update_one(clickhouse, source, calls, target: Call, assignment: str, **fields):
    """``ALTER TABLE … UPDATE`` of one call, waiting for the mutation; the calls after it."""
    command(
        clickhouse,
        f"ALTER TABLE {source.qualified_name} UPDATE {assignment} "
        f"WHERE call_id = '{target.call_id}' SETTINGS mutations_sync = 2",
    )
    changed = dataclasses.replace(target, **fields)
    return [changed if call is target else call for call in calls]


def alter_update_length(clickhouse, source, calls):
    target = pick(calls, 2, answered=True)
    return update_one(
        clickhouse,
        source,
        calls,
        target,
        "duration_sec = duration_sec + 1",
        duration_sec=target.duration_sec + 1,
    )


def alter_delete(clickhouse, source, calls):
    target = pick(calls, 3, answered=True)
    command(
        clickhouse,
        f"ALTER TABLE {source.qualified_name} DELETE WHERE call_id = '{target.call_id}' "
        "SETTINGS mutations_sync = 2",
    )
    return [call for call in calls if call is not target]


def lightweight_delete(clickhouse, source, calls):
    target = pick(calls, 0, answered=True)
    command(clickhouse, f"DELETE FROM {source.qualified_name} WHERE call_id = '{target.call_id}'")
    return [call for call in calls if call is not target]


def status_out_of_counted(clickhouse, source, calls):
    target = pick(calls, 4, answered=True)
    return update_one(clickhouse, source, calls, target, "status = 'Missed'", status="Missed")


def status_into_counted(clickhouse, source, calls):
    target = pick(calls, 1, answered=False)
    return update_one(clickhouse, source, calls, target, f"status = '{COUNTED}'", status=COUNTED)


def empty_a_day(clickhouse, source, calls):
    start = dt.datetime.combine(DAYS[3], dt.time(), dt.UTC)
    command(
        clickhouse,
        f"ALTER TABLE {source.qualified_name} DELETE WHERE started_at >= "
        f"'{start:%Y-%m-%d %H:%M:%S}' AND started_at < "
        f"'{start + dt.timedelta(days=1):%Y-%m-%d %H:%M:%S}' SETTINGS mutations_sync = 2",
    )
    return [call for call in calls if call.started_at.date() != DAYS[3]]


def merge_parts(clickhouse, source, calls):
    command(clickhouse, f"OPTIMIZE TABLE {source.qualified_name} FINAL")
    return calls


def truncate(clickhouse, source, calls):
    command(clickhouse, f"TRUNCATE TABLE {source.qualified_name}")
    return []


CHANGES: list[Change] = [
    insert_late_call,
    insert_on_two_days,
    insert_uncounted_call,
    alter_update_length,
    alter_delete,
    lightweight_delete,
    status_out_of_counted,
    status_into_counted,
    empty_a_day,
    merge_parts,
    truncate,
]


def seeded(clickhouse, source: SourceTable, merges: bool = True) -> list[Call]:
    """Five days in two parts (the calls of every day split across two inserts). Without
    ``merges`` they stay as written; mutations then wait for merges to resume, so the tests
    that change rows leave merges on, at whatever moment they come."""
    if not merges:
        command(clickhouse, f"SYSTEM STOP MERGES {source.qualified_name}")
    calls = random_calls(DAYS[0], days=len(DAYS), calls_per_day=40, seed=97)
    insert_calls(clickhouse, source, calls[::2])
    insert_calls(clickhouse, source, calls[1::2])
    return calls


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__)
def test_the_observation_turns_exactly_the_changed_days(clickhouse, calls_table, change):
    calls = seeded(clickhouse, calls_table)
    observer = Observer(clickhouse, calls_table)
    before = versions(observer.observe())

    after_calls = change(clickhouse, calls_table, calls)
    after = versions(observer.observe())

    old_rows, new_rows = counted_rows(calls), counted_rows(after_calls)
    changed = {day for day in map(str, DAYS) if old_rows.get(day) != new_rows.get(day)}
    assert {day for day in before if before[day] != after[day]} == changed
    for day in map(str, DAYS):
        assert after[day].startswith(f"{sum(new_rows.get(day, Counter()).values())}:"), day
    # The same versions as fingerprinting every day afresh, on an instance with no history.
    assert versions(Observer(clickhouse, calls_table).observe()) == after


@contextlib.contextmanager
def table_like(
    clickhouse, calls_table: SourceTable, name: str, engine: str
) -> Iterator[SourceTable]:
    table = SourceTable(table=f"{calls_table.table}_{name}")
    command(
        clickhouse, f"CREATE TABLE {table.qualified_name} AS {calls_table.qualified_name} {engine}"
    )
    try:
        yield table
    finally:
        command(clickhouse, f"DROP TABLE IF EXISTS {table.qualified_name}")


def test_an_unchanged_table_is_observed_from_its_metadata_alone(clickhouse, calls_table):
    # Granules of 8 rows: each day spans several, so reading one day reads fewer than all.
    engine = "ENGINE = MergeTree ORDER BY started_at SETTINGS index_granularity = 8"
    with table_like(clickhouse, calls_table, "fine_grained", engine) as table:
        seeded(clickhouse, table, merges=False)
        observer = Observer(clickhouse, table)
        first = marks_selected(clickhouse)
        observations = observer.observe()
        whole = marks_selected(clickhouse) - first

        unchanged = marks_selected(clickhouse)
        assert versions(observer.observe()) == versions(observations)
        assert marks_selected(clickhouse) - unchanged == 0, "no granule of the table is read"

        insert_late_call(clickhouse, table, [])
        one_day = marks_selected(clickhouse)
        late = versions(observer.observe())
        assert 0 < marks_selected(clickhouse) - one_day < whole / 2, "only what holds that day"
        assert versions(Observer(clickhouse, table).observe()) == late


def test_a_versioned_table_read_with_final_stays_exact(clickhouse, calls_table):
    engine = "ENGINE = ReplacingMergeTree ORDER BY (started_at, call_id)"
    with table_like(clickhouse, calls_table, "versioned", engine) as versioned:
        calls = seeded(clickhouse, versioned, merges=False)
        observer = Observer(clickhouse, versioned)
        before = versions(observer.observe())
        assert versions(observer.observe()) == before

        target = pick(calls, 2, answered=True)
        newer = dataclasses.replace(target, duration_sec=target.duration_sec + 5)
        insert_calls(clickhouse, versioned, [newer])
        after = versions(observer.observe())
        assert {day for day in before if before[day] != after[day]} == {str(DAYS[2])}
        assert versions(Observer(clickhouse, versioned).observe()) == after

        # A newer version that is not counted hides the counted one; dropping its part brings
        # the counted one back, though no part that held a counted call changed.
        hidden = pick(calls, 3, answered=True)
        insert_calls(clickhouse, versioned, [dataclasses.replace(hidden, status="Missed")])
        hiding = versions(observer.observe())
        assert {day for day in after if after[day] != hiding[day]} == {str(DAYS[3])}
        with writer(clickhouse).get_client() as client:
            part = client.command(
                f"SELECT _part FROM {versioned.qualified_name} "
                f"WHERE call_id = '{hidden.call_id}' AND status = 'Missed'"
            )
        command(clickhouse, f"ALTER TABLE {versioned.qualified_name} DROP PART '{part}'")
        assert versions(observer.observe()) == after


class RefusingParts:
    """A session whose server refuses ``system.parts`` to the reader, as one that requires
    grants on system tables does (the stand-in has no grants)."""

    def __init__(self, session) -> None:
        self.session = session

    @property
    def description(self) -> str:
        return self.session.description

    def query_polars(self, sql, parameters=None):
        if "FROM system.parts" in sql:
            raise ClickHouseQueryError("Not enough privileges. (ACCESS_DENIED)")
        return self.session.query_polars(sql, parameters)


def test_a_reader_refused_the_parts_still_gets_every_day_fingerprinted(
    clickhouse, calls_table, monkeypatch
):
    calls = seeded(clickhouse, calls_table)
    observer = Observer(clickhouse, calls_table)
    expected = versions(observer.observe())
    opened = ClickHouseResource.session

    @contextlib.contextmanager
    def refusing(self, **options):
        with opened(self, **options) as session:
            yield RefusingParts(session)

    monkeypatch.setattr(ClickHouseResource, "session", refusing)
    refused = Observer(clickhouse, calls_table)
    assert versions(refused.observe()) == expected
    for day in map(str, DAYS):
        counted = counted_rows(calls).get(day, Counter())
        assert expected[day].startswith(f"{sum(counted.values())}:")


# The planning rules on their own, over made-up part names and clocks.

BASIS = "basis"
READ_AT = 1_000_000
OLD = READ_AT - 3600


def reading(*parts: str, read_at: int = READ_AT, **changes) -> DayReading:
    return dataclasses.replace(
        DayReading(
            calls=len(parts),
            fingerprint=f"{len(parts)}:x",
            parts=parts,
            read_at=read_at,
            table_uuid="uuid",
            basis=BASIS,
        ),
        **changes,
    )


def snapshot(modified: dict[str, int], **changes) -> PartsSnapshot:
    return dataclasses.replace(
        PartsSnapshot(
            read_at=READ_AT + 3600,
            modified=modified,
            pending_mutations=0,
            table_uuid="uuid",
            sorting_key=("started_at",),
        ),
        **changes,
    )


def plan(days: dict[str, DayReading | None], parts: dict[str, int], final=False, **changes):
    return plan_observation(
        list(days), days, snapshot(parts, **changes), BASIS, final, started_at="started_at"
    )


def test_a_day_keeps_its_fingerprint_while_its_parts_stay_and_no_unseen_part_exists():
    kept = plan(
        {"a": reading("p1"), "b": reading("p1", "p2"), "c": reading()}, {"p1": OLD, "p2": OLD}
    )
    assert kept.unchanged == {"a", "b", "c"} and kept.parts_to_look_into == ()


def test_a_removed_or_recreated_part_or_another_basis_fingerprints_the_day_again():
    mixed = plan(
        {
            "gone": reading("p9"),
            "recreated": reading("p2"),
            "basis": reading("p1", basis="other"),
            "uuid": reading("p1", table_uuid="other"),
            "unlisted": reading("p1", parts=None),
            "never": None,
            "kept": reading("p1"),
        },
        {"p1": OLD, "p2": READ_AT + 10},
    )
    assert mixed.unchanged == {"kept"}
    # p2 is not the part "recreated" saw: it may hold calls of any day.
    assert mixed.parts_to_look_into == ("p2",)
    assert mixed.changed_days([("kept", "p2")]) == {"kept"}
    assert mixed.changed_days([("kept", "p1")]) == set()


def test_a_part_seen_by_a_later_reading_only_is_looked_into_for_the_earlier_day():
    # "early" was last read before p2 existed; "late" saw p2, which holds none of its calls.
    split = plan(
        {"early": reading("p1", read_at=READ_AT - 60), "late": reading("p1", "p2")},
        {"p1": OLD, "p2": READ_AT - 30, "old": OLD},
    )
    assert split.parts_to_look_into == ("old", "p2")
    assert split.changed_days([("early", "p2"), ("late", "p2")]) == {"early"}
    assert split.changed_days([("early", "old"), ("late", "old")]) == {"early", "late"}


@pytest.mark.parametrize(
    ("extra_part", "changes", "final", "because"),
    [
        ("new", {"pending_mutations": 1}, False, "mutation"),
        ("patch-abc-all_3_3_0_2", {}, False, "patch parts"),
        ("new", {"sorting_key": ("call_id",)}, True, "FINAL"),
    ],
)
def test_what_metadata_cannot_vouch_for_fingerprints_every_day(extra_part, changes, final, because):
    parts = {"p1": OLD, extra_part: READ_AT + 5}
    everything = plan({"a": reading("p1")}, parts, final, **changes)
    assert everything.unchanged == set() and because in (everything.everything_because or "")


def test_a_reading_lists_only_the_parts_its_snapshot_saw():
    # p2 was committed after the snapshot, while the fingerprint query ran: left for the next
    # observation to look into, as new.
    assert snapshot({"p1": OLD}).listed(["p2", "p1"]) == ("p1",)


def test_the_sorting_key_splits_only_between_its_elements():
    assert key_elements("started_at, call_id") == ("started_at", "call_id")
    assert key_elements("if(flag, started_at, created), `call id`") == (
        "if(flag, started_at, created)",
        "call id",
    )
    assert key_elements("") == ()


def test_a_final_read_keyed_by_start_time_looks_only_into_new_parts():
    keyed = plan({"a": reading("p1")}, {"p1": OLD, "new": READ_AT + 5}, final=True)
    assert keyed.unchanged == {"a"} and keyed.parts_to_look_into == ("new",)


@pytest.mark.parametrize("seed", range(20))
def test_the_plan_matches_the_rules_applied_day_by_day(seed):
    """Readings at several times over shared, dropped and recreated parts: the plan agrees
    with rule 2 spelled out for each day on its own, over every reading of the window."""
    rng = random.Random(seed)
    times = sorted(rng.sample(range(READ_AT - 600, READ_AT + 1), 3))
    names = [f"p{index}" for index in range(12)]
    parts = {name: rng.choice([OLD, *times, READ_AT + 60]) for name in rng.sample(names, 9)}
    days = {
        f"d{index}": reading(*rng.sample(names, rng.randint(0, 4)), read_at=rng.choice(times))
        for index in range(8)
    }
    planned = plan(days, parts)
    current = snapshot(parts)

    def known_to_day(day: str) -> set[str]:
        return {
            part
            for other in days.values()
            if other.read_at <= days[day].read_at
            for part in other.parts
            if current.saw(part, other)
        }

    expected = {
        day for day, read in days.items() if all(current.saw(part, read) for part in read.parts)
    }
    assert planned.unchanged == expected
    assert set(planned.parts_to_look_into) == {
        part for day in expected for part in parts if part not in known_to_day(day)
    }
    for day in expected:
        for part in parts:
            assert planned.changed_days([(day, part)]) == (
                set() if part in known_to_day(day) else {day}
            )


def test_an_unchanged_source_records_nothing_and_a_change_records_once(clickhouse, calls_table):
    """The instance grows with what changes: an unchanged observation records no event, a
    change records the window's readings once, and the next unchanged one records nothing."""
    calls = seeded(clickhouse, calls_table, merges=False)
    observer = Observer(clickhouse, calls_table)

    def tick():
        result = observe(observer.defs, observer.instance, clickhouse, observer.cursor)
        observer.cursor = result.cursor
        return result

    first = tick()
    assert {e.partition for e in first.asset_events if isinstance(e, dg.AssetObservation)} == {
        str(TODAY - dt.timedelta(days=offset)) for offset in range(WINDOW_DAYS, 0, -1)
    }
    for _ in range(2):
        unchanged = tick()
        assert unchanged.asset_events == [] and "Fingerprinted 0 of" in unchanged.skip_message

    late = dataclasses.replace(calls[0], call_id="late-call", duration_sec=77.0, status=COUNTED)
    insert_calls(clickhouse, calls_table, [late])
    changed = tick()
    recorded = {e.partition: e for e in changed.asset_events if isinstance(e, dg.AssetObservation)}
    day = str(late.started_at.date())
    before = versions(latest_observations(observer.instance, [late.started_at.date()]))
    assert recorded[day].tags["dagster/data_version"] == before[day]
    counted = counted_rows([*calls, late]).get(day, Counter())
    assert before[day].startswith(f"{sum(counted.values())}:")
    assert tick().asset_events == [], "after a change, an unchanged source records nothing"
