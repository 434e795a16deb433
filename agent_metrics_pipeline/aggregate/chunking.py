"""How a run's days are cut into queries, so that memory follows the chunk, never the range.

A query holds the exact quantile state of every call it reads (about 11 bytes a call in the
engine) and returns one row per agent and day, which the step holds while it checks and stages
them. So a run groups consecutive days into one query while their calls and their rows
fit a budget each, and splits a day whose calls or rows exceed it into shards by a hash of
``agent_id``: every agent falls wholly in one shard, so its average, p90 and count are exact,
and the shards' rows together are exactly the unsharded rows.

A day's calls (any status, as stored: the engine reads them all) are counted before the first
query; its rows (agents) are known only once read. The first chunk is therefore one day, and
each later chunk is sized by the most rows per call seen so far.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from agent_metrics_pipeline.core.measurement import MAX_AGENT_SHARDS, Chunking


@dataclass(frozen=True)
class AgentShard:
    """The calls whose agent hashes to ``index`` modulo ``count``."""

    index: int
    count: int


@dataclass(frozen=True)
class Chunk:
    """Consecutive days read together, in ``shards`` queries (one per agent shard)."""

    days: tuple[dt.date, ...]
    shards: int

    def agent_shards(self) -> list[AgentShard | None]:
        if self.shards == 1:
            return [None]
        return [AgentShard(index, self.shards) for index in range(self.shards)]


def next_chunk(
    days: Sequence[dt.date],
    calls_per_day: Mapping[dt.date, int],
    chunking: Chunking,
    rows_per_call: float | None,
) -> Chunk:
    """The chunk that starts at ``days[0]``: as many consecutive days as fit every limit, or
    the first day alone in as many agent shards as its calls and rows need.

    ``rows_per_call`` is the most rows per call seen so far; unknown (None), the chunk
    is one day, which tells.
    """

    def rows(day: dt.date) -> float:
        return calls_per_day.get(day, 0) * (rows_per_call or 0)

    first = days[0]
    needed = max(
        math.ceil(calls_per_day.get(first, 0) / chunking.max_calls_per_query),
        math.ceil(rows(first) / chunking.max_rows_per_query),
        chunking.agent_shards,
    )
    if needed > chunking.agent_shards:
        return Chunk((first,), min(MAX_AGENT_SHARDS, needed))
    if rows_per_call is None:
        # Days without calls make no rows whatever the ratio: they go along together.
        quiet = 1
        while (
            quiet < min(len(days), chunking.max_days_per_query)
            and not calls_per_day.get(days[quiet - 1], 0)
            and not calls_per_day.get(days[quiet], 0)
        ):
            quiet += 1
        return Chunk(tuple(days[:quiet]), chunking.agent_shards)
    taken, calls, rows_taken = 1, calls_per_day.get(first, 0), rows(first)
    for day in days[1 : chunking.max_days_per_query]:
        calls += calls_per_day.get(day, 0)
        rows_taken += rows(day)
        if calls > chunking.max_calls_per_query or rows_taken > chunking.max_rows_per_query:
            break
        taken += 1
    return Chunk(tuple(days[:taken]), chunking.agent_shards)


class Chunker:
    """A run's days, chunk after chunk, each sized by the most rows per call read so far."""

    def __init__(
        self, days: Sequence[dt.date], calls_per_day: Mapping[dt.date, int], chunking: Chunking
    ) -> None:
        self.days = list(days)
        self.calls_per_day = calls_per_day
        self.chunking = chunking
        self.rows_per_call: float | None = None

    def __iter__(self) -> Iterator[Chunk]:
        remaining = self.days
        while remaining:
            chunk = next_chunk(remaining, self.calls_per_day, self.chunking, self.rows_per_call)
            yield chunk
            remaining = remaining[len(chunk.days) :]

    def learn(self, chunk: Chunk, rows: int) -> None:
        """The rows the chunk's queries returned: they size the chunks after it."""
        calls = sum(self.calls_per_day.get(day, 0) for day in chunk.days)
        if calls:
            self.rows_per_call = max(self.rows_per_call or 0.0, rows / calls)
