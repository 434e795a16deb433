"""The SQL the pipeline sends: settings bound as parameters, days written out from dates,
identifiers quoted."""

from __future__ import annotations

import datetime as dt

from agent_metrics_pipeline.aggregate.queries import build_metrics_query
from agent_metrics_pipeline.aggregate.query_parts import DayWindow
from agent_metrics_pipeline.core.settings import Settings


def test_settings_are_bound_days_written_out_and_identifiers_quoted():
    settings = Settings.from_env({"AGENT_METRICS_STATUSES": "Answered,It's done"})
    start = dt.datetime(2026, 11, 20, 5, tzinfo=dt.UTC)
    day = DayWindow(dt.date(2026, 11, 20), start, start + dt.timedelta(days=1))
    sql, parameters = build_metrics_query(settings.measurement, [day], "America/New_York")
    assert "It's done" not in sql and "America/New_York" not in sql
    assert "SELECT\n    toDate('2026-11-20') AS date" in sql
    assert ">= toDateTime64('2026-11-20 05:00:00.000', 3, 'UTC')" in sql
    assert "< toDateTime64('2026-11-21 05:00:00.000', 3, 'UTC')" in sql
    assert parameters == {
        "timezone": "America/New_York",
        "window_start": "2026-11-20 05:00:00.000",
        "window_end": "2026-11-21 05:00:00.000",
        "statuses": ["Answered", "It's done"],
        "spellings": ["answered", "it's done"],
        "max_call_length_sec": 86_400.0,
    }
    assert "FROM `default`.`calls` AS src" in sql
