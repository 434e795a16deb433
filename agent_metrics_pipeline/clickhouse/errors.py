"""What ClickHouse's refusals mean for the pipeline: which to retry, and what to fix.

Every error names the server it came from (never its password) and the setting that fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent_metrics_pipeline.core.errors import PermanentError, TransientError

# ClickHouse server error codes whose fix is a change of configuration or schema.
CREDENTIAL_ERROR_CODES = {192, 193, 194, 516}  # unknown user, wrong/required password, ...
MISSING_OBJECT_ERROR_CODES = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE
UNKNOWN_IDENTIFIER_CODE = 47
READONLY_CODE = 164
ACCESS_DENIED_CODE = 497
# clickhouse-connect's own refusals, before sending, to change a setting the server reports
# as read-only for this user.
CLIENT_READONLY_REFUSAL = re.compile(r"Cannot change readonly|Setting \S+ is readonly")
# Codes that a later attempt may not hit: timeouts, overload, memory pressure, network trouble.
TRANSIENT_ERROR_CODES = {3, 32, 159, 202, 209, 210, 394, 999}
MEMORY_LIMIT_EXCEEDED_CODE = 241
# A limit on one query (max_memory_usage) or on the user's queries (max_memory_usage_for_user)
# stops the same query again; the server's total limit is memory pressure that passes.
PER_QUERY_MEMORY_LIMIT = re.compile(
    r"(query|user) memory limit exceeded|memory limit \(for (query|user)\) exceeded", re.I
)


class ClickHouseUnavailableError(TransientError):
    """The server could not be reached or timed out; retrying later may succeed."""


class ClickHouseEngineBusyError(ClickHouseUnavailableError):
    """Another process holds the embedded engine's folder: a run, the demo, an observation."""


class ClickHouseQueryError(PermanentError):
    """ClickHouse refused the request (credentials, missing table, bad SQL); retrying won't help."""


class ClickHouseMemoryLimitError(ClickHouseQueryError):
    """The query exceeded this user's per-query memory limit: the same query fails again, a
    smaller one (fewer agents or days) may not."""


def error_code(error: Exception) -> int | None:
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return code
    text = str(error)
    if "Code: " in text:
        digits = text.split("Code: ", 1)[1].split(".", 1)[0].strip()
        if digits.isdigit():
            return int(digits)
    return None


def translate(
    error: Exception,
    description: str,
    embedded: bool,
    scrub: Callable[[str], str],
    credentials: str = "CLICKHOUSE_USER and CLICKHOUSE_PASSWORD",
) -> Exception:
    """``error``, raised by clickhouse-connect talking to the ``description``, as the pipeline's
    error saying what to do; ``scrub`` takes secrets out of the server's text; ``credentials``
    names what the user logs in with."""
    from clickhouse_connect.driver.exceptions import (
        ClickHouseError,
        DatabaseError,
        OperationalError,
    )

    lines = scrub(str(error)).strip().splitlines()
    detail = (lines[0] if lines else type(error).__name__)[:500]
    code = error_code(error) if isinstance(error, ClickHouseError) else None
    if code == READONLY_CODE and "Cannot execute query" in str(error):
        return ClickHouseQueryError(
            f"The {description} refused a write: {detail}. The pipeline's queries run "
            "read-only; only reads can go through them."
        )
    if code == READONLY_CODE or CLIENT_READONLY_REFUSAL.search(str(error)):
        return ClickHouseQueryError(
            f"The {description} does not let this user change a setting the query "
            f"sends: {detail}. The user's settings profile fixes it: allow the setting there "
            "(a profile with readonly=2 still forbids writes), or use another CLICKHOUSE_USER."
        )
    if isinstance(error, OperationalError):
        return ClickHouseUnavailableError(
            f"Could not reach the {description}: {detail}. Check CLICKHOUSE_HOST, "
            "CLICKHOUSE_PORT and CLICKHOUSE_SECURE, and that the server is up."
        )
    if embedded and "EmbeddedServer already initialized" in str(error):
        return ClickHouseQueryError(
            f"This process already serves another embedded engine folder: {detail}. One "
            "process can open one folder; close the other clients first."
        )
    if embedded and "EmbeddedServer" in str(error):
        return ClickHouseEngineBusyError(
            f"The {description} is in use by another process: {detail}. The embedded "
            "engine's folder opens in one process at a time; wait for the other run (or "
            "the demo) to finish."
        )
    if code == MEMORY_LIMIT_EXCEEDED_CODE and PER_QUERY_MEMORY_LIMIT.search(str(error)):
        return ClickHouseMemoryLimitError(
            f"The {description} stopped a query at this user's memory limit: {detail}. "
            "Raise max_memory_usage in the user's settings profile, or make each query "
            "smaller: AGENT_METRICS_AGENT_SHARDS splits every query by agent, and a lower "
            "AGENT_METRICS_MAX_CALLS_PER_QUERY splits the large days."
        )
    if code == MEMORY_LIMIT_EXCEEDED_CODE:
        return ClickHouseUnavailableError(
            f"The {description} is short of memory overall (its total limit, shared by "
            f"every query): {detail}. Retried; if it lasts, the server needs more memory or "
            "fewer concurrent queries."
        )
    if code in TRANSIENT_ERROR_CODES:
        return ClickHouseUnavailableError(
            f"The {description} could not finish the query now: {detail}"
        )
    if code == ACCESS_DENIED_CODE:
        # The user signed in: a grant is missing, which no password fixes.
        return ClickHouseQueryError(
            f"The {description} refused this user a privilege the query needs: {detail}. "
            "Grant it to the user (the reader's grants: the deployment guide, 'The ClickHouse "
            "reader: least privilege')."
        )
    if code in CREDENTIAL_ERROR_CODES:
        return ClickHouseQueryError(
            f"The {description} rejected the credentials: {detail}. Check {credentials}."
        )
    if code in MISSING_OBJECT_ERROR_CODES:
        return ClickHouseQueryError(
            f"The {description} has no such table or database: {detail}. Check "
            "CLICKHOUSE_DATABASE and AGENT_METRICS_SOURCE_TABLE."
        )
    if code == UNKNOWN_IDENTIFIER_CODE:
        return ClickHouseQueryError(
            f"The source table lacks a column the query needs: {detail}. Map the columns "
            "with AGENT_METRICS_SOURCE_COLUMNS."
        )
    if isinstance(error, DatabaseError) and code is not None:
        return ClickHouseQueryError(f"The {description} refused the query: {detail}")
    return ClickHouseUnavailableError(f"The {description} failed: {detail}")
