"""Kubernetes as a Source: Services joined with their EndpointSlices, as a Snapshot.

Two reflectors (services, endpointslices) feed this source; `snapshot()` joins their
current caches on demand, so it always reflects one cache state of each. Namespaces the
settings do not expose are left out here, once, for DNS and the sync alike. Objects this
bridge materialised from Consul are left out too, so they are never pushed back.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import defaultdict
from collections.abc import Callable

from bridge.catalog.model import Snapshot
from bridge.config import KubernetesSettings
from bridge.kube.client import ENDPOINT_SLICES, NODES, SERVICES, KubeClient
from bridge.kube.objects import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    Slice,
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
    their node addresses); `synced` once each has listed completely."""

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
        self._reflectors = [r for r in (self.services, self.slices, self.nodes) if r is not None]

    def start(self) -> None:
        for reflector in self._reflectors:
            reflector.start()

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors)

    def snapshot(self) -> Snapshot:
        services = self.services.items
        slices = self.slices.items
        by_service: dict[tuple[str, str], list[Slice]] = defaultdict(list)
        for sl in slices.values():
            if sl.service:
                by_service[(sl.namespace, sl.service)].append(sl)
        allow, deny = self._settings.namespaces, self._settings.deny_namespaces
        joined = [
            join(svc, by_service.get((svc.key.namespace, svc.key.name), ()), self._cluster_id)
            for svc in services.values()
            if namespace_allowed(svc.key.namespace, allow, deny)
            and svc.label(MANAGED_BY_LABEL) != MANAGED_BY_VALUE
        ]
        nodes = {node.name: node for node in self.nodes.items.values()} if self.nodes else {}
        return Snapshot.of(joined, self.synced, nodes)
