"""Kubernetes as a Source: Services joined with their EndpointSlices, as a Snapshot.

Two reflectors (services, endpointslices) feed this source, plus nodes and ingresses when
the sync needs them; `snapshot()` joins their current caches on demand, so it always
reflects one cache state of each. Two views filter the joined Services by namespace: the
source itself is the sync's (`kubernetes.namespaces`, `kubernetes.deny_namespaces`: what
goes to Consul, as consul-k8s), and `dns` is DNS's (`dns.namespaces`,
`dns.deny_namespaces`: every namespace by default). Objects this bridge materialised from
Consul are left out of both, so they are never pushed back.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from bridge.catalog.model import Service, ServiceKey, Snapshot
from bridge.config import KubernetesSettings
from bridge.kube.client import ENDPOINT_SLICES, INGRESSES, NODES, SERVICES, KubeClient, Resource
from bridge.kube.objects import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Slice,
    ingress_from_raw,
    join,
    node_from_raw,
    service_from_raw,
    slice_from_raw,
)
from bridge.kube.watch import Reflector
from bridge.threads import Threads

T = TypeVar("T")
ServiceRef = tuple[str, str]  # (namespace, name) of a Service or an EndpointSlice


def namespace_allowed(namespace: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Allow and deny lists with shell wildcards; deny wins."""
    if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in deny):
        return False
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in allow)


class NamespaceFilter:
    """Allow and deny lists with shell wildcards (`namespace_allowed`), verdicts cached."""

    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
        self.allow, self.deny = allow, deny
        self._verdicts: dict[str, bool] = {}  # wildcards cost: one verdict per namespace

    def __call__(self, namespace: str) -> bool:
        verdict = self._verdicts.get(namespace)
        if verdict is None:
            verdict = self._verdicts[namespace] = namespace_allowed(namespace, self.allow,
                                                                    self.deny)
        return verdict


class _View:
    """The joined Services one consumer sees (those of the namespaces it admits), kept up
    to date with the join, and its last snapshot."""

    def __init__(self, admits: NamespaceFilter) -> None:
        self.admits = admits
        self.result: dict[ServiceKey, Service] = {}  # in first-seen order, as the join
        self.last: Snapshot | None = None
        self.last_key: tuple[tuple[int, ...], bool] = ((), False)


class DnsView:
    """The Services DNS answers for (`dns.namespaces`, `dns.deny_namespaces`): a `Source`."""

    def __init__(self, source: KubeSource, view: _View) -> None:
        self._source = source
        self._view = view

    @property
    def synced(self) -> bool:
        return self._source.synced

    def snapshot(self) -> Snapshot:
        return self._source.snapshot_of(self._view)


