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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Ten million calls hold about 110 MB of quantile state: bounded, and still few queries.
DEFAULT_MAX_CALLS_PER_QUERY = 10_000_000
# Half a million agent-days are about 200 MB in the step at their peak: a day of 300 k agents
# is then a chunk of its own, while 2 000 agents share a query for the whole range.
DEFAULT_MAX_ROWS_PER_QUERY = 500_000
DEFAULT_MAX_DAYS_PER_QUERY = 30
# Past this a shard holds a thousandth of a day: a limit that still rejects it is not about size.
MAX_AGENT_SHARDS = 1024


@dataclass(frozen=True)
class Chunking:
    """The limits of one query: days, calls, rows (agent-days), and the fewest agent
    shards to use."""

    max_days_per_query: int = DEFAULT_MAX_DAYS_PER_QUERY
    max_calls_per_query: int = DEFAULT_MAX_CALLS_PER_QUERY
    max_rows_per_query: int = DEFAULT_MAX_ROWS_PER_QUERY
    agent_shards: int = 1

    def describe(self) -> dict[str, int]:
        return {
            "max_days_per_query": self.max_days_per_query,
            "max_calls_per_query": self.max_calls_per_query,
            "max_rows_per_query": self.max_rows_per_query,
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


def next_chunk(
    days: Sequence[str],
    calls_per_day: Mapping[str, int],
    chunking: Chunking,
    rows_per_call: float | None,
) -> Chunk:
    """The chunk that starts at ``days[0]``: as many consecutive days as fit every limit, or
    the first day alone in as many agent shards as its calls and rows need.

    ``rows_per_call`` is the most rows per call seen so far; unknown (None), the chunk
    is one day, which tells.
    """

    def rows(day: str) -> float:
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
