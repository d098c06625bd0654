"""Which instances of dead clusters DNS stops answering, with self-preservation.

PURE. A cluster is dead once its bridge's claim in Consul has lapsed (`bridge/ha/clusters.py`
watches that); `dead` maps each dead cluster id to when it was first seen dead, on the
caller's monotonic clock. After `after` seconds dead, a cluster's instances are hidden,
name by name, unless that would take away more than half of the name's instances: a
partition that makes half the world look dead must not make DNS forget it (Eureka's
self-preservation, per name). Hidden instances come back as soon as the cluster is alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from bridge.catalog.model import Instance, OriginKind, Service, ServiceKey
from bridge.catalog.plan import OWNER_META


def owner_of(instance: Instance) -> str:
    """The cluster whose bridge registered a Consul instance; "" for any other instance."""
    if instance.origin.kind is not OriginKind.CONSUL:
        return ""
    for key, value in instance.meta:
        if key == OWNER_META:
            return value
    return ""


def expired(dead: Mapping[str, float], now: float, after: float) -> frozenset[str]:
    """The dead clusters whose instances are due to be hidden (none when `after` is 0)."""
    if after <= 0:
        return frozenset()
    return frozenset(cluster for cluster, since in dead.items() if now - since >= after)


@dataclass(frozen=True)
class Expiry:
    """The services with due instances hidden, and what was hidden or kept, per name."""

    services: Mapping[ServiceKey, Service]
    hidden: Mapping[ServiceKey, int] = field(default_factory=dict)  # instances hidden
    kept: Mapping[ServiceKey, frozenset[str]] = field(default_factory=dict)  # dead owners kept


def expire(services: Mapping[ServiceKey, Service], dead: Mapping[str, float], now: float,
           after: float) -> Expiry:
    """`services` less the instances of clusters dead for `after` seconds, except where
    that would remove more than half of a name's instances."""
    due = expired(dead, now, after)
    if not due:
        return Expiry(services)
    changed: dict[ServiceKey, Service] = {}
    hidden: dict[ServiceKey, int] = {}
    kept: dict[ServiceKey, frozenset[str]] = {}
    for key, service in services.items():
        owners = [owner_of(i) for i in service.instances]
        gone = [o in due for o in owners]
        count = sum(gone)
        if not count:
            continue
        if 2 * count > len(owners):
            kept[key] = frozenset(o for o in owners if o in due)
            continue
        changed[key] = replace(service, instances=tuple(
            i for i, g in zip(service.instances, gone, strict=True) if not g))
        hidden[key] = count
    if not changed:
        return Expiry(services, hidden, kept)
    merged = dict(services)
    merged.update(changed)
    return Expiry(MappingProxyType(merged), hidden, kept)
