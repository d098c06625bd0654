"""The failures an endpoint can signal, each carrying the status and plain-text body Consul uses.

Consul answers errors with `text/plain` bodies, not JSON. Endpoints raise these and the
router turns them into responses, so every status/text pair lives next to where it is
decided, mirroring Consul's own `HTTPError{StatusCode, Reason}`.
"""

from __future__ import annotations


class HTTPError(Exception):
    """An error response: `status` with `body` as text/plain, plus optional extra headers."""

    def __init__(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def bad_request(body: str) -> HTTPError:
    return HTTPError(400, body)


def server_error(body: str) -> HTTPError:
    """What Consul returns for any RPC/state-store error without a dedicated status."""
    return HTTPError(500, body)


def method_not_allowed(method: str, allowed: list[str]) -> HTTPError:
    # Consul always lists OPTIONS first in the Allow header.
    return HTTPError(405, f"method {method} not allowed", {"Allow": ",".join(["OPTIONS", *allowed])})


class ApplyError(Exception):
    """A state-store error raised while applying a write (Consul's FSM errors).

    Raised inside a write transaction; the transaction is rolled back but, like a raft
    apply that failed in the FSM, its index is still consumed.
    """


class Abort(Exception):
    """Drop the connection without writing a response (a fault, an outage or shutdown)."""
