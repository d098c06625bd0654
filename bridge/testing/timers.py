"""A replaceable delayed call: what ends a timed outage in both test servers.

`begin_outage(seconds)` (kube) and `faults.outage(duration)` (Consul) listen again after a
delay; a new outage, an early recovery or a stop cancels the pending reopen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class DelayedCall:
    """At most one pending call, on a daemon timer thread; scheduling again replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def schedule(self, seconds: float, call: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, call)
        timer.daemon = True
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = timer
        timer.start()

    def cancel(self) -> None:
        """Drop the pending call, if any (a no-op from within the call itself)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
