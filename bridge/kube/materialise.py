"""Consul services as Kubernetes objects: selector-less headless Services plus EndpointSlices.

PURE. consul-k8s writes ExternalName aliases that only Consul DNS can resolve; a headless
Service with EndpointSlices is resolved by any cluster DNS (CoreDNS, kube-dns) straight to
the instance IPs, with named ports for SRV. Every object carries our `managed-by` label and
`consul.hashicorp.com/service-sync: "false"`, so neither we nor consul-k8s push it back.

Objects are compared as `Desired` values: only the fields we set, so the API server's
defaults never look like drift, while a manual edit of any field we own does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from bridge.catalog.model import Instance, Port, Service, ServiceKey, frozen_map
from bridge.kube.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE, SERVICE_NAME_LABEL, Slice

SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "bridge.consul.k8s"
SYNC_ANNOTATION = "consul.hashicorp.com/service-sync"
SOURCE_ANNOTATION = "bridge/consul-service"

SERVICE_LABELS = frozen_map({MANAGED_BY_LABEL: MANAGED_BY_VALUE})
SERVICE_ANNOTATIONS_BASE = {SYNC_ANNOTATION: "false"}


@dataclass(frozen=True, slots=True, order=True)
class Desired:
    """One object we want, reduced to the fields we own."""

    plural: str  # services | endpointslices
    namespace: str
    name: str
    fields: tuple[Any, ...]  # a comparable projection, see service_fields / slice_fields

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.plural, self.namespace, self.name)


def _ports(instances: tuple[Instance, ...]) -> tuple[Port, ...]:
    """Distinct ports of the instances. Kubernetes wants a name on each when there are
    several: an unnamed one becomes `port-<number>`; a name used twice keeps its first."""
    seen: dict[tuple[str, int], Port] = {}
    for instance in instances:
        for port in instance.ports:
            seen.setdefault((port.name, port.port), port)
    ports = sorted(seen.values())
    if len(ports) > 1:
        ports = [p if p.name else Port(f"port-{p.port}", p.port, p.protocol) for p in ports]
    unique: dict[str, Port] = {}
    for port in ports:
        unique.setdefault(port.name, port)
    return tuple(unique.values())


def service_fields(labels: Any, annotations: Any, ports: tuple[Port, ...], selector: Any,
                   headless: bool) -> tuple[Any, ...]:
    ours = tuple((k, v) for k, v in annotations if k in (SYNC_ANNOTATION, SOURCE_ANNOTATION))
    return (tuple(sorted(labels)), ours, tuple(sorted((p.name, p.port, p.protocol) for p in ports)),
            tuple(selector), headless)


def slice_fields(service: str, address_type: str, ports: tuple[Port, ...],
                 addresses: tuple[str, ...], labels: Any) -> tuple[Any, ...]:
    wanted = tuple(sorted((k, v) for k, v in labels
                          if k in (SERVICE_NAME_LABEL, SLICE_MANAGED_BY, MANAGED_BY_LABEL)))
    return (service, address_type, tuple(sorted((p.name, p.port, p.protocol) for p in ports)),
            tuple(sorted(addresses)), wanted)


def _family(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


def slice_name(service: str, family: str, ports: tuple[Port, ...]) -> str:
    digest = hashlib.sha1(repr(sorted(ports)).encode()).hexdigest()[:6]
    return f"{service[:240]}-{family.lower()}-{digest}"


@dataclass(frozen=True)
class Materialised:
    """What one Consul service becomes in Kubernetes: a Service and its slices, as bodies and
    as comparable `Desired` values."""

    desired: tuple[Desired, ...]
    bodies: Mapping[tuple[str, str, str], dict[str, Any]]


def materialise(service: Service, consul_name: str) -> Materialised:
    """The Kubernetes objects for one Consul-origin service (ready instances only)."""
    ns, name = service.key.namespace, service.key.name
    ready = tuple(i for i in service.instances if i.ready)
    ports = _ports(service.instances)
    annotations = {**SERVICE_ANNOTATIONS_BASE, SOURCE_ANNOTATION: consul_name}
    svc_body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(SERVICE_LABELS),
                     "annotations": annotations},
        "spec": {"clusterIP": "None", "type": "ClusterIP", "publishNotReadyAddresses": False,
                 "ports": [{"name": p.name, "port": p.port, "targetPort": p.port, "protocol": p.protocol}
                           for p in ports]},
    }
    desired = [Desired("services", ns, name, service_fields(
        SERVICE_LABELS, frozen_map(annotations), ports, (), True))]
    bodies: dict[tuple[str, str, str], dict[str, Any]] = {desired[0].key: svc_body}
    groups: dict[tuple[str, tuple[Port, ...]], list[str]] = defaultdict(list)
    for instance in ready:
        # Each instance's own ports, named as on the Service.
        own = tuple(p for p in ports if any(q.port == p.port for q in instance.ports)) or ports
        groups[(_family(instance.address), own)].append(instance.address)
    for (family, own), addresses in sorted(groups.items()):
        slice_labels = frozen_map({SERVICE_NAME_LABEL: name, SLICE_MANAGED_BY: SLICE_MANAGER,
                                   MANAGED_BY_LABEL: MANAGED_BY_VALUE})
        sname = slice_name(name, family, own)
        body = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": sname, "namespace": ns, "labels": dict(slice_labels)},
            "addressType": family,
            "endpoints": [{"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False}}
                          for a in sorted(set(addresses))],
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in own],
        }
        d = Desired("endpointslices", ns, sname,
                    slice_fields(name, family, own, tuple(sorted(set(addresses))), slice_labels))
        desired.append(d)
        bodies[d.key] = body
    return Materialised(tuple(desired), bodies)


def actual_service(service: Service) -> Desired:
    return Desired("services", service.key.namespace, service.key.name, service_fields(
        tuple(k for k in service.labels if k[0] == MANAGED_BY_LABEL), service.annotations,
        service.ports, service.selector, service.headless))


def actual_slice(sl: Slice) -> Desired:
    return Desired("endpointslices", sl.namespace, sl.name, slice_fields(
        sl.service, sl.address_type, sl.ports, tuple(e.address for e in sl.endpoints if e.ready),
        sl.labels))


def is_ours(labels: Any) -> bool:
    return (MANAGED_BY_LABEL, MANAGED_BY_VALUE) in tuple(labels)


ObjectKey = tuple[str, str, str]  # (plural, namespace, name)


@dataclass(frozen=True)
class Held:
    """What Kubernetes holds, as far as planning cares: our objects as comparable values,
    and the keys of everyone else's."""

    ours: Mapping[ObjectKey, Desired]
    foreign: frozenset[ObjectKey]

    @property
    def local_services(self) -> set[ServiceKey]:
        """The Services someone else owns."""
        return {ServiceKey(ns, name) for plural, ns, name in self.foreign if plural == "services"}


