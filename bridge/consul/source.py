"""Consul as a Source: services others registered, as a Snapshot.

One blocking loop follows `/v1/catalog/services`; for each service name it starts one
blocking loop on `/v1/health/service/<name>` and stops it when the name disappears.
Every loop owns its own entry in `_entries` and replaces it whole; `snapshot()` reads
the current entries without a lock. Instances this bridge registered itself (our node,
our owner marker) are dropped here, so nothing we wrote is ever pulled back.

A sidecar (`kubernetes.enabled: false`) writes nothing and watches no Kubernetes API, so
the only source of its own cluster's Services is what the central bridge of that cluster
registered: with `keep_ours` every instance is kept, and those of a Kubernetes origin
answer under the `external-k8s-ns` and `external-k8s-name` their registration carries.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from bridge.catalog.model import Instance, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.naming import dns_label, dns_labels
from bridge.consul.blocking import BlockingLoop
from bridge.consul.client import ConsulClient
from bridge.consul.objects import BadEntry, instance_from_health, is_ours
from bridge.outage import Outage
from bridge.threads import Threads

log = logging.getLogger(__name__)

SKIPPED = Counter("bridge_consul_entries_skipped_total", "Consul entries skipped as malformed")
COLLISIONS = Counter("bridge_consul_name_collisions_total",
                     "Consul service names that sanitised to a label already taken")
NAMESPACE_META = "external-k8s-ns"
NAME_META = "external-k8s-name"
# Set by whoever registers a service in Consul, to choose its namespace under cluster.local.
NAMESPACE_OVERRIDE_META = "k8s-namespace"


class _Watcher:
    def __init__(self, name: str, thread: threading.Thread, stop: threading.Event) -> None:
        self.name, self.thread, self.stop = name, thread, stop


class ConsulSource:
    """Follows the Consul catalog; `synced` once every listed service has been read once."""

    def __init__(self, client: ConsulClient, *, our_node: str, cluster_id: str,
                 default_namespace: str, on_change: Callable[[], None],
                 stop: threading.Event, admit_warning: bool = False,
                 keep_ours: bool = False, threads: Threads | None = None) -> None:
        """`keep_ours`: keep the instances `our_node` and `cluster_id` mark as this
        cluster's (a sidecar); otherwise they are dropped (the central bridge wrote them)."""
        self._client = client
        # Consul's outage, which every loop here waits through (a stand-in client may have none).
        self._outage: Outage | None = getattr(client, "outage", None)
        self._our_node = our_node
        self._cluster_id = cluster_id
        self._keep_ours = keep_ours
        self._namespace = default_namespace
        self._on_change = on_change
        self._stop = stop
        self._admit_warning = admit_warning
        self._threads = threads or Threads()
        self._entries: dict[str, tuple[Instance, ...]] = {}
        self._watchers: dict[str, _Watcher] = {}
        self._names: frozenset[str] = frozenset()
        self._listed = threading.Event()
        self._collisions: set[tuple[str, str, str]] = set()
        self._services: dict[ServiceKey, Service] = {}
        self._synced = False
        self._lock = threading.Lock()  # guards the watcher set, not the entries readers see
        # Names whose instances are all ours (on our node) need no watcher: one blocking
        # query and thread per foreign service only. A sidecar keeps ours: every name.
        not_on_node = "" if keep_ours else our_node
        self._loop = BlockingLoop("consul services",
                                  lambda index: self._client.services(index, not_on_node=not_on_node),
                                  self._on_services, stop, outage=self._outage)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = self._threads.start("consul-services", self._loop.run)

    @property
    def watched(self) -> frozenset[str]:
        """The Consul service names with a blocking query of their own."""
        with self._lock:
            return frozenset(self._watchers)

    def close(self) -> None:
        """Tells every per-service loop to end; the services loop ends with `stop`. Their
        requests in flight are cut by closing the client."""
        with self._lock:
            for watcher in self._watchers.values():
                watcher.stop.set()

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
        names = frozenset(services)
        with self._lock:
            for gone in set(self._watchers) - names:
                self._watchers.pop(gone).stop.set()
            for new in names - set(self._watchers):
                self._start_watcher(new)
            self._names = names
            removed = [n for n in self._entries if n not in names]
            if removed:
                entries = dict(self._entries)
                for name in removed:
                    entries.pop(name, None)
                self._entries = entries
        first = not self._listed.is_set()
        self._listed.set()
        if removed or first:
            self._on_change()
        return True

    def _start_watcher(self, name: str) -> None:
        stop = threading.Event()
        if self._stop.is_set():
            stop.set()

        def fetch(index: int | None) -> tuple[int, list[dict[str, Any]]]:
            return self._client.health_service(name, index, passing=False)

        def deliver(entries: list[dict[str, Any]]) -> bool:
            if stop.is_set():
                return False
            self._store(name, entries)
            return True

        loop = BlockingLoop(f"consul service {name}", fetch, deliver, stop, outage=self._outage)
        thread = self._threads.start(f"consul-{name}", loop.run)
        self._watchers[name] = _Watcher(name, thread, stop)

    def _store(self, name: str, entries: list[dict[str, Any]]) -> None:
        instances: list[Instance] = []
        for entry in entries:
            service = entry.get("Service") or {}
            node = str((entry.get("Node") or {}).get("Node") or "")
            if not isinstance(service, dict):
                continue
            if not self._keep_ours and is_ours(service, node, self._our_node, self._cluster_id):
                continue
            try:
                instances.append(instance_from_health(entry, not self._admit_warning))
            except BadEntry as exc:
                SKIPPED.inc()
                log.warning("consul service %s: entry skipped: %s", name, exc)
        value = tuple(sorted(instances))
        with self._lock:
            if name not in self._names and self._listed.is_set():
                return  # the service vanished while this answer was in flight
            if name in self._entries and self._entries[name] == value:
                return
            entries_copy = dict(self._entries)
            entries_copy[name] = value
            self._entries = entries_copy
        self._on_change()

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
                meta = dict(instance.meta)
                override = meta.get(NAMESPACE_OVERRIDE_META)
                namespace = meta.get(NAMESPACE_META) or (dns_label(override) if override else self._namespace)
                label = meta.get(NAME_META) or labels[name] if NAMESPACE_META in meta \
                    else labels[name]
                grouped[ServiceKey(namespace, label)].append(instance)
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
        return Snapshot.of(services.values(), self.synced)
