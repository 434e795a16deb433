"""What the checks hold and what they conclude: the evidence of a run's days, one check's
finding, and each check's verdict on each day, recorded against that day's partition."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import dagster as dg

# Which materialization an evaluation judged: Dagster exports the evaluation but not this part
# of it in 1.13 (pinned); the per-day check tests fail if it moves.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.names import SAMPLE_SIZE
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.storage.published_format import dated_outside

if TYPE_CHECKING:
    from agent_metrics_pipeline.aggregate.metrics import SourceQuality
    from agent_metrics_pipeline.core.measurement import Measurement

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


class DayTotals(NamedTuple):
    calls: int
    longest_p90_call_length_sec: float | None


@dataclass(frozen=True)
class Evidence:
    """What the step holds when the checks run: nothing here costs a second query.

    A day sees its own rows, counts and samples, and any row dated outside the run's days,
    which no day may publish. The checks judge every day of a chunk at once: a day's figures
    come from one pass over the chunk, and rows are split by day only when a check finds any.
    """

    metrics: pl.DataFrame
    quality: SourceQuality
    # Calls per day of each counted status and each status spelled like one (see
    # queries.status_spelling): date, status, calls.
    statuses: pl.DataFrame
    days: Sequence[dt.date]
    measurement: Measurement
    # The calls the source stores on each of the run's days and on the days their usual volume
    # comes from, any status.
    calls_held: Mapping[dt.date, int] = dataclasses.field(default_factory=dict)

    def rows_by_day(self, rows: pl.DataFrame) -> dict[dt.date, pl.DataFrame]:
        """Some of the metrics' rows, as each day sees them."""
        if rows.is_empty():
            return dict.fromkeys(self.days, rows)
        dated = set(days_in(rows))
        outside = not dated <= set(self.days)
        none = rows.clear()
        return {
            day: rows.filter((pl.col("date") == day) | dated_outside(self.days))
            if outside or day in dated
            else none
            for day in self.days
        }

    @functools.cached_property
    def day_totals(self) -> dict[dt.date, DayTotals]:
        """Each day's calls and longest p90, over the rows it sees."""
        totals = (pl.col("total_calls").sum(), pl.col("p90_call_length_sec").max())
        if self.metrics.filter(dated_outside(self.days)).is_empty():
            per_day = self.metrics.group_by("date").agg(*totals)
            found = {day: DayTotals(*figures) for day, *figures in per_day.iter_rows()}
        else:
            found = {
                day: DayTotals(*rows.select(*totals).row(0))
                for day, rows in self.rows_by_day(self.metrics).items()
            }
        return {day: found.get(day, DayTotals(0, None)) for day in self.days}

    @functools.cached_property
    def statuses_by_day(self) -> dict[dt.date, dict[str, int]]:
        """Calls per status on each day, statuses in order."""
        by_day: dict[dt.date, dict[str, int]] = {day: {} for day in self.days}
        for day, status, calls in self.statuses.select("date", "status", "calls").iter_rows():
            if day in by_day:
                by_day[day][status] = by_day[day].get(status, 0) + int(calls)
        return {day: dict(sorted(seen.items())) for day, seen in by_day.items()}


@dataclass(frozen=True)
class Finding:
    """What one check found on one day. A check fails the day exactly when it names failing
    days."""

    failing_days: list[dt.date]
    metadata: dict[str, dg.RawMetadataValue]


def days_in(frame: pl.DataFrame) -> list[dt.date]:
    """The days ``frame`` has rows of."""
    return frame.get_column("date").unique().sort().to_list()


def offending_rows(
    offending: pl.DataFrame, source_days: Sequence[dt.date] = (), **metadata: dg.RawMetadataValue
) -> Finding:
    """A check over the metric rows a day sees (and, optionally, the day failed by its source
    counts)."""
    days = [] if offending.is_empty() else days_in(offending)
    return Finding(
        failing_days=sorted({*days, *source_days}),
        metadata={
            "offending_rows": offending.height,
            "offending_days": keys_of(days),
            "sample_agent_ids": [
                str(agent_id) for agent_id in offending.get_column("agent_id").head(SAMPLE_SIZE)
            ]
            if days
            else [],
            **metadata,
        },
    )


