"""Time for both test servers: the clock they read and wait on, and a replaceable delayed call.

Everything time-driven in the servers (blocking-query waits and their jitter, injected
latency, timed outages, session TTLs, watch timeouts) reads and waits through a `Clock`.
`SYSTEM` is the real monotonic clock and the default; a test that is about time gives the
server a `ManualClock` instead, moves it with `advance()`, and asserts on what the server
did (and on `waiting()`, what it is waiting for) instead of measuring how long it took.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Clock:
    """The real monotonic clock: `now()` in seconds, and waits that last real time."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on `cond` (held by the caller) for a notify or `timeout` seconds of this clock.

        May return early: callers re-check their state and this clock, as with any Condition.
        """
        cond.wait(timeout)

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        """Let `seconds` pass; False if `interrupt` was set first."""
        if interrupt is None:
            time.sleep(seconds)
            return True
        return not interrupt.wait(seconds)


SYSTEM = Clock()


class ManualClock(Clock):
    """A clock that moves only when a test calls `advance()`.

    Waits re-check it (and a sleep's interrupt) every `POLL` of real time, so a server on this
    clock notices an advance, a notify or a shutdown within that; no real time ever counts.
    """

    POLL = 0.01

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._deadlines: Counter[float] = Counter()

    def now(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def waiting(self) -> list[float]:
        """How long each timed wait or sleep in progress still has to go, shortest first."""
        with self._cond:
            return sorted(deadline - self._now for deadline in self._deadlines.elements())

    @contextmanager
    def _waiter(self, deadline: float | None) -> Iterator[None]:
        if deadline is None:
            yield
            return
        with self._cond:
            self._deadlines[deadline] += 1
        try:
            yield
        finally:
            with self._cond:
                self._deadlines[deadline] -= 1
                if not self._deadlines[deadline]:
                    del self._deadlines[deadline]

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        deadline = None if timeout is None else self.now() + timeout
        with self._waiter(deadline):
            cond.wait(self.POLL)

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> bool:
        with self._cond:
            until = self._now + seconds
        with self._waiter(until), self._cond:
            while self._now < until:
                if interrupt is not None and interrupt.is_set():
                    return False
                self._cond.wait(self.POLL)
        return True


class DelayedCall:
    """At most one pending call, on a daemon thread; scheduling again replaces it.

    What ends a timed outage in both test servers: `begin_outage(seconds)` (kube) and
    `faults.outage(duration)` (Consul) listen again after a delay; a new outage, an early
    recovery or a stop cancels the pending reopen.
    """

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._cancelled: threading.Event | None = None

    def schedule(self, seconds: float, call: Callable[[], None]) -> None:
        cancelled = threading.Event()

        def run() -> None:
            if self._clock.sleep(seconds, cancelled) and not cancelled.is_set():
                call()

        with self._lock:
            if self._cancelled is not None:
                self._cancelled.set()
            self._cancelled = cancelled
        threading.Thread(target=run, name="delayed-call", daemon=True).start()

    def cancel(self) -> None:
        """Drop the pending call, if any (a no-op from within the call itself)."""
        with self._lock:
            if self._cancelled is not None:
                self._cancelled.set()
                self._cancelled = None
