"""The bridge's own exceptions: what the rest of the code sees instead of client-library errors.

`client.py` modules translate library exceptions into these, so retry and skip decisions
are made on meaning (transient, conflict, gone) rather than on a library's class names.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class for every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing, malformed or out of range. The message names the key and value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"invalid setting {key}={value!r}: {reason}")


class SourceError(BridgeError):
    """Talking to an upstream API failed in a way that a retry may fix."""


class Transient(SourceError):
    """Timeouts, connection errors, 5xx and 429: retry with backoff.

    `retry_after` carries a server's Retry-After hint in seconds, when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(Transient):
    """A server refused for load (a limit of its own) and the client has said so once: a
    loop retries it quietly, no sooner than `retry_after`."""
class Unavailable(Transient):
    """The server did not answer: a connection-level failure, a timeout, or a 5xx. What an
    outage is made of (`bridge/outage.py`); a 429 or a 4xx is an answer, not this."""


class Unreachable(Unavailable):
    """Not sent: the server is in an outage and the bridge waits for it (`bridge/outage.py`)."""


class Expired(SourceError):
    """The Kubernetes watch position is too old (410 Gone): relist, then watch again."""


class Conflict(BridgeError):
    """A write lost a race (409 or a failed check-and-set): reread, then decide again."""


class Rejected(BridgeError):
    """The server refused a request as invalid or forbidden; retrying unchanged will not help.

    `reason` is the server's word for why, fit for a metric label (a Kubernetes Status
    reason such as `Invalid` or `NotFound`), when it gave one.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class Denied(Rejected):
    """The server refused the credentials (401) or the permission (403). The client has
    logged it once already; loops retry it quietly, as a rule or a token may be fixed."""
