"""A run's publishable rows, staged on local disk until every day of the run passed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.partitions import refuse_rows_outside
from agent_metrics_pipeline.storage.published_format import metrics_for_day


class StagedDays:
    """A run's publishable rows, one Parquet file per day in a local folder.

    The step reads a chunk of days at a time and stages it here, so its memory follows the
    chunk; the IO manager reads one day at a time once every day passed its checks.
    ``running`` holds the days read before they ended, and when: they are published as partial.
    """

    def __init__(self, folder: Path, running: Mapping[dt.date, dt.datetime] | None = None) -> None:
        self.folder = folder
        self.days: list[dt.date] = []
        self.running = dict(running or {})

    def _path(self, day: dt.date) -> Path:
        return self.folder / f"{day.isoformat()}.parquet"

    def stage(self, metrics: pl.DataFrame, days: Sequence[dt.date]) -> None:
        """Each of ``days``'s rows of ``metrics``; a row of another day has no file to go to."""
        refuse_rows_outside(metrics.get_column("date").unique().to_list(), days)
        for day in days:
            metrics_for_day(metrics, day).write_parquet(self._path(day))
            self.days.append(day)

    def day(self, day: dt.date) -> pl.DataFrame:
        return pl.read_parquet(self._path(day))
