"""One merged catalog from the Kubernetes and Consul snapshots.

PURE. Keyed by (namespace, service). Each instance keeps its origin. By default the two
sides are united: a Consul service with the same namespace and name as a local Service
adds its instances to it. With `local_wins`, a local Service that has instances hides
the remote ones of the same name.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from bridge.catalog.model import Catalog, Service, Snapshot


def merge(kube: Snapshot, consul: Snapshot, *, local_wins: bool = False,
          generation: int = 0) -> Catalog:
    # `.copy()` of the read-only view copies its dict in C (`dict(view)` goes key by key).
    services: dict = kube.services.copy()  # type: ignore[attr-defined]
    for key, remote in consul.services.items():
        local = services.get(key)
        if local is None:
            services[key] = remote
            continue
        if local_wins and local.instances:
            continue
        services[key] = _united(local, remote)
    return Catalog(MappingProxyType(services), ready=kube.synced and consul.synced,
                   generation=generation)


def _united(local: Service, remote: Service) -> Service:
    seen = {i.address for i in local.instances}
    extra = tuple(i for i in remote.instances if i.address not in seen)
    return dataclasses.replace(local, instances=local.instances + extra)
