"""Watch subscriptions: per-watcher filtering and the bounded queue a watch stream drains.

The store records every committed write as a `Change` (kept in its history ring) and offers
it to each `Watcher` while still holding the store lock, so a watcher sees writes in commit
order with nothing lost between its initial snapshot and its first live event. Each watcher
turns a change into at most one event for its client, applying its label/field selectors to
both the old and the new object: an object that starts matching is ADDED, one that stops
matching is DELETED, as the apiserver's watch cache does.

A watcher whose client does not keep up is not allowed to grow without bound: when the queue
is full it is replaced by a single ERROR 410, so the client relists instead of silently
missing events.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from bridge.testing.kube import errors
from bridge.testing.kube.resources import ResourceType
from bridge.testing.kube.selectors import FieldSelector, LabelSelector, object_fields

JSON = dict[str, Any]

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write. `obj` carries the write's resourceVersion, also for DELETED."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    namespace: str
    name: str
    obj: JSON
    prev: JSON | None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    object: JSON

    def to_json(self) -> JSON:
        return {"type": self.type, "object": self.object}


class Watcher:
    """One client's watch: what it selects, and the events queued for its stream."""

    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        allow_bookmarks: bool,
        capacity: int,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.allow_bookmarks = allow_bookmarks
        self._capacity = capacity
        self._cond = threading.Condition()
        self._queue: deque[WatchEvent] = deque()
        self._closed = False
        self.abrupt = False  # end the connection without a terminating chunk
        # A watch from resourceVersion X must not see changes at or before X, even live ones.
        self.min_rv = 0

    # --- producer side (called with the store lock held) ----------------------------------

    def matches(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(meta.get("labels")):
            return False
        return self.fields.empty or self.fields.matches(object_fields(self.rt.plural, obj))

    def translate(self, change: Change) -> WatchEvent | None:
        """The event this watcher's client should see for a change, if any."""
        if change.resource != self.rt.plural:
            return None
        if change.type == ADDED:
            return WatchEvent(ADDED, change.obj) if self.matches(change.obj) else None
        if change.type == DELETED:
            return WatchEvent(DELETED, change.obj) if self.matches(change.prev) else None
        now, before = self.matches(change.obj), self.matches(change.prev)
        if now and before:
            return WatchEvent(MODIFIED, change.obj)
        if now:
            return WatchEvent(ADDED, change.obj)
        if before:
            return WatchEvent(DELETED, change.obj)
        return None

    def offer(self, change: Change) -> None:
        if change.rv <= self.min_rv:
            return
        event = self.translate(change)
        if event is not None:
            self.push(event)

    def push(self, event: WatchEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._capacity:
                self._queue.clear()
                status = errors.expired(
                    "watch queue overflowed: the client did not keep up; relist and watch again"
                ).to_status()
                self._queue.append(WatchEvent(ERROR, status))
                self._closed = True
            else:
                self._queue.append(event)
            self._cond.notify_all()

    def push_added(self, obj: JSON) -> None:
        self.push(WatchEvent(ADDED, obj))

    def bookmark(self, rv: int, annotations: dict[str, str] | None = None) -> None:
        meta: JSON = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = dict(annotations)
        self.push(WatchEvent(BOOKMARK, {"kind": self.rt.kind, "apiVersion": self.rt.api_version, "metadata": meta}))

    def fail(self, error: errors.StatusError) -> None:
        """Queue one ERROR event and end the stream after it."""
        self.push(WatchEvent(ERROR, error.to_status()))
        self.close()

    def close(self, *, abrupt: bool = False) -> None:
        with self._cond:
            self._closed = True
            if abrupt:
                self.abrupt = True
                self._queue.clear()
            self._cond.notify_all()

    # --- consumer side (the HTTP stream thread) ------------------------------------------

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._queue

    def get(self, timeout: float) -> WatchEvent | None:
        """The next event, or None if none arrived within `timeout` (or the watch ended)."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            return self._queue.popleft() if self._queue else None
