"""The source relation as the server describes it, and so how the pipeline reads it.

A source may be any relation a user can read: a MergeTree table, a table keeping row versions
(Replacing, Collapsing), a view, a ``Merge`` or ``Distributed`` table. Two things depend on
which: whether rows are read with ``FINAL`` (latest versions only), and whether the server keeps
the table in parts the late-calls check can look at (``_part``, ``system.parts``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent_metrics_pipeline.clickhouse.syntax import key_elements
from agent_metrics_pipeline.core.measurement import ReadFinalPolicy

if TYPE_CHECKING:
    from agent_metrics_pipeline.clickhouse.session import QueryRunner
    from agent_metrics_pipeline.core.measurement import SourceTable

# Engines whose unmerged parts may hold older versions of a row (or cancelled pairs of rows).
VERSIONED_ENGINES = ("ReplacingMergeTree", "CollapsingMergeTree", "VersionedCollapsingMergeTree")
# Functions a sorting key may round its time with and still let a range of times prune it.
TIME_ROUNDING_FUNCTIONS = (
    "toDate",
    "toDate32",
    "toDateTime",
    "toDateTime64",
    r"toStartOf\w+",
    "toMonday",
    "toYYYYMM",
    "toYYYYMMDD",
    "toYear",
)
ENGINE_QUERY = """
SELECT engine, sorting_key
FROM system.tables
WHERE database = {database:String} AND name = {table:String}
"""


@dataclass(frozen=True)
class SourceRelation:
    """The source's engine and sorting key as ``system.tables`` names them ('' when the server
    does not list the source, or it has no sorting key)."""

    engine: str
    sorting_key: str = ""

    def sorted_by(self, column: str) -> bool:
        """Whether the sorting key leads with ``column``, alone or rounded down in time
        (``toDate(column)``, ``toStartOfHour(column)``…), so that a range of it reads only the
        granules it covers."""
        elements = key_elements(self.sorting_key)
        name = re.escape(column)
        rounded = rf"(?:{'|'.join(TIME_ROUNDING_FUNCTIONS)})\(\s*`?{name}`?\s*(?:,[^()]*)?\)"
        return bool(elements) and re.fullmatch(rf"`?{name}`?|{rounded}", elements[0]) is not None

    @property
    def has_parts(self) -> bool:
        """Whether the server keeps its rows in parts of its own (the MergeTree family)."""
        return self.engine.endswith("MergeTree")

    @property
    def _base_engine(self) -> str:
        return self.engine.removeprefix("Shared").removeprefix("Replicated")

    @property
    def keeps_row_versions(self) -> bool:
        return self._base_engine in VERSIONED_ENGINES

    def reads_final(self, policy: ReadFinalPolicy) -> bool:
        """Whether to read with FINAL: a plain MergeTree has no versions, and refuses it."""
        if policy is ReadFinalPolicy.AUTO:
            return self.keeps_row_versions
        return policy is ReadFinalPolicy.ALWAYS and self._base_engine != "MergeTree"

    def run_metadata(self, policy: ReadFinalPolicy) -> dict[str, object]:
        """What a run's metadata says of how it read the source."""
        return {"source_engine": self.engine or "unknown", "read_final": self.reads_final(policy)}


def read_relation(clickhouse: QueryRunner, source: SourceTable) -> SourceRelation:
    """The source's engine, from the server's own table metadata."""
    rows = clickhouse.query_polars(
        ENGINE_QUERY, {"database": source.database, "table": source.table}
    )
    # A source the server does not list fails in the first query that reads it, with its fix.
    if not rows.height:
        return SourceRelation("")
    return SourceRelation(rows.item(0, "engine"), rows.item(0, "sorting_key") or "")
