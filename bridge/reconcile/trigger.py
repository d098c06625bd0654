"""Coalescing wake-ups: many change notifications become one reconcile.

Sources call `poke()` on every change from their own threads. The reconciler's `wait()`
returns once the changes have been quiet for `quiet` seconds, or `max_delay` after the
first unhandled poke, whichever comes first, so a steady stream of events still gets
applied, and a burst of a thousand events costs one pass. `close()` (the bridge
stopping) makes every `wait()` return at once from then on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Trigger:
    def __init__(self, quiet: float, max_delay: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet, self.max_delay, self._clock = quiet, max(max_delay, quiet), clock
        self._cond = threading.Condition()
        self._first: float | None = None
        self._last = 0.0
        self._closed = False
        self.pokes = 0

    def poke(self) -> None:
        with self._cond:
            now = self._clock()
            if self._first is None:
                self._first = now
            self._last = now
            self.pokes += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter now, and make later waits return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        """A poke arrived that no `wait()` has returned for yet."""
        return self._first is not None

    def wait(self, timeout: float) -> float | None:
        """When poked: the clock time of the first poke handled (after coalescing).
        None when `timeout` passed without a poke, or the trigger is closed."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = self._clock()
                if self._first is not None:
                    due = min(self._last + self.quiet, self._first + self.max_delay)
                    if now >= due:
                        first, self._first = self._first, None
                        return first
                    self._cond.wait(due - now)
                    continue
                if now >= deadline:
                    return None
                self._cond.wait(deadline - now)
