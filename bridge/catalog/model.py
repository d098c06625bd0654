"""The bridge's own value types: what every source produces and every consumer reads.

Everything here is frozen and hashable so that a snapshot can be shared between threads
without locks and compared by value (an unchanged world compares equal and writes nothing).
Raw Kubernetes or Consul objects never get past the boundary modules that build these.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple


class ServiceType(enum.StrEnum):
    """How a Service is reached; decides which DNS records and registrations it gets."""

    CLUSTER_IP = "ClusterIP"
    HEADLESS = "Headless"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


class OriginKind(enum.StrEnum):
    KUBERNETES = "kubernetes"
    CONSUL = "consul"


class ServiceKey(NamedTuple):
    """(namespace, name): the identity of a service under `<name>.<namespace>.svc.<zone>`.

    A tuple, so hashing, comparing and sorting run in C: every catalog map is keyed by it,
    and a pass looks up each of its 10,000 keys more than once.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Port:
    """A named port. `name` is "" for an unnamed port (no SRV record is published for it)."""

    name: str
    port: int
    protocol: str = "TCP"
    node_port: int = 0  # a Service port's nodePort (NodePort, LoadBalancer); 0 when none


@dataclass(frozen=True, slots=True, order=True)
class Origin:
    """Where an instance came from: this cluster's Kubernetes API, or a Consul node.

    `source` is the cluster id for Kubernetes origins and the Consul node name for Consul ones.
    """

    kind: OriginKind
    source: str


@dataclass(frozen=True, slots=True, order=True)
class Instance:
    """One reachable address of a service (a pod, a VM, a node) with the ports it serves."""

    address: str
    ports: tuple[Port, ...]
    origin: Origin
    ready: bool = True
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    target: str = ""  # the pod name (or other referent) behind the address
    consul_id: str = ""  # the Consul service ID, for instances read from Consul
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()


def frozen_map(items: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[
    tuple[str, str], ...
]:
    """A mapping as a sorted tuple of pairs: hashable, comparable, cheap to share."""
    if items is None:
        return ()
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


@dataclass(frozen=True, slots=True)
class Service:
    """A service as DNS and the sinks see it, with all of its instances."""

    key: ServiceKey
    type: ServiceType
    ports: tuple[Port, ...] = ()
    cluster_ips: tuple[str, ...] = ()
    external_name: str = ""
    instances: tuple[Instance, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    publish_not_ready: bool = False
    external_ips: tuple[str, ...] = ()
    load_balancer_ingress: tuple[str, ...] = ()  # IPs, or hostnames where there is no IP
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def headless(self) -> bool:
        return self.type is ServiceType.HEADLESS

    def annotation(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.annotations:
            if key == name:
                return value
        return default

    def label(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.labels:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Node:
    """A Kubernetes node's addresses, for registering NodePort Services at the nodes."""

    name: str
    internal_ips: tuple[str, ...] = ()
    external_ips: tuple[str, ...] = ()
    zone: str = ""


@dataclass(frozen=True, slots=True, order=True)
class IngressRoute:
    """One Ingress path that sends traffic to a Service, reduced to what the sync reads:
    the rule's host (may be ""), the path, whether a TLS entry lists that host, and the
    Ingress's load balancer IPs (status order; entries with only a hostname left out).
    `ingress` is the Ingress's name; the Service is in the Ingress's namespace."""

    namespace: str
    ingress: str
    service: str
    host: str = ""
    path: str = ""
    tls: bool = False
    lb_ips: tuple[str, ...] = ()

    @property
    def service_key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one source saw at one moment. `synced` is False until it has listed completely."""

    services: Mapping[ServiceKey, Service] = field(default_factory=lambda: MappingProxyType({}))
    synced: bool = False
    nodes: Mapping[str, Node] = field(default_factory=lambda: MappingProxyType({}))
    # Ingress paths in (namespace, Ingress name, rule, path) order; empty unless watched.
    ingresses: tuple[IngressRoute, ...] = ()

    @staticmethod
    def of(services: Iterable[Service], synced: bool,
           nodes: Mapping[str, Node] | None = None,
           ingresses: Iterable[IngressRoute] = ()) -> Snapshot:
        return Snapshot(MappingProxyType({s.key: s for s in services}), synced,
                        MappingProxyType(dict(nodes or {})), tuple(ingresses))


@dataclass(frozen=True, slots=True)
class Catalog:
    """The merged view that DNS answers from: one immutable value, swapped atomically.

    `ready` is True once every source has listed completely once; before that DNS answers
    SERVFAIL rather than a possibly false NXDOMAIN.
    """

    services: Mapping[ServiceKey, Service] = field(default_factory=lambda: MappingProxyType({}))
    ready: bool = False
    generation: int = 0

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(key.namespace for key in self.services)
