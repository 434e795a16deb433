"""A run's publishable days, staged on local disk until every day of the run passed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.partitions import refuse_rows_outside
from agent_metrics_pipeline.storage.published_format import metrics_for_day, to_csv_bytes


class StagedDays:
    """A run's publishable days, each as the CSV bytes it is published as, in a local folder.

    The step reads a chunk of days at a time and stages it here, so its memory follows the
    chunk; the IO manager reads one day at a time once every day passed its checks. Staged as
    published, a day is encoded once and its file is uploaded as it is.
    ``running`` holds the days read before they ended, and when: they are published as partial.
    """

    def __init__(self, folder: Path, running: Mapping[dt.date, dt.datetime] | None = None) -> None:
        self.folder = folder
        self.days: list[dt.date] = []
        self.running = dict(running or {})

    def _path(self, day: dt.date) -> Path:
        return self.folder / f"{day.isoformat()}.csv"

    def stage(self, metrics: pl.DataFrame, days: Sequence[dt.date]) -> None:
        """Each of ``days``'s rows of ``metrics``, as published; a row of another day has no
        file to go to."""
        refuse_rows_outside(metrics.get_column("date").unique().to_list(), days)
        for day in days:
            self._path(day).write_bytes(to_csv_bytes(metrics_for_day(metrics, day)))
            self.days.append(day)

    def csv(self, day: dt.date) -> bytes:
        return self._path(day).read_bytes()
