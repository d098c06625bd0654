"""When each source last heard from its server, and when what it holds last changed.

A source that is quiet is not necessarily stale: `last_event` moves on anything the server
says (a list, a watch event or bookmark, a blocking query's answer, changed or not), so
"seconds since the last event" measures how stale the source may be; `last_change` moves
only when what the source holds changed. Both are wall-clock seconds (they are shown to
people and compared across replicas), exported as gauges per source for dashboards, and
read by /status and `bridge explain`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Gauge

LAST_EVENT = Gauge("bridge_source_last_event_timestamp_seconds",
                   "When the source last heard from its server (Unix time)", ["source"])
LAST_CHANGE = Gauge("bridge_source_last_change_timestamp_seconds",
                    "When what the source holds last changed (Unix time)", ["source"])


class Freshness:
    """The two times of one source (0.0: not yet). Written by the source's threads only;
    readers take each float as it is."""

    def __init__(self, source: str, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self._clock = clock
        self.last_event = 0.0
        self.last_change = 0.0
        self._event_gauge = LAST_EVENT.labels(source)
        self._change_gauge = LAST_CHANGE.labels(source)

    def event(self) -> None:
        """The server said something."""
        self.last_event = now = self._clock()
        self._event_gauge.set(now)

    def change(self) -> None:
        """What the source holds changed (which is news from the server too)."""
        self.last_event = self.last_change = now = self._clock()
        self._event_gauge.set(now)
        self._change_gauge.set(now)
