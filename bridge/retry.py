"""Backoff for the long-running loops (watches, blocking queries, writes).

The delays are tenacity's exponential backoff with full jitter, so many bridges restarted
together do not retry in step; a server's Retry-After is honoured as a floor. The loops
themselves run forever, so they keep their own attempt count instead of wrapping a call in
a tenacity `Retrying` that would give up. Shared by the Kubernetes and Consul sides, which
must not import each other.
"""

from __future__ import annotations

from types import SimpleNamespace

from tenacity import wait_random_exponential


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self._wait = wait_random_exponential(multiplier=base, max=cap)
        self.attempt = 0

    def next_delay(self, hint: float | None = None) -> float:
        self.attempt += 1
        delay = self._wait(SimpleNamespace(attempt_number=self.attempt))  # type: ignore[arg-type]
        # A server's Retry-After is a floor: coming back sooner only earns another 429.
        return max(delay, hint or 0.0)

    def reset(self) -> None:
        self.attempt = 0
