"""The checks on what the source holds besides the metrics: the unmeasurable calls left out,
statuses spelled like a counted one, repeated call ids, and whether a day holds its usual
volume. Each reads per-day counts the step already has, for every day of a chunk at once."""

from __future__ import annotations

import datetime as dt

from agent_metrics_pipeline.aggregate.metrics import DUPLICATE_COUNT
from agent_metrics_pipeline.core.measurement import DuplicateCallsPolicy
from agent_metrics_pipeline.core.names import SAMPLE_SIZE
from agent_metrics_pipeline.core.partitions import keys_of
from agent_metrics_pipeline.quality import usual_volume
from agent_metrics_pipeline.quality.findings import Evidence, Finding


def excluded_source_rows(evidence: Evidence) -> dict[dt.date, Finding]:
    quality, excluding = evidence.quality, not evidence.measurement.fails_on_invalid_rows
    findings = {}
    for day in evidence.days:
        null_calls = quality.calls(day, ["null_agent_calls", "null_duration_calls"])
        negative_calls = quality.calls(day, ["negative_duration_calls"])
        non_finite_calls = quality.calls(day, ["non_finite_duration_calls"])
        days = [day] if excluding and (null_calls or negative_calls or non_finite_calls) else []
        samples = [
            *quality.sample_ids(day, "null_call_ids"),
            *quality.sample_ids(day, "negative_call_ids"),
            *quality.sample_ids(day, "non_finite_call_ids"),
        ]
        findings[day] = Finding(
            failing_days=days,
            metadata={
                "invalid_rows_policy": evidence.measurement.invalid_rows.value,
                "excluded_calls": quality.unmeasurable_calls(day) if excluding else 0,
                "excluded_null_agent_or_duration_calls": null_calls if excluding else 0,
                "excluded_negative_duration_calls": negative_calls if excluding else 0,
                "excluded_non_finite_duration_calls": non_finite_calls if excluding else 0,
                "offending_days": keys_of(days),
                "sample_call_ids": samples[:SAMPLE_SIZE] if excluding else [],
            },
        )
    return findings


def status_spellings(evidence: Evidence) -> dict[dt.date, Finding]:
    """A status that differs from a counted one only by letter case or surrounding spaces
    is most likely the same status, mistyped at the source: its calls are not counted."""
    counted = evidence.measurement.statuses
    findings = {}
    for day, seen in evidence.statuses_by_day.items():
        variants = {status: calls for status, calls in seen.items() if status not in counted}
        days = [day] if variants else []
        findings[day] = Finding(
            failing_days=days,
            metadata={
                "counted_statuses": list(counted),
                "statuses_seen": seen,
                "uncounted_variants": sorted(variants),
                "uncounted_variant_calls": sum(variants.values()),
                "offending_days": keys_of(days),
            },
        )
    return findings


def no_duplicate_call_ids(evidence: Evidence) -> dict[dt.date, Finding]:
    """Rows of a counted status repeating a call id: a duplicated insert, or a row version a
    table has not merged away. Counted once, they are reported but fail nothing."""
    measurement = evidence.measurement
    if measurement.duplicate_calls is DuplicateCallsPolicy.IGNORE:
        not_looked_at = Finding(
            failing_days=[],
            metadata={
                "duplicate_calls_policy": measurement.duplicate_calls.value,
                "note": "Not looked at. AGENT_METRICS_DUPLICATE_CALLS=warn counts repeated "
                "call ids (about 4x the metrics query's time), count_once counts each once.",
            },
        )
        return dict.fromkeys(evidence.days, not_looked_at)
    findings = {}
    for day in evidence.days:
        calls = evidence.quality.calls(day, [DUPLICATE_COUNT])
        days = [day] if calls else []
        findings[day] = Finding(
            failing_days=[] if measurement.counts_each_call_once else days,
            metadata={
                "duplicate_calls_policy": measurement.duplicate_calls.value,
                "repeated_rows": calls,
                "repeated_rows_counted": 0 if measurement.counts_each_call_once else calls,
                "offending_days": keys_of(days),
                "sample_call_ids": evidence.quality.sample_ids(day, "duplicate_call_ids"),
            },
        )
    return findings


def usual_days(evidence: Evidence) -> dict[dt.date, Finding]:
    settings = evidence.measurement.usual_volume
    return {
        day: Finding(*usual_volume.judge(day, evidence.calls_held, settings))
        for day in evidence.days
    }
