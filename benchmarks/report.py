"""What a goal measured, and the tables that show it: plain text for the terminal, Markdown for
docs/benchmarks.md ("Results")."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

MB = 1024 * 1024
COLUMNS = ("goal", "measurement", "median", "min–max", "ratio", "goal", "met")


@dataclass(frozen=True)
class Row:
    """One measurement: its samples, and, for a comparison, the ratio and the goal it is held to.

    ``unit`` is ``"s"``, ``"MB"`` (samples in bytes) or ``""`` (counts). A row without a
    ``target`` is information for the rows around it.
    """

    goal: str
    measurement: str
    samples: Sequence[float] = ()
    unit: str = "s"
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def cells(self) -> tuple[str, ...]:
        runs = f" [n={len(self.samples)}]" if len(self.samples) > 1 else ""
        if self.samples:
            median = _value(self.median, self.unit)
            spread = (
                f"{_value(min(self.samples), self.unit)}–{_value(max(self.samples), self.unit)}"
                if len(self.samples) > 1
                else "(one run)"
            )
        else:
            median = spread = ""
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}×"
        met = "" if self.met is None else ("yes" if self.met else "no")
        return (self.goal, self.measurement + runs, median, spread, ratio, self.target, met)


@dataclass
class Section:
    """A goal's rows, and notes printed under the table (how it was measured, what it found)."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _value(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value / MB:,.0f} MB"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    return f"{value:g}"


def text_table(rows: Sequence[Row]) -> str:
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: Sequence[Row]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join(
        [line(COLUMNS), line(["---"] * len(COLUMNS)), *(line(row.cells()) for row in rows)]
    )