def held(services: Mapping[tuple[str, str], Service], slices: Mapping[tuple[str, str], Slice]) -> Held:
    ours: dict[ObjectKey, Desired] = {}
    foreign: set[ObjectKey] = set()
    for svc in services.values():
        if is_ours(svc.labels):
            d = actual_service(svc)
            ours[d.key] = d
        else:
            foreign.add(("services", svc.key.namespace, svc.key.name))
    for sl in slices.values():
        if is_ours(sl.labels):
            d = actual_slice(sl)
            ours[d.key] = d
        else:
            foreign.add(("endpointslices", sl.namespace, sl.name))
    return Held(ours, frozenset(foreign))


@dataclass(frozen=True)
class KubePlan:
    create: tuple[Desired, ...] = ()
    replace: tuple[Desired, ...] = ()
    delete: tuple[Desired, ...] = ()
    clashes: tuple[str, ...] = ()
    # The body to send for each create and replace.
    bodies: Mapping[ObjectKey, dict[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def empty(self) -> bool:
        return not (self.create or self.replace or self.delete)

    def writes(self) -> Iterator[tuple[str, Desired]]:
        """(verb, object) for every write, in the order they are made."""
        for verb, items in (("create", self.create), ("replace", self.replace),
                            ("delete", self.delete)):
            for d in items:
                yield verb, d

    def counts(self) -> dict[str, int]:
        return {"create": len(self.create), "update": len(self.replace), "delete": len(self.delete)}

    def describe(self) -> Iterator[str]:
        for verb, d in self.writes():
            yield f"{verb} {d.plural} {d.namespace}/{d.name}"


def plan(wanted: Mapping[ObjectKey, Desired], ours: Mapping[ObjectKey, Desired],
         foreign: Set[ObjectKey], bodies: Mapping[ObjectKey, dict[str, Any]] | None = None
         ) -> KubePlan:
    """Creates, replaces and deletes that make our objects match; a wanted object whose name
    is taken by one we did not create is reported as a clash and left alone."""
    create, replace, clashes = [], [], []
    for key, want in sorted(wanted.items()):
        if key in foreign:
            clashes.append(f"{key[0]} {key[1]}/{key[2]} exists and is not managed by the bridge")
        elif key not in ours:
            create.append(want)
        elif ours[key] != want:
            replace.append(want)
    delete = [have for key, have in sorted(ours.items()) if key not in wanted]
    return KubePlan(tuple(create), tuple(replace), tuple(delete), tuple(clashes), bodies or {})


def plan_for(remote: Mapping[ServiceKey, Service], now: Held) -> KubePlan:
    """The writes that materialise the Consul services `remote`, given what Kubernetes
    holds; a Service of someone else's under a wanted name is a clash, left alone."""
    local = now.local_services
    wanted, bodies = wanted_objects(remote, {}, local)
    blocked = tuple(f"services {key}: a Service not managed by the bridge has this name; "
                    "its Consul instances are answered by DNS but not materialised"
                    for key in sorted(set(remote) & local))
    found = plan(wanted, now.ours, now.foreign, bodies)
    return dataclasses.replace(found, clashes=blocked + found.clashes)


def wanted_objects(services: Mapping[ServiceKey, Service], names: Mapping[ServiceKey, str],
                   blocked: set[ServiceKey]) -> tuple[dict[tuple[str, str, str], Desired],
                                                      dict[tuple[str, str, str], dict[str, Any]]]:
    """Every object for every Consul-origin service not `blocked` (a local Service has it)."""
    wanted: dict[tuple[str, str, str], Desired] = {}
    bodies: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key in sorted(services):
        if key in blocked:
            continue
        result = materialise(services[key], names.get(key, key.name))
        for d in result.desired:
            wanted[d.key] = d
        bodies.update(result.bodies)
    return wanted, bodies
