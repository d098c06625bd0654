"""Items a sink's server refused as they are: counted and logged once, not once per retry.

A server that refuses an item as invalid (Kubernetes 422, a Consul 400) will refuse it again
until the item changes, so the sinks neither retry it in a loop nor log every attempt. They
report each refusal here with the server's own message; the first refusal of an item for a
reason is counted in `bridge_rejected_total{sink,reason}` and logged as a warning. The same
refusal again is silent; the same reason with another message (the item changed and is
still refused) is logged again, not counted. `forget(item)` ends it: the item was written,
or is no longer wanted, so a later refusal is news again. Shared by the Kubernetes and
Consul sides; `reason` must be a short fixed word (it is a metric label), such as the
Kubernetes Status reason `Invalid`.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter

log = logging.getLogger(__name__)

REJECTED = Counter("bridge_rejected_total", "Items a sink's server refused as they are, once per item and reason",
                   ["sink", "reason"])


class Rejections:
    """The refusals in force: (sink, item) -> (reason, message) of the last one reported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], tuple[str, str]] = {}

    def rejected(self, sink: str, item: str, reason: str, message: str) -> bool:
        """Report that `sink`'s server refused `item` for `reason`, saying `message`. True
        when this was news (and so was logged)."""
        key = (sink, item)
        with self._lock:
            before = self._held.get(key)
            if before == (reason, message):
                return False
            self._held[key] = (reason, message)
        if before is None or before[0] != reason:
            REJECTED.labels(sink, reason).inc()
        log.warning("%s: %s refused (%s), not retried until it changes: %s", sink, item, reason, message)
        return True

    def forget(self, item: str, sink: str | None = None) -> None:
        """`item` was written or is no longer wanted (of `sink`, or of every sink)."""
        with self._lock:
            if sink is not None:
                self._held.pop((sink, item), None)
            else:
                for key in [k for k in self._held if k[1] == item]:
                    del self._held[key]

    def held(self, sink: str) -> dict[str, tuple[str, str]]:
        """The items of `sink` refused and not forgotten: item -> (reason, message)."""
        with self._lock:
            return {item: found for (owner, item), found in self._held.items() if owner == sink}


REJECTIONS = Rejections()
rejected = REJECTIONS.rejected
forget = REJECTIONS.forget
