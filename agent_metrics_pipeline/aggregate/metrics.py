"""The pure steps from the metrics query's rows to the published metrics: the metrics apart from
the counts of source calls they could not measure, calls per status, escaped agent ids."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.names import SAMPLE_SIZE
from agent_metrics_pipeline.storage.published_format import metrics_schema

# Per agent (the metrics query) or per day (the quality query), the calls of each counted
# status, in the measurement's order.
CALLS_PER_COUNTED_STATUS = "calls_per_counted_status"
# Per day, the calls of a status spelled like a counted one without being one.
UNCOUNTED_VARIANT_CALLS = "uncounted_variant_calls"
# Per agent, the calls the checks look into: unmeasurable, overlong, or of a status variant.
UNUSUAL_CALLS = "unusual_calls"
UNMEASURABLE_COUNTS = (
    "null_agent_calls",
    "null_duration_calls",
    "negative_duration_calls",
    "non_finite_duration_calls",
)
# Counted by kind by the quality query.
SAMPLED_COUNTS = (*UNMEASURABLE_COUNTS, "overlong_calls")
DUPLICATE_COUNT = "duplicate_calls"
QUALITY_COUNTS = (*SAMPLED_COUNTS, DUPLICATE_COUNT)
# The call ids behind SAMPLED_COUNTS (from the quality query), then behind DUPLICATE_COUNT.
SAMPLED_IDS = ("null_call_ids", "negative_call_ids", "non_finite_call_ids", "overlong_call_ids")
SAMPLE_IDS = (*SAMPLED_IDS, "duplicate_call_ids")


@functools.cache
def samples_schema() -> pl.Schema:
    return pl.Schema({"date": pl.Date, **{name: pl.List(pl.String) for name in SAMPLE_IDS}})


@dataclass(frozen=True)
class SourceQuality:
    """Source calls the metrics could not (or should not) measure, per day.

    ``per_day`` has a ``date`` column and one column per name in ``QUALITY_COUNTS``;
    ``samples`` has a ``date`` column and one list of a few call ids per name in ``SAMPLE_IDS``,
    for the days that have any, once fetched (by the quality query, the duplicate samples
    query, or both).
    """

    per_day: pl.DataFrame
    samples: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=samples_schema()))

    def calls(self, day: dt.date, names: Sequence[str]) -> int:
        """The calls ``names`` (some of ``QUALITY_COUNTS``) count on ``day``."""
        counts = self._counts_by_day.get(day, {})
        return sum(counts.get(name, 0) for name in names)

    def unmeasurable_calls(self, day: dt.date) -> int:
        return self.calls(day, UNMEASURABLE_COUNTS)

    @staticmethod
    def counts_any(counts: pl.DataFrame, names: Sequence[str]) -> bool:
        """Whether ``counts`` (the metrics or the quality query's rows, or ``per_day``) hold any
        call of ``names``."""
        return bool(counts.select(pl.sum_horizontal(names).sum()).item())

    def with_samples(self, samples: pl.DataFrame) -> SourceQuality:
        """These counts with the call ids of a query (one row per day, some of the
        ``SAMPLE_IDS`` columns), added to those already fetched."""
        fetched = pl.concat([self.samples, samples], how="diagonal_relaxed")
        merged = fetched.group_by("date").agg(
            pl.col(name).drop_nulls().first() for name in SAMPLE_IDS
        )
        return replace(self, samples=merged.cast(samples_schema()).sort("date"))

    def sample_ids(self, day: dt.date, name: str) -> list[str]:
        """Up to ``SAMPLE_SIZE`` call ids of kind ``name`` (one of ``SAMPLE_IDS``) on ``day``."""
        ids = self._samples_by_day.get(day, {}).get(name, [])
        return [str(call_id) for call_id in ids if call_id is not None][:SAMPLE_SIZE]

    # The checks ask for a day's counts and samples a few hundred times a month: read once.
    @functools.cached_property
    def _counts_by_day(self) -> dict[dt.date, dict[str, int]]:
        by_day: dict[dt.date, dict[str, int]] = {}
        for row in self.per_day.to_dicts():
            counts = by_day.setdefault(row.pop("date"), {})
            for name, calls in row.items():
                counts[name] = counts.get(name, 0) + (calls or 0)
        return by_day

    @functools.cached_property
    def _samples_by_day(self) -> dict[dt.date, dict[str, list[str | None]]]:
        by_day: dict[dt.date, dict[str, list[str | None]]] = {}
        for row in self.samples.to_dicts():
            samples = by_day.setdefault(row.pop("date"), {})
            for name, ids in row.items():
                samples.setdefault(name, []).extend(ids or [])
        return by_day


def shape_metrics(
    raw: pl.DataFrame, unusual: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, SourceQuality]:
    """Split the metrics query's rows into publishable metrics and source-quality counts.

    The group of calls without an agent and agents left with no measurable call carry no
    metrics; their calls are counted in the quality summary instead, from ``unusual``: the
    quality query's counts and call ids per day, read when the metrics query counted unusual
    calls (without them, each kind counts none).
    """
    metrics = raw.filter(pl.col("agent_id").is_not_null() & (pl.col("total_calls") > 0)).select(
        pl.col(name).cast(dtype) for name, dtype in metrics_schema().items()
    )
    # Each query sends its rows in this order (ClickHouse and Polars both order strings by
    # their bytes); only agent shards, one after another, need sorting.
    if not in_day_and_agent_order(metrics):
        metrics = metrics.sort("date", "agent_id")
    per_day = raw.group_by("date").agg(pl.col(DUPLICATE_COUNT).sum())
    if unusual is None:
        per_day = per_day.with_columns(pl.lit(0).alias(name) for name in SAMPLED_COUNTS)
    else:
        per_day = per_day.join(
            unusual.select("date", *SAMPLED_COUNTS), on="date", how="left"
        ).fill_null(0)
    per_day = (
        per_day.select("date", *QUALITY_COUNTS)
        .cast({"date": pl.Date, pl.selectors.numeric(): pl.Int64})
        .sort("date")
    )
    quality = SourceQuality(per_day=per_day)
    if unusual is not None:
        quality = quality.with_samples(unusual.select("date", *SAMPLED_IDS))
    return metrics, quality


def in_day_and_agent_order(rows: pl.DataFrame, strictly: bool = False) -> bool:
    """Whether each row's (date, agent_id) follows the one before (``strictly``: and differs
    from it). Seeing that costs a fifth of sorting the rows."""
    date, agent_id = pl.col("date"), pl.col("agent_id")
    same_day = date == date.shift(1)
    agent_follows = agent_id > agent_id.shift(1) if strictly else agent_id >= agent_id.shift(1)
    follows = (date > date.shift(1)) | (same_day & agent_follows)
    return bool(rows.select(follows.slice(1).fill_null(False).all()).item())


def counted_status_calls(counts: pl.DataFrame, statuses: Sequence[str]) -> pl.DataFrame:
    """Calls per day of each counted status (``date``, ``status``, ``calls``; statuses without
    a call left out), from per-agent or per-day counts that follow ``statuses`` (the metrics
    query's, or the quality query's)."""
    per_agent = pl.concat(
        [
            counts.select(
                pl.col("date").cast(pl.Date),
                pl.lit(status).alias("status"),
                pl.col(CALLS_PER_COUNTED_STATUS).list.get(position).cast(pl.Int64).alias("calls"),
            )
            for position, status in enumerate(statuses)
        ]
    )
    per_day = per_agent.group_by("date", "status").agg(pl.col("calls").sum())
    return per_day.filter(pl.col("calls") > 0).sort("date", "status")


# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_ESCAPE = "'"


def formula_like(agent_ids: pl.Expr) -> pl.Expr:
    return pl.any_horizontal(agent_ids.str.starts_with(prefix) for prefix in FORMULA_PREFIXES)


def escaped_formula(agent_ids: pl.Expr) -> pl.Expr:
    """Ids escaped by :func:`escape_formula_agent_ids`: the escape, then a formula. A slice of
    each id costs a tenth of stripping the escape from each."""
    return (
        pl.when(agent_ids.str.starts_with(FORMULA_ESCAPE))
        .then(formula_like(agent_ids.str.slice(len(FORMULA_ESCAPE))))
        .otherwise(False)
    )


def may_be_formula(agent_ids: pl.Expr) -> pl.Expr:
    """A cheap first cut holding every id :func:`formula_like` or :func:`escaped_formula`
    finds: those starting below "0" or from ":" to "@", where the signs and the escape fall.
    It costs a sixth of looking for each sign in every id."""
    return (agent_ids < "0") | ((agent_ids >= ":") & (agent_ids < "A"))


def escape_formula_agent_ids(metrics: pl.DataFrame) -> pl.DataFrame:
    """Agent ids a spreadsheet would run as a formula, prefixed with an apostrophe (shown as
    text, hidden by the spreadsheet), in the contract's order again."""
    agent_id = pl.col("agent_id")
    return metrics.with_columns(
        pl.when(formula_like(agent_id))
        .then(FORMULA_ESCAPE + agent_id)
        .otherwise(agent_id)
        .alias("agent_id")
    ).sort("date", "agent_id")


def to_markdown(frame: pl.DataFrame) -> str:
    """A small Markdown table for run metadata in the UI."""
    if frame.is_empty():
        return "_no rows_"
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(value) for value in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])
