"""The ``usual_volume`` check: is a day complete? Its calls, as the source stores them, against
the median of the same weekday in the weeks before (counted from the table's index, a few
milliseconds a day). A day below the share of its usual volume is flagged, or held back until
its calls arrive."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from agent_metrics_pipeline.core.names import PUBLISH_PARTIAL_TAG

if TYPE_CHECKING:
    from agent_metrics_pipeline.core.measurement import UsualVolume
    from agent_metrics_pipeline.quality.findings import Verdict

USUAL_VOLUME = "usual_volume"
DESCRIPTION = (
    "The day holds at least AGENT_METRICS_USUAL_VOLUME_MIN_SHARE (0.5) of its usual calls: the "
    "median of the same weekday over the AGENT_METRICS_USUAL_VOLUME_WEEKS (4) weeks before. "
    "Blocking with AGENT_METRICS_HOLD_BACK_PARTIAL_DAYS=true."
)


def days_to_count(days: Sequence[dt.date], usual_volume: UsualVolume) -> list[dt.date]:
    """The run's days and the days their usual volume comes from, in order."""
    return sorted({*days, *(ref for day in days for ref in usual_volume.reference_days(day))})


def judge(
    day: dt.date, calls_held: Mapping[dt.date, int], settings: UsualVolume
) -> tuple[list[dt.date], dict]:
    """The failing days (``day`` or none) and the metadata of ``day``'s evaluation."""
    calls = calls_held.get(day, 0)
    references = {
        ref: calls_held.get(ref, 0)
        for ref in settings.reference_days(day)
        if ref not in settings.quiet_days
    }
    # A weekday without calls is no reference: the source did not cover it yet.
    usual = [count for count in references.values() if count > 0]
    metadata: dict = {
        "calls": calls,
        "reference_days": {ref.isoformat(): count for ref, count in references.items()},
        "min_share": settings.min_share,
    }
    if day in settings.running_days:
        note = "The day has not ended: its running figures are published as partial."
        return [], {**metadata, "note": note}
    if day in settings.quiet_days:
        return [], {**metadata, "note": "Listed in AGENT_METRICS_QUIET_DAYS."}
    if len(usual) < 2:
        note = f"Fewer than two earlier {day:%A}s with calls: nothing to compare with."
        return [], {**metadata, "note": note}
    baseline = statistics.median(usual)
    share = calls / baseline
    metadata |= {"usual_calls": float(baseline), "share": round(share, 3)}
    if share >= settings.min_share:
        return [], metadata
    if settings.published_on_purpose:
        return [], {**metadata, "note": f"Published on purpose ({PUBLISH_PARTIAL_TAG})."}
    return [day], metadata


def held_back(verdicts: Sequence[Verdict]) -> str:
    """A sentence for each day held back as partial, for the run's failure message."""
    failed = [v for v in verdicts if v.check_name == USUAL_VOLUME and v.blocks_publication]
    if not failed:
        return ""
    parts = [
        f"{v.day} holds {v.metadata['share']:.0%} of its usual calls ({v.metadata['calls']:,} "
        f"against {v.metadata['usual_calls']:,.0f}, the median of "
        f"{_counted(v.metadata['reference_days'])} earlier {v.day:%A}s)"
        for v in failed
    ]
    return (
        f"Held back as partial: {'; '.join(parts)}. A day held back is published when its calls "
        f"arrive (the observation finds the change), or now with the run tag "
        f"{PUBLISH_PARTIAL_TAG}=true. "
    )


def _counted(reference_days: Mapping[str, int]) -> int:
    return sum(1 for count in reference_days.values() if count > 0)