class KubeSource:
    """Mirrors Services and EndpointSlices (and Nodes, when NodePort Services are synced to
    their node addresses; and Ingresses, when Services behind them are registered at the
    Ingress); `synced` once each has listed completely."""

    def __init__(self, kube: KubeClient, settings: KubernetesSettings, cluster_id: str,
                 on_change: Callable[[], None], stop: threading.Event, *,
                 watch_nodes: bool = False, watch_ingresses: bool = False,
                 dns_namespaces: tuple[tuple[str, ...], tuple[str, ...]] = (("*",), ()),
                 threads: Threads | None = None) -> None:
        self._settings = settings
        self._cluster_id = cluster_id
        threads = threads or Threads()

        def reflector(resource: Resource, convert: Callable[[Any], T]) -> Reflector[T]:
            return Reflector(kube, resource, convert, on_change,
                             watch_timeout=settings.watch_timeout, stop=stop, threads=threads)

        self.services = reflector(SERVICES, service_from_raw)
        self.slices = reflector(ENDPOINT_SLICES, slice_from_raw)
        self.nodes = reflector(NODES, node_from_raw) if watch_nodes else None
        self.ingresses = reflector(INGRESSES, ingress_from_raw) if watch_ingresses else None
        # The incremental join (see `snapshot`), guarded by `_lock`: both the DNS publisher
        # and the reconciler take snapshots.
        self._lock = threading.Lock()
        self._joined: dict[ServiceRef, tuple[Service, tuple[Slice, ...], Service]] = {}
        self._slice_owner: dict[ServiceRef, ServiceRef] = {}  # slice key -> its Service's key
        self._slices_of: dict[ServiceRef, dict[ServiceRef, Slice]] = {}
        self._sync_view = _View(NamespaceFilter(settings.namespaces, settings.deny_namespaces))
        self._dns_view = _View(NamespaceFilter(*dns_namespaces))
        self._views = (self._sync_view, self._dns_view)
        self._joined_at: tuple[int, ...] | None = None  # reflector versions of the join
        self.dns = DnsView(self, self._dns_view)
        self.dns_admits = self._dns_view.admits  # DNS's namespace filter, for `bridge explain`
        self._reflectors = [r for r in (self.services, self.slices, self.nodes, self.ingresses)
                            if r is not None]

    @property
    def reflectors(self) -> tuple[Reflector[Any], ...]:
        """Services, EndpointSlices, and Nodes and Ingresses when watched."""
        return tuple(self._reflectors)

    def start(self) -> None:
        for reflector in self._reflectors:
            reflector.start()

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors)

    def objects(self) -> tuple[Mapping[tuple[str, str], Service], Mapping[tuple[str, str], Slice]]:
        """Every Service and EndpointSlice as cached, ours included (for the Kubernetes sink)."""
        return self.services.items, self.slices.items

    def snapshot(self) -> Snapshot:
        """The sync's view: the joined Services of the namespaces synced to Consul."""
        return self.snapshot_of(self._sync_view)

    def snapshot_of(self, view: _View) -> Snapshot:
        """The joined Services `view` admits, of one cache state of each reflector. Redoes
        only the Services whose Service or slices changed since the last call (the DNS
        publisher and the reconciler call it, often); the same Snapshot while nothing did."""
        with self._lock:
            (services_version, services), (slices_version, slices) = \
                self.services.state, self.slices.state
            versions = (services_version, slices_version,
                        *(r.state[0] for r in self._reflectors[2:]))
            synced = self.synced
            key = (versions, synced)
            if view.last is not None and view.last_key == key:
                return view.last
            if self._joined_at != key[0]:
                seen = self._joined_at
                changed = self._changed(seen, key[0]) if seen is not None else None
                if changed is None:
                    self._rejoin_all(services, slices)
                else:
                    self._rejoin(*changed, services, slices)
                self._joined_at = key[0]
            nodes = {node.name: node for node in self.nodes.items.values()} if self.nodes else {}
            routes = []
            if self.ingresses:
                cached = self.ingresses.items
                routes = [route for key_ in sorted(cached) for route in cached[key_]
                          if view.admits(route.namespace)]
            snap = Snapshot(MappingProxyType(dict(view.result)), synced,
                            MappingProxyType(nodes), tuple(routes))
            view.last, view.last_key = snap, key
            return snap

    def _wanted(self, namespace: str) -> bool:
        return any(view.admits(namespace) for view in self._views)

    def _changed(self, seen: tuple[int, ...], now: tuple[int, ...]
                 ) -> tuple[set[ServiceRef], set[ServiceRef]] | None:
        """The Service and slice keys changed between reflector versions `seen` and `now`;
        None when that is not known."""
        service_keys = self.services.changed_since(seen[0], now[0])
        slice_keys = self.slices.changed_since(seen[1], now[1])
        if service_keys is None or slice_keys is None:
            return None
        return service_keys, slice_keys

    def _rejoin_all(self, services: Mapping[ServiceRef, Service],
                    slices: Mapping[ServiceRef, Slice]) -> None:
        self._slice_owner, self._slices_of = {}, {}
        for slice_key, sl in slices.items():
            self._index_slice(slice_key, sl)
        joined = self._joined
        self._joined = {}
        for view in self._views:
            view.result = {}
        for key, svc in services.items():
            one = self._join_one(key, svc, joined.get(key))
            if one is not None:
                for view in self._views:
                    if view.admits(one.key.namespace):
                        view.result[one.key] = one

    def _rejoin(self, service_keys: set[ServiceRef], slice_keys: set[ServiceRef],
                services: Mapping[ServiceRef, Service],
                slices: Mapping[ServiceRef, Slice]) -> None:
        """Join again the Services in `service_keys` and those a changed slice belonged to
        before or belongs to now."""
        dirty = set(service_keys)
        for slice_key in slice_keys:
            owner = self._slice_owner.pop(slice_key, None)
            if owner is not None:
                self._slices_of.get(owner, {}).pop(slice_key, None)
                dirty.add(owner)
            sl = slices.get(slice_key)
            if sl is not None:
                self._index_slice(slice_key, sl)
                dirty.add((sl.namespace, sl.service))
        for key in dirty:
            svc = services.get(key)
            previous = self._joined.pop(key, None)
            joined = self._join_one(key, svc, previous) if svc is not None else None
            for view in self._views:
                result = view.result
                if previous is not None and (joined is None or joined.key != previous[2].key):
                    result.pop(previous[2].key, None)
                if joined is not None and view.admits(joined.key.namespace):
                    # In place when the key stays: the order of the result holds, so
                    # consumers comparing two snapshots side by side stay on their fast path.
                    result[joined.key] = joined

    def _index_slice(self, slice_key: ServiceRef, sl: Slice) -> None:
        if sl.service:
            owner = (sl.namespace, sl.service)
            self._slice_owner[slice_key] = owner
            self._slices_of.setdefault(owner, {})[slice_key] = sl

    def _join_one(self, key: ServiceRef, svc: Service,
                  previous: tuple[Service, tuple[Slice, ...], Service] | None) -> Service | None:
        """`svc` joined with its slices (None if no view admits its namespace, or it is
        one we materialised), recorded for the next pass."""
        if not self._wanted(svc.key.namespace) \
                or svc.label(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
            return None
        own = tuple(self._slices_of.get(key, {}).values())
        # Unchanged inputs are the same objects (reflectors replace only what changed):
        # reusing the join keeps unchanged Services identical for the sinks' memo and the
        # DNS table's incremental update.
        if previous is not None and previous[0] is svc and len(previous[1]) == len(own) \
                and all(a is b for a, b in zip(previous[1], own, strict=True)):
            joined = previous[2]
        else:
            joined = join(svc, own, self._cluster_id)
        self._joined[key] = (svc, own, joined)
        return joined
