"""A sensor's cursor as a small frozen dataclass, kept by Dagster as JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Self


@dataclasses.dataclass(frozen=True)
class SensorCursor:
    """Fields a tick leaves for the next; subclasses declare them, all with defaults."""

    @classmethod
    def parse(cls, text: str | None) -> Self:
        """The cursor a tick left; what it does not know (another version's) is left out."""
        known = {field.name for field in dataclasses.fields(cls)}
        saved = json.loads(text) if text else {}
        return cls(**{name: value for name, value in saved.items() if name in known})

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
