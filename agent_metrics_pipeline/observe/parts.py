"""Which days of a MergeTree source may have changed since they were fingerprinted, from the
server's metadata.

A MergeTree table keeps its rows in immutable parts. Inserts, merges, mutations (``ALTER …
UPDATE``/``DELETE``, lightweight deletes), attached and dropped partitions each add or remove
whole parts, and a part that changes gets a new name. So a day's fingerprint records the names
of the parts holding its counted calls, and the day still has exactly those calls when

1. every one of those parts is still active, and
2. no other active part holds a counted call of the day.

(1) is read from ``system.parts`` alone. For (2), a part that an earlier reading of any day
saw, no later than this day's reading, holds none of this day's calls (or that reading of the
day would have listed it); only the parts no reading saw are looked into, and only within the
day's bounds, which the table's primary key or partitions usually answer without reading a
granule. Everything else reuses the recorded fingerprint.

Where that reasoning does not hold, every day is fingerprinted again: mutations still running
(a server may apply them on the fly, before any part changes), patch parts of lightweight
updates (applied on read), and a FINAL read with new parts when the sorting key lacks the start
column (a newer version in a new part then hides a row of an old part, whose day may be any
day). A reading taken with mutations or patch parts pending lists no parts, so the next
observation fingerprints every day again too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Lightweight updates keep their new values in patch parts, applied when the table is read.
PATCH_PART_PREFIX = "patch-"


@dataclass(frozen=True)
class PartsSnapshot:
    """The source table's active parts, as ``system.parts`` lists them at ``read_at``."""

    read_at: int  # the server's clock, in seconds since the epoch
    modified: Mapping[str, int]  # part name → modification time, on the same clock
    pending_mutations: int
    table_uuid: str
    sorting_key: tuple[str, ...]

    @property
    def vouches_for_days(self) -> bool:
        """Whether the parts alone say which days changed (see the module's docstring)."""
        return not self.pending_mutations and not any(
            name.startswith(PATCH_PART_PREFIX) for name in self.modified
        )

    def saw(self, part: str, reading: DayReading) -> bool:
        """Whether ``part`` is active and is the part of that name the reading saw: one modified
        after the reading is a later part under a name used before (a table recreated, say).
        A reading lists only parts of its snapshot, all committed before it was taken."""
        return part in self.modified and self.modified[part] <= (reading.read_at or 0)

    def listed(self, parts: Iterable[str]) -> tuple[str, ...]:
        """Of the parts a fingerprint query read, those this snapshot lists: a part committed
        after the snapshot is left for the next observation to look into, as new."""
        return tuple(sorted(part for part in parts if part in self.modified))


@dataclass(frozen=True)
class DayReading:
    """What the latest observation of a day recorded."""

    calls: int
    fingerprint: str
    # Set when the day was read from a table stored in parts:
    parts: tuple[str, ...] | None = None
    read_at: int | None = None
    table_uuid: str | None = None
    basis: str | None = None


@dataclass(frozen=True)
class ObservationPlan:
    """The days whose recorded fingerprint holds if no part in ``parts_to_look_into`` holds
    their calls, and for each of them the parts known to hold none."""

    unchanged: frozenset[dt.date]
    parts_to_look_into: tuple[str, ...]
    known_parts: Mapping[dt.date, frozenset[str]] = field(default_factory=dict)
    # Why every day is fingerprinted again, when it is:
    everything_because: str | None = None

    def changed_days(self, day_parts: Iterable[tuple[dt.date, str]]) -> set[dt.date]:
        """The planned-unchanged days found, in the parts looked into, in a part they did not
        know."""
        return {
            day
            for day, part in day_parts
            if day in self.unchanged and part not in self.known_parts[day]
        }


def plan_observation(
    days: Sequence[dt.date],
    previous: Mapping[dt.date, DayReading | None],
    snapshot: PartsSnapshot,
    basis: str,
    final: bool,
    started_at: str,
) -> ObservationPlan:
    """Rule 1 of the module's docstring by metadata alone, and for rule 2 the parts to look
    into: those that no reading of the day's or an earlier one saw.

    Read with FINAL, a row is hidden by a newer version of the same sorting key: when the start
    column ``started_at`` is part of that key, the newer version is of the same day, and the
    parts looked into tell which days changed from rows of any status.
    """
    if snapshot.pending_mutations:
        return ObservationPlan(
            frozenset(),
            (),
            everything_because=f"{snapshot.pending_mutations} mutation(s) of "
            "the table still running",
        )
    if not snapshot.vouches_for_days:
        return ObservationPlan(
            frozenset(), (), everything_because="the table has patch parts of lightweight updates"
        )
    usable = {
        day: reading
        for day, reading in previous.items()
        if reading is not None
        and reading.parts is not None
        and reading.read_at is not None
        and reading.basis == basis
        and reading.table_uuid == snapshot.table_uuid
    }
    unchanged = [
        day
        for day in days
        if day in usable and all(snapshot.saw(part, usable[day]) for part in usable[day].parts)
    ]
    # The parts known to hold none of a day's calls grow with the reading's time: one set per
    # time readings were taken at, shared by its days, keeps this linear in the parts listed.
    seen_at: dict[int, set[str]] = {}
    for reading in usable.values():
        seen_at.setdefault(reading.read_at, set()).update(
            part for part in reading.parts if snapshot.saw(part, reading)
        )
    known_by_time: dict[int, frozenset[str]] = {}
    seen: set[str] = set()
    for read_at in sorted(seen_at):
        seen |= seen_at[read_at]
        known_by_time[read_at] = frozenset(seen)
    known_parts = {day: known_by_time[usable[day].read_at] for day in unchanged}
    to_look_into = sorted(
        set().union(
            *(
                snapshot.modified.keys() - known_by_time[read_at]
                for read_at in {usable[day].read_at for day in unchanged}
            )
        )
    )
    if final and to_look_into and started_at not in snapshot.sorting_key:
        return ObservationPlan(
            frozenset(),
            (),
            everything_because="the table is read with FINAL, has new parts and its sorting key "
            f"lacks {started_at}: a newer version in a new part can change any day",
        )
    return ObservationPlan(frozenset(unchanged), tuple(to_look_into), known_parts)
