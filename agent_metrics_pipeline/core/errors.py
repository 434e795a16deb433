"""The kinds of failure: a setting the pipeline cannot use, and the two kinds of fault that call
for opposite reactions from the orchestrator (retry later, or stop until a person acts)."""

import contextlib
from collections.abc import Iterator

import dagster as dg


class ConfigError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


class TransientError(Exception):
    """A dependency was unreachable or timed out: retrying later may succeed."""


class PermanentError(Exception):
    """Configuration, credentials or schema are wrong: retrying cannot help, a person must act."""


@contextlib.contextmanager
def no_retry_for_permanent_errors() -> Iterator[None]:
    """Turn a :class:`PermanentError` into a failure that the step's RetryPolicy skips.

    Transient errors pass through untouched, so the RetryPolicy retries them with backoff.
    """
    try:
        yield
    except PermanentError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
