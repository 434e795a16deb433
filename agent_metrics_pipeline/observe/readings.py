"""Readings of the source's days: each day's count and fingerprint of its counted calls, and
on a table stored in parts the parts holding them, recorded as observations of ``calls``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import dagster as dg

from agent_metrics_pipeline.clickhouse.errors import ClickHouseQueryError
from agent_metrics_pipeline.clickhouse.syntax import key_elements
from agent_metrics_pipeline.core.errors import no_retry_for_permanent_errors
from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME
from agent_metrics_pipeline.core.partitions import days_of, ended_day_keys, format_days, keys_of
from agent_metrics_pipeline.observe.parts import (
    DayReading,
    ObservationPlan,
    PartsSnapshot,
    plan_observation,
)
from agent_metrics_pipeline.observe.queries import (
    build_active_parts_query,
    build_days_in_parts_query,
    build_fingerprint_query,
    build_parts_of_days_query,
    build_parts_query,
    fingerprint_basis,
)

if TYPE_CHECKING:
    from agent_metrics_pipeline.clickhouse.relation import SourceRelation
    from agent_metrics_pipeline.clickhouse.session import QueryRunner
    from agent_metrics_pipeline.core.measurement import Measurement, SourceTable

DATA_VERSION_TAG = "dagster/data_version"
EMPTY_DAY_FINGERPRINT = "0:0"


@dataclass(frozen=True)
class Readings:
    """Each day's reading, the days fingerprinted again, and the plan that kept the others
    (none for a source without parts)."""

    by_day: dict[dt.date, DayReading]
    fingerprinted: list[dt.date]
    plan: ObservationPlan | None = None
    # What the instance held for each day before this observation.
    recorded: dict[dt.date, DayReading] = field(default_factory=dict)

    def to_record(self) -> dict[dt.date, DayReading]:
        """The readings to record: of the days new to the window or with other calls or parts,
        and of every day fingerprinted again from the table's parts (its parts then stand at
        this observation's time). An unchanged source records nothing. A day kept is not
        recorded again: the next observation looks at the parts written since its recorded
        time, which holds as well, and costs a look into parts that other days' readings
        recorded since (pruned by the day's bounds)."""
        fingerprinted = set(self.fingerprinted)
        return {
            day: reading
            for day, reading in self.by_day.items()
            if day not in self.recorded
            or replace(reading, read_at=None) != replace(self.recorded[day], read_at=None)
            or (day in fingerprinted and reading.parts is not None)
        }

    def summary(self) -> str:
        """What the observation did, in a line for the logs."""
        days, changed, plan = list(self.by_day), self.fingerprinted, self.plan
        span, recorded = format_days(days), f"; {len(self.to_record())} recorded"
        if plan is None or plan.everything_because:
            why = plan.everything_because if plan else "the source has no parts to compare"
            return f"Fingerprinted {len(days)} day(s), {span}: {why}{recorded}"
        kept = len(days) - len(changed)
        return (
            f"Fingerprinted {len(changed)} of {len(days)} day(s), {span}"
            + (f" ({', '.join(keys_of(changed))})" if 0 < len(changed) <= 5 else "")
            + f"; {kept} kept their fingerprints: no part holding their calls changed"
            + recorded
        )


def observation_window(
    partitions_def: dg.DailyPartitionsDefinition, window_days: int
) -> list[dt.date]:
    """The newest ``window_days`` days that have ended."""
    return days_of(ended_day_keys(partitions_def)[-window_days:])


def _bounds(
    partitions_def: dg.DailyPartitionsDefinition, days: Sequence[dt.date]
) -> list[tuple[dt.datetime, dt.datetime]]:
    windows = [partitions_def.time_window_for_partition_key(day.isoformat()) for day in days]
    return [(window.start, window.end) for window in windows]


def read_parts(clickhouse: QueryRunner, source: SourceTable) -> PartsSnapshot:
    """The table's active parts, as the server lists them now."""
    row = clickhouse.query_polars(*build_parts_query(source)).row(0, named=True)
    return PartsSnapshot(
        read_at=int(row["read_at"]),
        modified=dict(zip(row["parts"], (int(m) for m in row["modified"]), strict=True)),
        pending_mutations=int(row["pending_mutations"]),
        table_uuid=row["table_uuid"] or "",
        sorting_key=key_elements(row["sorting_key"] or ""),
    )


def fingerprints(
    clickhouse: QueryRunner,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[dt.date],
    relation: SourceRelation,
    snapshot: PartsSnapshot | None = None,
) -> dict[dt.date, DayReading]:
    """Calls counted and fingerprint of each day, from one query, of the rows as the metrics
    read them (the latest versions only, when they read FINAL). With the table's parts
    ``snapshot``, taken before this query, each day also records the parts holding its calls."""
    if snapshot is not None and not snapshot.vouches_for_days:
        snapshot = None  # its lists would not tell the next observation what it needs to know
    final = relation.reads_final(measurement.read_final)
    bounds = _bounds(partitions_def, days)
    with no_retry_for_permanent_errors():
        rows = clickhouse.query_polars(
            *build_fingerprint_query(
                measurement,
                bounds,
                partitions_def.timezone,
                final=final,
                with_parts=snapshot is not None and not final,
            )
        )
        # Read with FINAL, a day depends on every part holding a row of it, of any status or
        # version: a newer version in one part hides an older one in another.
        parts_rows = (
            clickhouse.query_polars(
                *build_parts_of_days_query(measurement, bounds, partitions_def.timezone)
            )
            if snapshot is not None and final
            else rows
        )
    parts_of = dict.fromkeys(days, ())
    if snapshot is not None:
        for date, parts in parts_rows.select("date", "parts").iter_rows():
            parts_of[date] = snapshot.listed(parts)
    found = {
        date: (calls, f"{calls}:{row_hash}")
        for date, calls, row_hash in rows.select("date", "calls", "row_hash").iter_rows()
    }
    basis = fingerprint_basis(measurement, partitions_def.timezone, final)
    readings = {}
    for day in days:
        calls, fingerprint = found.get(day, (0, EMPTY_DAY_FINGERPRINT))
        readings[day] = (
            DayReading(calls, fingerprint)
            if snapshot is None
            else DayReading(
                calls,
                fingerprint,
                parts=parts_of[day],
                read_at=snapshot.read_at,
                table_uuid=snapshot.table_uuid,
                basis=basis,
            )
        )
    return readings


def take_readings(
    clickhouse: QueryRunner,
    instance: dg.DagsterInstance,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    days: Sequence[dt.date],
    relation: SourceRelation,
) -> Readings:
    """Each day's reading: taken again for the days whose parts changed, kept for the others.

    A source without parts of its own (a view) is fingerprinted whole every time.
    """
    previous = last_readings(instance, days)
    if not relation.has_parts:
        return Readings(
            fingerprints(clickhouse, measurement, partitions_def, days, relation),
            list(days),
            recorded=previous,
        )
    try:
        snapshot = read_parts(clickhouse, measurement.source)
    except ClickHouseQueryError as error:
        # A server that requires grants on system tables may refuse them to a reader.
        return Readings(
            fingerprints(clickhouse, measurement, partitions_def, days, relation),
            list(days),
            ObservationPlan(
                frozenset(),
                (),
                everything_because="the server refused to list the table's parts (grant the "
                f"reader SELECT on system.parts and system.mutations): {error}",
            ),
            previous,
        )
    final = relation.reads_final(measurement.read_final)
    plan = plan_observation(
        days,
        previous,
        snapshot,
        fingerprint_basis(measurement, partitions_def.timezone, final),
        final,
        started_at=measurement.source.column("started_at"),
    )
    unchanged = set(plan.unchanged)
    if unchanged and plan.parts_to_look_into:
        with no_retry_for_permanent_errors():
            found = clickhouse.query_polars(
                *build_days_in_parts_query(
                    measurement,
                    list(plan.parts_to_look_into),
                    _bounds(partitions_def, sorted(unchanged)),
                    partitions_def.timezone,
                    any_status=final,
                )
            )
            still_active = clickhouse.query_polars(
                *build_active_parts_query(measurement.source, list(plan.parts_to_look_into))
            ).item(0, "still_active")
        if still_active < len(plan.parts_to_look_into):
            # A merge took a part away before the query read it: what it held is unknown.
            unchanged.clear()
        unchanged -= plan.changed_days(found.select("date", "part").iter_rows())
    changed = [day for day in days if day not in unchanged]
    readings = (
        fingerprints(clickhouse, measurement, partitions_def, changed, relation, snapshot)
        if changed
        else {}
    )
    for day in unchanged:
        # Still true at this snapshot (the recorded time stays: see Readings.to_record).
        readings[day] = replace(previous[day], read_at=snapshot.read_at)
    return Readings({day: readings[day] for day in days}, changed, plan, previous)


def last_readings(
    instance: dg.DagsterInstance, days: Sequence[dt.date]
) -> dict[dt.date, DayReading]:
    """What the latest observation of each of ``days`` recorded, for the days observed: two
    reads of the event log, however many days."""
    asset_key = dg.AssetKey(CALLS_ASSET_NAME)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_OBSERVATION, partitions=set(keys_of(days))
    )
    if not latest:
        return {}
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=len(latest),
    ).records
    readings = {}
    for record in records:
        observation = record.asset_observation
        metadata = {key: value.value for key, value in observation.metadata.items()}
        parts = metadata.get("source_parts")
        readings[dt.date.fromisoformat(observation.partition)] = DayReading(
            calls=int(metadata.get("calls") or 0),
            fingerprint=observation.tags.get(DATA_VERSION_TAG, ""),
            parts=tuple(parts) if isinstance(parts, list) else None,
            read_at=metadata.get("parts_read_at"),
            table_uuid=metadata.get("source_table_uuid"),
            basis=metadata.get("fingerprint_basis"),
        )
    return readings


def observation_event(day: dt.date, reading: DayReading) -> dg.AssetObservation:
    """What the instance records of a reading: the day's fingerprint as its data version."""
    metadata: dict[str, object] = {"calls": reading.calls, "fingerprint": reading.fingerprint}
    if reading.parts is not None:
        metadata |= {
            "source_parts": dg.MetadataValue.json(list(reading.parts)),
            "parts_read_at": reading.read_at,
            "source_table_uuid": reading.table_uuid,
            "fingerprint_basis": reading.basis,
        }
    return dg.AssetObservation(
        asset_key=CALLS_ASSET_NAME,
        partition=day.isoformat(),
        tags={DATA_VERSION_TAG: reading.fingerprint},
        metadata=metadata,
    )
