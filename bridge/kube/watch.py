"""List, then watch, then relist on 410: one collection mirrored into a local cache.

A `Reflector` owns one thread and one cache. The cache is a dict replaced as a whole on
every change (copy-on-write), so readers take `reflector.items` without a lock and always
see one consistent state. A relist after 410 replaces the cache by diff: it never empties
it first, so a reader never sees the world vanish while the relist is in flight.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from prometheus_client import Counter
from tenacity import RetryCallState, retry_if_exception_type

from bridge.errors import Denied, Expired, Rejected, Transient, Unavailable
from bridge.freshness import Freshness
from bridge.kube.client import KubeClient, Resource
from bridge.kube.objects import BadObject, object_key
from bridge.outage import Outage
from bridge.retry import Backoff, Stopped, retrying
from bridge.threads import Threads

log = logging.getLogger(__name__)

T = TypeVar("T")

EVENTS = Counter("bridge_kube_watch_events_total", "Watch events received", ["resource", "type"])
RELISTS = Counter("bridge_kube_relists_total", "Full lists (first and after 410)", ["resource"])
SKIPPED = Counter("bridge_kube_objects_skipped_total", "Objects skipped as malformed",
                  ["resource"])
ERRORS = Counter("bridge_kube_errors_total", "Failed list or watch calls", ["resource"])

PAGE_SIZE = 500
CHANGE_LOG = 8192  # recent changed keys kept for `changed_since`; older: a full recompute


class Reflector(Generic[T]):
    """Mirrors one collection through `convert` into `items`, calling `on_change` after each
    change. `synced` is set once the first complete list has been applied.

    Every change gets the next `version`; `state` pairs it with the items it produced (one
    attribute, so a reader gets both of one moment), and `changed_since` names the keys
    changed between two versions, so a reader can redo only what those keys touch.
    """

    def __init__(self, kube: KubeClient, resource: Resource, convert: Callable[[Any], T],
                 on_change: Callable[[], None], *, watch_timeout: int,
                 stop: threading.Event, threads: Threads | None = None) -> None:
        self._kube = kube
        self._resource = resource
        self._convert = convert
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._stop = stop
        self._threads = threads or Threads()
        self._need_list = True
        # Through an outage of the API server the retries wait for it, and wake when it
        # is back (bridge/outage.py).
        outage: Outage | None = getattr(kube, "outage", None)  # a stand-in client may have none
        self._retrying = retrying(stop, Backoff(base=0.2, cap=30.0),
                                  retry=retry_if_exception_type(Exception),
                                  sleep=outage.sleeper(stop) if outage is not None else None,
                                  before_sleep=self._failed)
        self._items: dict[tuple[str, str], T] = {}  # written by this reflector's thread only
        self.items: Mapping[tuple[str, str], T] = MappingProxyType(self._items)
        self.synced = threading.Event()
        self.resource_version = ""
        self.version = 0
        self.state: tuple[int, Mapping[tuple[str, str], T]] = (0, self.items)
        self._changes: deque[tuple[int, tuple[str, str]]] = deque(maxlen=CHANGE_LOG)
        self._floor = 0  # a relist at this version: what changed in it is not logged
        self.freshness = Freshness(f"kubernetes/{resource.plural}")
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = self._threads.start(f"reflector-{self._resource.plural}", self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Each call lists (when needed) then watches until the server ends the
                # stream; an error is retried with backoff, a clean end starts afresh.
                self._retrying(self._list_and_watch)
            except Stopped:
                return

    def _list_and_watch(self) -> None:
        try:
            if self._need_list:
                self._relist()
                self._need_list = False
            self._watch()
        except Expired as exc:
            log.info("%s: watch position expired (%s); relisting", self._resource.plural, exc)
            self._need_list = True

    def _failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if self._stop.is_set():
            log.debug("%s: ended by the stop: %s", self._resource.plural, exc)  # client closed
            return
        ERRORS.labels(self._resource.plural).inc()
        if isinstance(exc, Transient | Rejected):
            # A refusal was logged once by the client, an outage by the outage: repeating
            # either per retry is noise.
            level = logging.DEBUG if isinstance(exc, Denied | Unavailable) else logging.WARNING
            log.log(level, "%s: %s; retrying in %.1fs", self._resource.plural, exc,
                    state.upcoming_sleep)
        else:
            # A bug must not kill the mirror: log it, back off, and start over from a list.
            log.error("%s: unexpected error; relisting in %.1fs", self._resource.plural,
                      state.upcoming_sleep, exc_info=exc)
            self._need_list = True

    def _convert_item(self, raw: Any) -> T | None:
        try:
            return self._convert(raw)
        except BadObject as exc:
            SKIPPED.labels(self._resource.plural).inc()
            try:
                key = "/".join(object_key(raw))
            except BadObject:
                key = "<unnamed>"
            log.warning("%s %s skipped: %s", self._resource.plural, key, exc)
            return None

    def _relist(self) -> None:
        RELISTS.labels(self._resource.plural).inc()
        fresh: dict[tuple[str, str], T] = {}
        cont: str | None = None
        while True:
            page = self._kube.list_page(self._resource, limit=PAGE_SIZE, cont=cont)
            for raw in page.get("items") or []:
                value = self._convert_item(raw)
                if value is not None:
                    fresh[object_key(raw)] = value
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or None
            if not cont:
                self.resource_version = str(meta.get("resourceVersion") or "")
                break
        changed = self._items != fresh
        if changed:
            self._publish(fresh, None)
        else:
            self.freshness.event()
        first = not self.synced.is_set()
        self.synced.set()
        log.debug("%s: listed %d at resourceVersion %s", self._resource.plural, len(fresh),
                  self.resource_version)
        if changed or first:
            self._on_change()

    def _watch(self) -> None:
        for event in self._kube.watch(self._resource, self.resource_version, self._watch_timeout):
            if self._stop.is_set():
                return
            kind = event.get("type")
            raw = event.get("object") or {}
            EVENTS.labels(self._resource.plural, str(kind)).inc()
            self.freshness.event()
            rv = str((raw.get("metadata") or {}).get("resourceVersion") or "")
            if kind == "BOOKMARK":
                self.resource_version = rv or self.resource_version
                continue
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                log.warning("%s: unexpected watch event type %r", self._resource.plural, kind)
                continue
            try:
                key = object_key(raw)
            except BadObject as exc:
                SKIPPED.labels(self._resource.plural).inc()
                log.warning("%s: watch event skipped: %s", self._resource.plural, exc)
                continue
            if rv:
                self.resource_version = rv
            current = self._items
            if kind == "DELETED":
                if key not in current:
                    continue
                updated = current.copy()  # dict.copy: ~30x faster than dict(mapping proxy)
                del updated[key]
            else:
                value = self._convert_item(raw)
                if value is None or current.get(key) == value:
                    # Keep the last good state: a malformed update must not delete data.
                    continue
                updated = current.copy()
                updated[key] = value
            self._publish(updated, key)
            self._on_change()
        self.freshness.event()  # the stream ended cleanly: the server was there

    def _publish(self, items: dict[tuple[str, str], T], key: tuple[str, str] | None) -> None:
        """Make `items` the cache: `key` changed, or (None) anything may have."""
        version = self.version + 1
        if key is None:
            self._floor = version
        else:
            self._changes.append((version, key))
        self._items = items
        self.items = MappingProxyType(items)
        self.version = version
        self.state = (version, self.items)  # last: readers of `state` see a logged change
        self.freshness.change()

    def changed_since(self, since: int, upto: int) -> set[tuple[str, str]] | None:
        """The keys changed after version `since` up to `upto` (a version read from
        `state`); None when that is not known (a relist, or a log outgrown): all may have."""
        if since < self._floor:
            return None
        log_copy = list(self._changes)  # one C-level copy: the writer may append meanwhile
        if since < upto and (not log_copy or log_copy[0][0] > since + 1):
            return None
        return {key for version, key in log_copy if since < version <= upto}
