"""Keyed one-shot timers on the server's clock: session TTLs, agent TTL checks.

One thread sleeps on a Condition until the earliest deadline, then calls `fire(key)` for
every key that is due, outside its lock (the callbacks write through the store, which
takes its own). Arming a key again moves its deadline; nothing polls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from bridge.testing.timers import SYSTEM, Clock

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    def __init__(self, fire: Callable[[K], None], clock: Clock = SYSTEM, *, name: str) -> None:
        self._fire = fire
        self._clock = clock
        self._cond = threading.Condition()
        self._deadlines: dict[K, float] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, key: K, seconds: float) -> None:
        """Fire `key` once `seconds` of the clock have passed (replacing any earlier arming)."""
        with self._cond:
            self._deadlines[key] = self._clock.now() + seconds
            self._cond.notify()

    def cancel(self, key: K) -> None:
        with self._cond:
            self._deadlines.pop(key, None)

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
                    due = [key for key, deadline in self._deadlines.items() if deadline <= now]
                    if due:
                        for key in due:
                            del self._deadlines[key]
                        break
                    # With nothing armed, only arm() or stop() can give us work.
                    wait = min(self._deadlines.values(), default=None)
                    self._clock.wait(self._cond, None if wait is None else wait - now)
                if self._stopped:
                    return
            for key in due:
                self._fire(key)
