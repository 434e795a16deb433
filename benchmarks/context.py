"""What every goal gets from the run: its scratch folder, the quick switch, and the environment
of a worker on the embedded engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent_metrics_pipeline.core.measurement import SourceTable
from benchmarks.processes import project_env
from benchmarks.seeding import FIRST_DAY


@dataclass(frozen=True)
class Context:
    folder: Path
    quick: bool

    def subfolder(self, name: str) -> Path:
        path = self.folder / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def home(self) -> Path:
        """AGENT_METRICS_HOME of the embedded goals: one engine folder for the whole run, so goals
        that need the same rows seed them once."""
        return self.folder / "home"

    def embedded_env(self, source: SourceTable, **variables: str) -> dict[str, str]:
        return project_env(
            AGENT_METRICS_HOME=str(self.home),
            AGENT_METRICS_START_DATE=FIRST_DAY.isoformat(),
            AGENT_METRICS_SOURCE_TABLE=source.table,
            **variables,
        )
