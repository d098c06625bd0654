"""The clocks high availability reads: monotonic for every deadline, wall for the Lease's
timestamps (which other replicas never compare with their own clocks). Injected, so tests
drive time by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; all deadlines are on it."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch; only written into records for people to read."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
