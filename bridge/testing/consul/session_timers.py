"""TTL expiry for sessions.

Consul invalidates a TTL session once it has gone unrenewed for TTL x 2 (its
SessionTTLMultiplier; the contract only promises "not before TTL"). Invalidation is
an ordinary write through the store, so held locks are released or deleted and
blocked readers wake exactly as for an explicit destroy.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.testing.consul.deadlines import Deadlines
from bridge.testing.timers import SYSTEM, Clock

SESSION_TTL_MULTIPLIER = 2


class SessionTimers:
    def __init__(self, expire: Callable[[str], None], clock: Clock = SYSTEM) -> None:
        self._deadlines: Deadlines[str] = Deadlines(expire, clock, name="consul-fake-session-ttl")

    def reset(self, session_id: str, ttl_seconds: float) -> None:
        """(Re)arm a session's timer, as create and renew do."""
        self._deadlines.arm(session_id, ttl_seconds * SESSION_TTL_MULTIPLIER)

    def cancel(self, session_id: str) -> None:
        self._deadlines.cancel(session_id)

    def stop(self, timeout: float = 2.0) -> None:
        self._deadlines.stop(timeout)
