"""Consul services as Kubernetes objects: selector-less headless Services plus EndpointSlices.

PURE. consul-k8s writes ExternalName aliases that only Consul DNS can resolve; a headless
Service with EndpointSlices is resolved by any cluster DNS (CoreDNS, kube-dns) straight to
the instance IPs, with named ports for SRV. Every object carries our `managed-by` label and
`consul.hashicorp.com/service-sync: "false"`, so neither we nor consul-k8s push it back.

Only what the API server accepts is derived (see kubernetes pkg/apis/core/validation and
pkg/apis/discovery/validation): the Service is named with a DNS-1035 label
(`naming.kube_service_names`: `1password` becomes `consul-1password`), in a namespace whose
name is a DNS-1123 label; port names are DNS-1123 labels, one port per name and per number
and protocol; slice addresses are those `addresses.endpoint_address` allows, at most
`MAX_SLICE_ENDPOINTS` to a slice. Whatever is left out is said, one line per thing, for the
reconciler to log once while it lasts.

Objects are compared as `Desired` values: only the fields we set, so the API server's
defaults never look like drift, while a manual edit of any field we own does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from bridge.catalog.model import Instance, Port, Service, ServiceKey, frozen_map
from bridge.catalog.naming import dns_labels, kube_service_names
from bridge.kube.addresses import endpoint_address
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


PROTOCOLS = ("SCTP", "TCP", "UDP")
# As the EndpointSlice controller's default; the API allows 1000.
MAX_SLICE_ENDPOINTS = 100
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _ports(instances: tuple[Instance, ...], where: str, skipped: list[str]) -> tuple[Port, ...]:
    """The distinct ports of the instances, as a Service may list them: names made DNS-1123
    labels as DNS names are (`naming.dns_labels`); when there are several, an unnamed one
    named `port-<number>`; each name and each (number, protocol) once, the first in sort
    order kept. Each port left out adds a line to `skipped`."""
    labels, _ = dns_labels({p.name for i in instances for p in i.ports if p.name})
    seen: dict[tuple[str, int, str], Port] = {}
    for instance in instances:
        for port in instance.ports:
            if not 1 <= port.port <= 65535 or port.protocol not in PROTOCOLS:
                skipped.append(f"{where}: port {port.port}/{port.protocol} left out: not a port number "
                               "and protocol Kubernetes accepts")
                continue
            named = Port(labels.get(port.name, ""), port.port, port.protocol)
            seen.setdefault((named.name, named.port, named.protocol), named)
    ports = sorted(seen.values())
    if len(ports) > 1:
        ports = [p if p.name else Port(f"port-{p.port}", p.port, p.protocol) for p in ports]
    by_name: dict[str, Port] = {}
    by_number: dict[tuple[int, str], Port] = {}
    for port in ports:
        other = by_name.get(port.name) or by_number.get((port.port, port.protocol))
        if other is not None:
            skipped.append(f"{where}: port {port.name or '(unnamed)'} {port.port}/{port.protocol} left out: "
                           f"the Service has {other.name or '(unnamed)'} {other.port}/{other.protocol}")
            continue
        by_name[port.name] = by_number[(port.port, port.protocol)] = port
    return tuple(by_name.values())


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


def slice_name(service: str, family: str, ports: tuple[Port, ...], chunk: int = 0) -> str:
    """`<service>-<family>-<digest of the ports>`, then `-<n>` for the n-th further slice
    of the same family and ports (a DNS-1123 subdomain, as EndpointSlice names must be)."""
    digest = hashlib.sha1(repr(sorted(ports)).encode()).hexdigest()[:6]
    name = f"{service[:240]}-{family.lower()}-{digest}"
    return f"{name}-{chunk}" if chunk else name


@dataclass(frozen=True)
class Materialised:
    """What one Consul service becomes in Kubernetes: a Service and its slices, as bodies and
    as comparable `Desired` values, and what of it was left out, one line each."""

    desired: tuple[Desired, ...]
    bodies: Mapping[tuple[str, str, str], dict[str, Any]]
    skipped: tuple[str, ...] = ()


def materialise(service: Service, name: str, consul_name: str | None = None) -> Materialised:
    """The Kubernetes objects for one Consul-origin service (ready instances only), the
    Service named `name` (see `naming.kube_service_names`); `consul_name` goes into the
    source annotation (the DNS label when not given)."""
    ns = service.key.namespace
    where = f"services {ns}/{name}"
    skipped: list[str] = []
    ready = tuple(i for i in service.instances if i.ready)
    ports = _ports(service.instances, where, skipped)
    annotations = {**SERVICE_ANNOTATIONS_BASE, SOURCE_ANNOTATION: consul_name or service.key.name}
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
    groups: dict[tuple[str, tuple[Port, ...]], set[str]] = defaultdict(set)
    for instance in ready:
        found = endpoint_address(instance.address)
        if isinstance(found, str):
            skipped.append(f"{where}: address {instance.address} left out of its EndpointSlices: {found}")
            continue
        family, address = found
        # Each instance's own ports, named as on the Service.
        own = tuple(p for p in ports if any(q.port == p.port for q in instance.ports)) or ports
        groups[(family, own)].add(address)
    slice_labels = frozen_map({SERVICE_NAME_LABEL: name, SLICE_MANAGED_BY: SLICE_MANAGER,
                               MANAGED_BY_LABEL: MANAGED_BY_VALUE})
    for (family, own), addresses in sorted(groups.items()):
        ordered = sorted(addresses)
        for chunk, start in enumerate(range(0, len(ordered), MAX_SLICE_ENDPOINTS)):
            part = tuple(ordered[start:start + MAX_SLICE_ENDPOINTS])
            sname = slice_name(name, family, own, chunk)
            bodies[("endpointslices", ns, sname)] = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": sname, "namespace": ns, "labels": dict(slice_labels)},
                "addressType": family,
                "endpoints": [{"addresses": [a], "conditions": {"ready": True, "serving": True,
                                                                "terminating": False}} for a in part],
                "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in own],
            }
            desired.append(Desired("endpointslices", ns, sname,
                                   slice_fields(name, family, own, part, slice_labels)))
    return Materialised(tuple(desired), bodies, tuple(skipped))


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


def object_item(key: ObjectKey) -> str:
    """How logs and `bridge.rejections` name one object: `services consul/billing`."""
    return f"{key[0]} {key[1]}/{key[2]}"


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
    # The body of every wanted object: what each create and replace sends.
    bodies: Mapping[ObjectKey, dict[str, Any]] = field(default_factory=dict, compare=False)
    skipped: tuple[str, ...] = ()  # what of the Consul services is not written, and why

    def without(self, keys: Set[ObjectKey]) -> KubePlan:
        """This plan with no write to the objects `keys`."""
        return dataclasses.replace(
            self, create=tuple(d for d in self.create if d.key not in keys),
            replace=tuple(d for d in self.replace if d.key not in keys),
            delete=tuple(d for d in self.delete if d.key not in keys))

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
            yield f"{verb} {object_item(d.key)}"


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
    wanted, bodies, skipped = wanted_objects(remote, now.local_services)
    found = plan(wanted, now.ours, now.foreign, bodies)
    return dataclasses.replace(found, skipped=skipped)


def object_names(services: Iterable[ServiceKey]) -> dict[ServiceKey, str]:
    """The Service object name of each Consul-origin service, namespace by namespace."""
    by_namespace: dict[str, list[str]] = defaultdict(list)
    for key in services:
        by_namespace[key.namespace].append(key.name)
    names: dict[ServiceKey, str] = {}
    for ns, labels in by_namespace.items():
        for label, name in kube_service_names(labels)[0].items():
            names[ServiceKey(ns, label)] = name
    return names


def wanted_objects(services: Mapping[ServiceKey, Service], local: Set[ServiceKey]
                   ) -> tuple[dict[ObjectKey, Desired], dict[ObjectKey, dict[str, Any]], tuple[str, ...]]:
    """Every object for every Consul-origin service whose Service name no Service of
    someone else's (`local`) has, and the lines saying what is left out."""
    wanted: dict[ObjectKey, Desired] = {}
    bodies: dict[ObjectKey, dict[str, Any]] = {}
    skipped: list[str] = []
    valid = {key for key in services if _NAMESPACE.fullmatch(key.namespace) and len(key.namespace) <= 63}
    skipped += [f"services {key}: not materialised: {key.namespace!r} is not a Kubernetes namespace name"
                for key in sorted(set(services) - valid)]
    names = object_names(valid)
    for key in sorted(valid):
        name = names[key]
        if ServiceKey(key.namespace, name) in local:
            skipped.append(f"services {key.namespace}/{name}: a Service not managed by the bridge has this "
                           f"name; the Consul instances of {key} are answered by DNS but not materialised")
            continue
        result = materialise(services[key], name)
        for d in result.desired:
            wanted[d.key] = d
        bodies.update(result.bodies)
        skipped += result.skipped
    return wanted, bodies, tuple(skipped)
