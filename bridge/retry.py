"""Backoff for the long-running loops (watches, blocking queries, writes).

Exponential with full jitter, so many bridges restarted together do not retry in step,
and a server's Retry-After is honoured as a floor. Shared by the Kubernetes and Consul
sides, which must not import each other.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter, reset after a success."""

    def __init__(self, base: float = 0.2, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self, hint: float | None = None) -> float:
        self.attempt += 1
        delay = random.uniform(0, min(self.cap, self.base * 2 ** self.attempt))
        # A server's Retry-After is a floor: coming back sooner only earns another 429.
        return max(delay, hint or 0.0)

    def reset(self) -> None:
        self.attempt = 0
