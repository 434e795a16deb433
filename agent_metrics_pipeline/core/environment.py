"""Typed reads of environment variables: every value checked, every error naming its variable.

Webhook URLs and secrets are never echoed in an error: they often embed tokens.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from agent_metrics_pipeline.core.errors import ConfigError

N = TypeVar("N", int, float)
E = TypeVar("E", bound=StrEnum)


def validate_timezone(name: str, what: str = "AGENT_METRICS_TIMEZONE") -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{what}={name!r} is not a known IANA timezone; use a name such as 'UTC' or "
            "'America/New_York'"
        ) from None
    return name


def given(**values: Any) -> dict[str, Any]:
    """The values that were set, so unset variables fall back to the fields' own defaults."""
    return {name: value for name, value in values.items() if value is not None}


class Environment:
    """Typed reads of environment variables; ``None`` when unset; every error names the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def flag(self, name: str) -> bool | None:
        value = self.text(name)
        if value is None:
            return None
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={value!r} must be true or false")

    def number(self, name: str, kind: type[N], minimum: N, maximum: N | None = None) -> N | None:
        text = self.text(name)
        if text is None:
            return None
        try:
            value = kind(text)
            if not math.isfinite(value):
                raise ValueError(text)
        except ValueError:
            noun = "number" if kind is float else "whole number"
            raise ConfigError(f"{name}={text!r} must be a {noun}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{name}={text!r} must be {bounds}")
        return value

    def url(self, name: str) -> str | None:
        """Only the scheme is checked, and the value is never echoed: webhook URLs embed tokens."""
        value = self.text(name)
        if value is not None and not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must start with http:// or https://")
        return value

    def date(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None:
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} must be a date like 2025-01-01") from None
        return value

    def dates(self, name: str) -> tuple[dt.date, ...] | None:
        """A comma-separated list of dates."""
        items = self.items(name)
        if items is None:
            return None
        try:
            return tuple(sorted({dt.date.fromisoformat(item) for item in items}))
        except ValueError:
            raise ConfigError(
                f"{name} must list dates like 2025-12-25,2026-01-01, separated by commas"
            ) from None

    def items(self, name: str) -> tuple[str, ...] | None:
        """A comma-separated list; set but holding no item is an error."""
        value = self.text(name)
        if value is None:
            return None
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if not items:
            raise ConfigError(f"{name} must name at least one value")
        return items

    def cron(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and len(value.split()) != 5:
            raise ConfigError(
                f"{name}={value!r} must be a cron schedule of five fields, as in '5 * * * *'"
            )
        return value

    def owners(self, name: str) -> tuple[str, ...] | None:
        """Dagster's owner format: an email address or ``team:NAME``."""
        owners = self.items(name)
        for owner in owners or ():
            if not (owner.startswith("team:") and len(owner) > 5) and "@" not in owner:
                raise ConfigError(
                    f"{name}: {owner!r} must be an email address or team:NAME, "
                    "as in 'team:data-platform,ana@example.com'"
                )
        return owners

    def choice(self, name: str, choices: type[E]) -> E | None:
        value = self.text(name)
        if value is None:
            return None
        for choice in choices:
            if choice.value.lower() == value.lower():
                return choice
        names = [repr(choice.value) for choice in choices]
        allowed = " or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}"
        raise ConfigError(f"{name}={value.lower()!r} must be {allowed}")

    def s3_prefix(self, name: str) -> str | None:
        """A relative key prefix: surrounding slashes dropped, never climbing out of its root."""
        value = self.text(name)
        if value is None:
            return None
        prefix = value.strip("/")
        if not prefix or any(segment in ("", ".", "..") for segment in prefix.split("/")):
            raise ConfigError(
                f"{name}={value!r} must be a key prefix such as 'agent_metrics' or "
                "'exports/agents': not empty, no empty segment, no '.' or '..'"
            )
        return prefix
