"""Two kinds of failure, because they call for opposite reactions from the orchestrator."""


class TransientError(Exception):
    """A dependency was unreachable or timed out: retrying later may succeed."""


class PermanentError(Exception):
    """Configuration, credentials or schema are wrong: retrying cannot help, a person must act."""
