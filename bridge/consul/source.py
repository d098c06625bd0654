"""Consul as a Source: services others registered, as a Snapshot.

One blocking query follows `/v1/catalog/services`; for each service name it starts one
blocking query on `/v1/health/service/<name>` and ends it when the name disappears. All of
them are tasks on one event loop thread (reader.py) reading over aiohttp (reads.py), so
the source costs one thread however many services Consul holds; each query keeps
Consul's blocking-query rules (blocking.py). Every query owns its own entry in `_entries`
and replaces it whole; `snapshot()` reads the current entries without a lock. Instances
this bridge registered itself (our node, our owner marker) are dropped here, so nothing we
wrote is ever pulled back.

A sidecar (`kubernetes.enabled: false`) writes nothing and watches no Kubernetes API, so
the only source of its own cluster's Services is what the central bridge of that cluster
registered: with `keep_ours` every instance is kept, and those of a Kubernetes origin
answer under the `external-k8s-ns` and `external-k8s-name` their registration carries.

With `adopt_node` (`sync.adopt_node`), what consul-k8s registered on that node is this
cluster's own Services as consul-k8s saw them. The central bridge drops them: its
Kubernetes view answers for them, and its sync takes them over. A sidecar drops each one
whose service ID our node holds too: while the central bridge takes over, the same
instance is registered on both nodes, and is answered once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from prometheus_client import Counter

from bridge.catalog.model import Instance, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.naming import (
    NAME_META,
    NAMESPACE_META,
    NAMESPACE_OVERRIDE_META,
    consul_service_key,
    dns_labels,
)
from bridge.consul.blocking import BlockingQuery
from bridge.consul.client import ConsulClient
from bridge.consul.objects import (
    BadEntry,
    failing_checks,
    instance_from_health,
    is_consul_k8s,
    is_ours,
)
from bridge.consul.reader import Reader
from bridge.freshness import Freshness
from bridge.threads import Threads

log = logging.getLogger(__name__)

SKIPPED = Counter("bridge_consul_entries_skipped_total", "Consul entries skipped as malformed")
COLLISIONS = Counter("bridge_consul_name_collisions_total",
                     "Consul service names that sanitised to a label already taken")
__all__ = ["NAMESPACE_META", "NAMESPACE_OVERRIDE_META", "NAME_META", "ConsulSource"]
SERVICES_TASK = ""  # the reader's task for the service list; a Consul service name is never empty


class Reads(Protocol):
    """The blocking reads the source makes (reads.py; a script in tests)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def services(self, index: int | None, *, not_on_node: str = ""
                       ) -> tuple[int, dict[str, list[str]]]: ...

    async def health_service(self, name: str, index: int | None) -> tuple[int, list[dict[str, Any]]]: ...


