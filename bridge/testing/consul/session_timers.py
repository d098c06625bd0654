"""TTL expiry for sessions: one thread sleeping on a Condition until the next deadline.

Consul invalidates a TTL session once it has gone unrenewed for TTL x 2 (its
SessionTTLMultiplier; the contract only promises "not before TTL"). Invalidation is
an ordinary write through the store, so held locks are released or deleted and
blocked readers wake exactly as for an explicit destroy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bridge.testing.timers import SYSTEM, Clock

SESSION_TTL_MULTIPLIER = 2


class SessionTimers:
    def __init__(self, expire: Callable[[str], None], clock: Clock = SYSTEM) -> None:
        self._expire = expire
        self._clock = clock
        self._cond = threading.Condition()
        self._deadlines: dict[str, float] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="consul-fake-session-ttl", daemon=True)
        self._thread.start()

    def reset(self, session_id: str, ttl_seconds: float) -> None:
        """(Re)arm a session's timer, as create and renew do."""
        with self._cond:
            self._deadlines[session_id] = self._clock.now() + ttl_seconds * SESSION_TTL_MULTIPLIER
            self._cond.notify()

    def cancel(self, session_id: str) -> None:
        with self._cond:
            self._deadlines.pop(session_id, None)

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = self._clock.now()
                    due = [sid for sid, deadline in self._deadlines.items() if deadline <= now]
                    if due:
                        for sid in due:
                            del self._deadlines[sid]
                        break
                    # With nothing armed, only reset() or stop() can give us work.
                    wait = min(self._deadlines.values(), default=None)
                    self._clock.wait(self._cond, None if wait is None else wait - now)
                if self._stopped:
                    return
            # Expire outside our lock: the store takes its own lock for the write.
            for sid in due:
                self._expire(sid)
