"""Kubernetes as a Source: Services joined with their EndpointSlices, as a Snapshot.

Two reflectors (services, endpointslices) feed this source, plus nodes and ingresses when
the sync needs them; `snapshot()` joins their current caches on demand, so it always
reflects one cache state of each. Namespaces the
settings do not expose are left out here, once, for DNS and the sync alike. Objects this
bridge materialised from Consul are left out too, so they are never pushed back.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping

from bridge.catalog.model import Service, Snapshot
from bridge.config import KubernetesSettings
from bridge.kube.client import ENDPOINT_SLICES, INGRESSES, NODES, SERVICES, KubeClient
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


def namespace_allowed(namespace: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    """Allow and deny lists with shell wildcards; deny wins."""
    if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in deny):
        return False
    return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in allow)


class KubeSource:
    """Mirrors Services and EndpointSlices (and Nodes, when NodePort Services are synced to
    their node addresses; and Ingresses, when Services behind them are registered at the
    Ingress); `synced` once each has listed completely."""

    def __init__(self, kube: KubeClient, settings: KubernetesSettings, cluster_id: str,
                 on_change: Callable[[], None], stop: threading.Event, *,
                 watch_nodes: bool = False, watch_ingresses: bool = False) -> None:
        self._settings = settings
        self._cluster_id = cluster_id
        self.services = Reflector(kube, SERVICES, service_from_raw, on_change,
                                  watch_timeout=settings.watch_timeout, stop=stop)
        self.slices = Reflector(kube, ENDPOINT_SLICES, slice_from_raw, on_change,
                                watch_timeout=settings.watch_timeout, stop=stop)
        self.nodes = Reflector(kube, NODES, node_from_raw, on_change,
                               watch_timeout=settings.watch_timeout, stop=stop) if watch_nodes else None
        self.ingresses = Reflector(kube, INGRESSES, ingress_from_raw, on_change,
                                   watch_timeout=settings.watch_timeout,
                                   stop=stop) if watch_ingresses else None
        self._joined: dict[tuple[str, str], tuple[Service, tuple[Slice, ...], Service]] = {}
        self._reflectors = [r for r in (self.services, self.slices, self.nodes, self.ingresses)
                            if r is not None]

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
        services = self.services.items
        slices = self.slices.items
        by_service: dict[tuple[str, str], list[Slice]] = defaultdict(list)
        for sl in slices.values():
            if sl.service:
                by_service[(sl.namespace, sl.service)].append(sl)
        allow, deny = self._settings.namespaces, self._settings.deny_namespaces
        joined: list[Service] = []
        cache: dict[tuple[str, str], tuple[Service, tuple[Slice, ...], Service]] = {}
        for key, svc in services.items():
            if not namespace_allowed(svc.key.namespace, allow, deny) \
                    or svc.label(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
                continue
            own = tuple(by_service.get(key, ()))
            previous = self._joined.get(key)
            # Reflectors replace only what changed, so unchanged inputs are the same objects:
            # reusing the join keeps a pass over 10,000 Services cheap, and keeps unchanged
            # Services identical for the DNS table's incremental update.
            if previous is not None and previous[0] is svc and len(previous[1]) == len(own) \
                    and all(a is b for a, b in zip(previous[1], own, strict=True)):
                result = previous[2]
            else:
                result = join(svc, own, self._cluster_id)
            cache[key] = (svc, own, result)
            joined.append(result)
        self._joined = cache
        nodes = {node.name: node for node in self.nodes.items.values()} if self.nodes else {}
        routes = []
        if self.ingresses:
            cached = self.ingresses.items
            routes = [route for key in sorted(cached) for route in cached[key]
                      if namespace_allowed(route.namespace, allow, deny)]
        return Snapshot.of(joined, self.synced, nodes, routes)