@dataclass(frozen=True)
class Verdict:
    """One check's evaluation of one day."""

    check_name: str
    day: dt.date
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: dict[str, dg.RawMetadataValue]

    @property
    def blocks_publication(self) -> bool:
        return not self.passed and self.severity == ERROR

    def evaluation(
        self, asset_key: dg.AssetKey, judged: dg.EventLogRecord | None
    ) -> dg.AssetCheckEvaluation:
        """The evaluation Dagster records for the day, against ``judged``: the day's new
        materialization, or the one still published when this run published nothing."""
        target = (
            AssetCheckEvaluationTargetMaterializationData(
                run_id=judged.run_id, storage_id=judged.storage_id, timestamp=judged.timestamp
            )
            if judged is not None
            else None
        )
        return dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=self.check_name,
            passed=self.passed,
            partition=self.day.isoformat(),
            severity=self.severity,
            blocking=self.severity == ERROR,
            description=self.description,
            metadata=self.metadata,
            target_materialization_data=target,
        )


@dataclass(frozen=True)
class Check:
    name: str
    severity: dg.AssetCheckSeverity
    description: str
    # Each day of the evidence to what the check found on it.
    find: Callable[[Evidence], Mapping[dt.date, Finding]]

    def spec(self, asset_name: str, partitions_def: dg.PartitionsDefinition) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name,
            asset=asset_name,
            description=self.description,
            blocking=self.severity == ERROR,
            partitions_def=partitions_def,
        )

    def evaluate(self, evidence: Evidence) -> dict[dt.date, Verdict]:
        """This check on each day of ``evidence``."""
        return {
            day: Verdict(
                check_name=self.name,
                day=day,
                passed=not finding.failing_days,
                severity=self.severity,
                description=self.description,
                metadata=finding.metadata,
            )
            for day, finding in self.find(evidence).items()
        }


def judge_days(checks: Sequence[Check], evidence: Evidence) -> list[Verdict]:
    """Each of ``checks`` on each day of ``evidence``: day by day, in the checks' order."""
    by_check = [check.evaluate(evidence) for check in checks]
    return [verdicts[day] for day in evidence.days for verdicts in by_check]


def format_failures(verdicts: Sequence[Verdict]) -> str:
    """One entry per failed check, naming the days that failed it, for a run's failure message."""
    days_by_check: dict[str, list[dt.date]] = {}
    for verdict in verdicts:
        if not verdict.passed:
            days_by_check.setdefault(verdict.check_name, []).append(verdict.day)
    return "; ".join(
        f"{name} (days: {', '.join(keys_of(days))})" for name, days in days_by_check.items()
    )


def record_verdicts(
    context: dg.AssetExecutionContext, verdicts: Sequence[Verdict], published: bool
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each verdict recorded against its day, then the step's check outputs.

    A published day's evaluations judge the materialization this run just recorded. When
    nothing was published, a day that failed is judged against what is still published for it
    (so the day shows failed); a day that passed judges nothing new and is said so.
    """
    asset_key = context.asset_key
    failed_days = keys_of(sorted({v.day for v in verdicts if v.blocks_publication}))
    # This run's materializations are the newest of its days; otherwise, only the failed days
    # are judged, each against its own newest.
    judged_days = keys_of(sorted({v.day for v in verdicts})) if published else failed_days
    latest: dict[str, dg.EventLogRecord] = {}
    for keys in [judged_days] if published else [[key] for key in failed_days]:
        for record in context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=len(keys)
        ).records:
            latest.setdefault(record.partition_key, record)
    for verdict in verdicts:
        key = verdict.day.isoformat()
        if not published and key not in failed_days:
            verdict = dataclasses.replace(
                verdict,
                metadata={**verdict.metadata, "unpublished_because_of_days": failed_days},
            )
        yield verdict.evaluation(asset_key, latest.get(key))
    # Every check is an output of the step: the per-day evaluations above are its results.
    for check_key in context.selected_asset_check_keys:
        yield dg.Output(
            None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key)
        )
