"""How a run's days are cut into queries, so that memory follows the chunk, never the range.

A query holds the exact quantile state of every call it reads (about 11 bytes a call in the
engine) and returns one row per agent and day. So a run groups consecutive days into one query
while their counted calls fit a budget, and splits a day (or a chunk) whose calls exceed it into
shards by a hash of ``agent_id``: every agent falls wholly in one shard, so its average, p90 and
count are exact, and the shards' rows together are exactly the unsharded rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Ten million calls hold about 110 MB of quantile state: bounded, and still few queries.
DEFAULT_MAX_CALLS_PER_QUERY = 10_000_000
DEFAULT_MAX_DAYS_PER_QUERY = 30
# Past this a shard holds a thousandth of a day: a limit that still rejects it is not about size.
MAX_AGENT_SHARDS = 1024


@dataclass(frozen=True)
class Chunking:
    """The limits of one query: days, counted calls, and the fewest agent shards to use."""

    max_days_per_query: int = DEFAULT_MAX_DAYS_PER_QUERY
    max_calls_per_query: int = DEFAULT_MAX_CALLS_PER_QUERY
    agent_shards: int = 1

    def describe(self) -> dict[str, int]:
        return {
            "max_days_per_query": self.max_days_per_query,
            "max_calls_per_query": self.max_calls_per_query,
            "agent_shards": self.agent_shards,
        }


@dataclass(frozen=True)
class AgentShard:
    """The calls whose agent hashes to ``index`` modulo ``count``."""

    index: int
    count: int


@dataclass(frozen=True)
class Chunk:
    """Consecutive days read together, in ``shards`` queries (one per agent shard)."""

    days: tuple[str, ...]
    shards: int

    def agent_shards(self) -> list[AgentShard | None]:
        if self.shards == 1:
            return [None]
        return [AgentShard(index, self.shards) for index in range(self.shards)]


def plan_chunks(
    days: Sequence[str], calls_per_day: Mapping[str, int], chunking: Chunking
) -> list[Chunk]:
    """Consecutive days grouped while their calls fit ``max_calls_per_query``; a day that alone
    exceeds it is a chunk of its own, in as many agent shards as its calls need."""
    chunks: list[Chunk] = []
    pending: list[str] = []
    pending_calls = 0

    def flush() -> None:
        nonlocal pending, pending_calls
        if pending:
            chunks.append(Chunk(tuple(pending), chunking.agent_shards))
        pending, pending_calls = [], 0

    for day in days:
        calls = calls_per_day.get(day, 0)
        if calls > chunking.max_calls_per_query:
            flush()
            needed = math.ceil(calls / chunking.max_calls_per_query)
            shards = min(MAX_AGENT_SHARDS, max(chunking.agent_shards, needed))
            chunks.append(Chunk((day,), shards))
            continue
        if pending and (
            pending_calls + calls > chunking.max_calls_per_query
            or len(pending) >= chunking.max_days_per_query
        ):
            flush()
        pending.append(day)
        pending_calls += calls
    flush()
    return chunks