class ConsulSource:
    """Follows the Consul catalog; `synced` once every listed service has been read once."""

    def __init__(self, client: ConsulClient, *, our_node: str, cluster_id: str,
                 default_namespace: str, on_change: Callable[[], None],
                 stop: threading.Event, admit_warning: bool = False,
                 keep_ours: bool = False, threads: Threads | None = None,
                 adopt_node: str = "",
                 reads: Callable[[], Reads] | None = None) -> None:
        """`keep_ours`: keep the instances `our_node` and `cluster_id` mark as this
        cluster's (a sidecar); otherwise they are dropped (the central bridge wrote them).
        `adopt_node`: consul-k8s's node, whose copies of this cluster's Services are dropped.
        `reads` makes the reads at `start()` (default: over HTTP with the client's settings)."""
        self._client = client
        self._our_node = our_node
        self._adopt_node = adopt_node
        self._cluster_id = cluster_id
        self._keep_ours = keep_ours
        self._namespace = default_namespace
        self._on_change = on_change
        self._stop = stop
        self._admit_warning = admit_warning
        self._threads = threads or Threads()
        self._make_reads = reads
        self._entries: dict[str, tuple[Instance, ...]] = {}
        self._names: frozenset[str] = frozenset()
        self._watched: frozenset[str] = frozenset()
        self._listed = threading.Event()
        self._collisions: set[tuple[str, str, str]] = set()
        self._services: dict[ServiceKey, Service] = {}
        self._synced = False
        self._lock = threading.Lock()  # guards replacing the entries, not the readers
        self._reader: Reader | None = None
        self._reads: Reads | None = None
        self.freshness = Freshness("consul")
        # Why instances of a name are not healthy or were skipped, for `bridge explain`:
        # name -> {"<service ID> on <node>": why}; replaced whole, as `_entries`.
        self.notes: dict[str, dict[str, str]] = {}
        self.labels: dict[str, str] = {}  # Consul name -> its DNS label, as of the last snapshot

    @property
    def thread(self) -> threading.Thread | None:
        """The one thread every query of this source runs on."""
        return self._reader.thread if self._reader is not None else None

    def start(self) -> None:
        if self._make_reads is None:
            from bridge.consul.reads import ConsulReads  # aiohttp: loaded by a source that reads

            self._reads = ConsulReads(self._client)
        else:
            self._reads = self._make_reads()
        reads = self._reads
        self._reader = Reader("consul-reader", self._threads, on_open=reads.open, on_close=reads.close)
        # Names whose instances are all ours (on our node) need no query: one blocking
        # query per foreign service only. A sidecar keeps ours: every name.
        not_on_node = "" if self._keep_ours else self._our_node
        reader = self._reader

        def services(index: int | None) -> Awaitable[tuple[int, dict[str, list[str]]]]:
            return reads.services(index, not_on_node=not_on_node)

        def follow() -> None:
            reader.run(SERVICES_TASK, BlockingQuery("consul services", services, self._on_services,
                                                     sleep=self._pause).run())

        reader.submit(follow)
        reader.start()

    @property
    def entries(self) -> dict[str, tuple[Instance, ...]]:
        """Consul name -> its instances, as last read (ours left out unless kept)."""
        return self._entries

    @property
    def collisions(self) -> set[tuple[str, str, str]]:
        """Names that sanitise to a label already taken: (loser, winner, loser's label)."""
        return self._collisions

    @property
    def watched(self) -> frozenset[str]:
        """The Consul service names with a blocking query of their own."""
        return self._watched

    def close(self) -> None:
        """Ends every query (those in flight are cut) and the reader's thread."""
        if self._reader is not None:
            self._reader.close()

    @property
    def synced(self) -> bool:
        """True once the service list and every service in it have been read completely.
        A latch: a service that appears later does not make the source unsynced again."""
        if self._synced:
            return True
        if not self._listed.is_set():
            return False
        entries = self._entries
        self._synced = all(name in entries for name in self._names)
        return self._synced

    def _on_services(self, services: dict[str, list[str]]) -> bool:
        """On the reader's loop: starts a query per new name, ends those of names gone."""
        if self._stop.is_set():
            return False
        self.freshness.event()
        names = frozenset(services)
        reader, reads = self._reader, self._reads
        assert reader is not None and reads is not None
        for gone in self._watched - names:
            reader.cancel(gone)
        for new in names - self._watched:
            reader.run(new, self._follow(new, reads))
        self._watched = names
        with self._lock:
            self._names = names
            removed = [n for n in self._entries if n not in names]
            if removed:
                entries = dict(self._entries)
                for name in removed:
                    entries.pop(name, None)
                self._entries = entries
                self.notes = {n: found for n, found in self.notes.items() if n in names}
        first = not self._listed.is_set()
        self._listed.set()
        if removed:
            self.freshness.change()
        if removed or first:
            self._on_change()
        return True

    def _follow(self, name: str, reads: Reads) -> Coroutine[Any, Any, None]:
        def fetch(index: int | None) -> Awaitable[tuple[int, list[dict[str, Any]]]]:
            return reads.health_service(name, index)

        def deliver(entries: list[dict[str, Any]]) -> bool:
            if self._stop.is_set():
                return False
            self._store(name, entries)
            return True

        return BlockingQuery(f"consul service {name}", fetch, deliver, sleep=self._pause).run()

    async def _pause(self, seconds: float) -> None:
        """The queries' wait between retries: the reads' own (which waits through an
        outage of Consul) when they have one."""
        pause = getattr(self._reads, "pause", None)
        await (pause(seconds) if pause is not None else asyncio.sleep(seconds))

    def _store(self, name: str, entries: list[dict[str, Any]]) -> None:
        self.freshness.event()
        instances: list[Instance] = []
        ours = self._our_ids(entries) if self._adopt_node and self._keep_ours else frozenset()
        notes: dict[str, str] = {}
        for entry in entries:
            service = entry.get("Service") or {}
            node = str((entry.get("Node") or {}).get("Node") or "")
            if not isinstance(service, dict):
                continue
            if not self._keep_ours and is_ours(service, node, self._our_node, self._cluster_id):
                continue
            if node == self._adopt_node and self._adopt_node and is_consul_k8s(service) \
                    and (not self._keep_ours or str(service.get("ID") or "") in ours):
                continue
            where = f"{service.get('ID') or '?'} on {node or '?'}"
            try:
                instance = instance_from_health(entry, not self._admit_warning)
            except BadEntry as exc:
                SKIPPED.inc()
                log.warning("consul service %s: entry skipped: %s", name, exc)
                notes[where] = f"skipped as malformed: {exc}"
                continue
            instances.append(instance)
            if not instance.ready:
                notes[where] = "checks not passing: " + failing_checks(entry, not self._admit_warning)
        value = tuple(sorted(instances))
        with self._lock:
            if name not in self._names and self._listed.is_set():
                return  # the service vanished while this answer was in flight
            if self.notes.get(name, {}) != notes:
                self.notes = {**self.notes, name: notes}
            if name in self._entries and self._entries[name] == value:
                return
            entries_copy = dict(self._entries)
            entries_copy[name] = value
            self._entries = entries_copy
        self.freshness.change()
        self._on_change()

    def _our_ids(self, entries: list[dict[str, Any]]) -> frozenset[str]:
        """The service IDs of `entries` on our node."""
        ids = set()
        for entry in entries:
            service, node = entry.get("Service"), entry.get("Node")
            if isinstance(service, dict) and isinstance(node, dict) and node.get("Node") == self._our_node:
                ids.add(str(service.get("ID") or ""))
        return frozenset(ids)

    def snapshot(self) -> Snapshot:
        entries = self._entries
        labels, collisions = dns_labels(entries)
        for loser, winner, label in collisions:
            if (loser, winner, label) not in self._collisions:  # reported once, while it lasts
                COLLISIONS.inc()
                log.warning("consul services %r and %r map to one DNS name; %r answers as %r",
                            winner, loser, loser, label)
        self._collisions = set(collisions)
        grouped: dict[ServiceKey, list[Instance]] = defaultdict(list)
        for name, instances in entries.items():
            for instance in instances:
                grouped[consul_service_key(dict(instance.meta), labels[name], self._namespace)].append(instance)
        services: dict[ServiceKey, Service] = {}
        for key, found in grouped.items():
            instances = tuple(found)
            previous = self._services.get(key)
            # Unchanged services stay the same objects, so consumers can skip them cheaply.
            if previous is not None and previous.instances == instances:
                services[key] = previous
            else:
                services[key] = Service(key=key, type=ServiceType.HEADLESS,
                                        ports=tuple(sorted({p for i in instances for p in i.ports})),
                                        instances=instances)
        self._services = services
        self.labels = labels
        return Snapshot.of(services.values(), self.synced)
