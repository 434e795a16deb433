"""Late calls outside the observation window: days older than the window are not fingerprinted
at each observation, so each observation looks for their calls in the table parts written since
it last looked. The observation does it with each reading; the check can also be run by hand
(``source_asset``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dagster as dg

from agent_metrics_pipeline.core.names import CALLS_ASSET_NAME
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.observe.queries import build_recently_written_days_query
from agent_metrics_pipeline.observe.readings import (
    fingerprints,
    last_readings,
    observation_event,
    observation_window,
)

if TYPE_CHECKING:
    from agent_metrics_pipeline.clickhouse.relation import SourceRelation
    from agent_metrics_pipeline.clickhouse.session import QueryRunner
    from agent_metrics_pipeline.core.measurement import Measurement
    from agent_metrics_pipeline.observe.parts import DayReading

LATE_CALLS_CHECK = "no_late_calls_outside_window"
LATE_CALLS_CHECK_KEY = dg.AssetCheckKey(dg.AssetKey(CALLS_ASSET_NAME), LATE_CALLS_CHECK)
# Part modification times have second resolution and the engine's clock is not Dagster's.
PARTS_CLOCK_MARGIN = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class LateCalls:
    """What a look for late calls found: the days whose calls changed, with their new readings,
    among the days older than the window found in parts written since the last look."""

    window_start: dt.date
    looked_at: list[dt.date] = field(default_factory=list)
    late: dict[dt.date, DayReading] = field(default_factory=dict)
    # Why nothing was looked at, when nothing could be, and the source's engine then.
    note: str | None = None
    source_engine: str = ""
    # The server refused what the look reads (system.parts), and what it said.
    refused: str | None = None

    @property
    def passed(self) -> bool:
        return not self.late and self.refused is None

    @property
    def metadata(self) -> dict[str, object]:
        if self.refused is not None:
            return {"refused": self.refused}
        if self.note is not None:
            return {"source_engine": self.source_engine or "unknown", "note": self.note}
        return {
            "late_days": keys_of(self.late),
            "window_starts": self.window_start.isoformat(),
            "days_looked_at": keys_of(self.looked_at),
        }

    @property
    def description(self) -> str | None:
        if self.refused is not None:
            return (
                f"Could not look for late calls: {self.refused}. Grant the reader SELECT on "
                "system.parts."
            )
        if self.passed:
            return None
        return (
            f"Calls arrived late for {', '.join(keys_of(self.late))}, older than the observation "
            "window: materialize these days to republish them."
        )

    def observations(self) -> list[dg.AssetObservation]:
        """The late days' new readings, which turn them stale."""
        return [observation_event(day, reading) for day, reading in self.late.items()]

    def evaluation(self) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=LATE_CALLS_CHECK_KEY.asset_key,
            check_name=LATE_CALLS_CHECK,
            passed=self.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=self.metadata,
            description=self.description,
        )


def look_for_late_calls(
    session: QueryRunner,
    instance: dg.DagsterInstance,
    measurement: Measurement,
    partitions_def: dg.DailyPartitionsDefinition,
    window_days: int,
    relation: SourceRelation,
    since: dt.datetime | None,
) -> LateCalls:
    """The days before the window whose counted calls changed in parts written since ``since``
    (None: the first look, which only notes that later looks start from it), on the source
    ``relation`` the caller read."""
    window_start = partitions_def.time_window_for_partition_key(
        observation_window(partitions_def, window_days)[0].isoformat()
    ).start
    if not relation.has_parts:
        return LateCalls(
            window_start.date(),
            note=(
                f"Not looked at: the source is a {relation.engine or 'relation'} without storage "
                "parts of its own, so what was written since the last look cannot be told apart. "
                "Days older than the observation window are not republished by themselves: "
                "materialize a day whose calls changed, or widen "
                "AGENT_METRICS_OBSERVE_WINDOW_DAYS."
            ),
            source_engine=relation.engine,
        )
    if since is None:
        return LateCalls(
            window_start.date(),
            note="first look: later observations look at what arrives",
            source_engine=relation.engine,
        )
    written = session.query_polars(
        *build_recently_written_days_query(
            measurement, window_start, since - PARTS_CLOCK_MARGIN, partitions_def.timezone
        )
    )
    first_key = partitions_def.get_first_partition_key()
    candidates = [
        date
        for date in written.get_column("date")
        if first_key is not None and date >= dt.date.fromisoformat(first_key)
    ]
    late = {}
    if candidates:
        current = fingerprints(session, measurement, partitions_def, candidates, relation)
        recorded = last_readings(instance, candidates)
        # A merge rewrites parts without changing rows: the fingerprint tells.
        late = {
            day: reading
            for day, reading in current.items()
            if day in recorded and recorded[day].fingerprint != reading.fingerprint
        }
    return LateCalls(window_start.date(), candidates, late)
