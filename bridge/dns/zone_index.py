"""The catalog indexed for the cluster zone (`ZoneIndex`), copied on write (pure: no I/O).

`index_service` turns one catalog `Service` into an `IndexedService`: its shape (behind a
cluster IP, headless, or an ExternalName alias), its cluster IPs and published endpoints as
record data, and each endpoint's DNS label. A `ZoneIndex` holds them with what the answers
need besides (namespaces, reverse names, pod addresses) in `CowMap`s, so that `derive`
makes the index of a next catalog by copying only what the changed services touch, and
says which names that changes (`Change`). `answer.py` answers from it. Numbers in comments
are rules of the conformance checklist (see `answer.py`).
"""

from __future__ import annotations

import copy
import enum
import ipaddress
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from bridge.catalog.model import Catalog, Instance, OriginKind, Port, Service, ServiceKey, ServiceType
from bridge.dns.addresses import Address, address_data, ip_address
from bridge.dns.cow_map import CowMap
from bridge.dns.query import IN_ADDR_ARPA, IPAddress, Name, lower, parse, reverse_name
from bridge.dns.records import A

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class ServiceShape(enum.Enum):
    CLUSTER = "cluster"
    HEADLESS = "headless"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the endpoint's DNS label: its hostname, else its dashed address
    address: Address
    ports: tuple[Port, ...]


@dataclass(slots=True)
class IndexedService:
    name: str  # lower case, as `namespace`
    namespace: str
    shape: ServiceShape
    ports: tuple[Port, ...] = ()
    cluster_ips: tuple[Address, ...] = ()
    external: Name = ()  # an ExternalName's target; () when it is not a usable name
    endpoints: tuple[Endpoint, ...] = ()
    by_endpoint: dict[str, list[Endpoint]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        # A headless service without a published endpoint has no records at all (14).
        if self.shape is ServiceShape.HEADLESS:
            return bool(self.endpoints)
        if self.shape is ServiceShape.EXTERNAL:
            return bool(self.external)
        return True

    def labels(self) -> Name:
        return (self.name, self.namespace, "svc")

    def srv_ports(self) -> Iterator[Port]:
        """The ports SRV records name: the service's behind a cluster IP, else the
        endpoints'."""
        if self.shape is ServiceShape.CLUSTER:
            yield from self.ports
        else:
            for endpoint in self.endpoints:
                yield from endpoint.ports

    def port_pairs(self) -> set[tuple[str, str]]:
        """(name, protocol) of the named SRV ports, lower case: the `_<port>._<proto>`
        names."""
        return {(lower(p.name), lower(p.protocol)) for p in self.srv_ports() if p.name}

    def addresses(self) -> tuple[str, ...]:
        """The addresses whose reverse names may name this service: its cluster IPs and
        endpoints."""
        return tuple(dict.fromkeys([*(ip.address for ip in self.cluster_ips),
                                    *(e.address.address for e in self.endpoints)]))


def index_service(service: Service) -> IndexedService:
    name, namespace = lower(service.key.name), lower(service.key.namespace)
    if service.type is ServiceType.EXTERNAL_NAME:
        target = service.external_name.rstrip(".")
        # CoreDNS emits the CNAME only when the target is a name, not an IP literal.
        valid = bool(target) and ip_address(target) is None and ".." not in target
        return IndexedService(name, namespace, ServiceShape.EXTERNAL,
                              external=tuple(target.split(".")) if valid else ())
    ips = tuple(dict.fromkeys(ip for ip in map(address_data, service.cluster_ips) if ip))
    # No usable cluster IP means nothing proxies the port: answer with the endpoints.
    shape = ServiceShape.HEADLESS if service.headless or not ips else ServiceShape.CLUSTER
    endpoints: list[Endpoint] = []
    publish_not_ready = service.publish_not_ready
    for instance in service.instances:
        if not (instance.ready or publish_not_ready):  # 23, 24
            continue
        address = address_data(instance.address)
        if address is None:
            continue
        endpoints.append(Endpoint(endpoint_label(instance, address), address, instance.ports))
    by_endpoint: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_endpoint.setdefault(endpoint.name, []).append(endpoint)
    return IndexedService(name, namespace, shape, ports=service.ports,
                          cluster_ips=ips if shape is ServiceShape.CLUSTER else (),
                          endpoints=tuple(endpoints), by_endpoint=by_endpoint)


def endpoint_label(instance: Instance, address: Address) -> str:
    """The endpoint's label: its hostname, else the dashed address (17, 18).

    IPv6 follows CoreDNS: `:` becomes `-`, and a trailing `-` gets a `0` (`5678-abcd--1`).
    """
    if instance.hostname and _is_label(instance.hostname):
        return lower(instance.hostname)
    if type(address) is A:
        return address.address.replace(".", "-")
    dashed = address.address.replace(":", "-").replace(".", "-")
    return dashed + "0" if dashed.endswith("-") else dashed


def _is_label(value: str) -> bool:
    """A DNS-1123 label: what Kubernetes allows as a hostname, and never `_`-prefixed."""
    return _DNS_LABEL.fullmatch(lower(value)) is not None


def is_lower_case(key: ServiceKey) -> bool:
    return lower(key.namespace) == key.namespace and lower(key.name) == key.name


def pod_address(label: str) -> IPAddress | None:
    """The address a pod label spells (CoreDNS findPods): `10-1-2-3`, or IPv6 `fd00--1`."""
    if label.count("-") == 3 and "--" not in label:
        return ip_address(label.replace("-", "."))
    return ip_address(label.replace("-", ":"))


def reverse_of(address: str) -> Name:
    """The reverse name of an address in `address_data`'s canonical text form."""
    if ":" not in address:
        return (*reversed(address.split(".")), *IN_ADDR_ARPA)
    return reverse_name(ipaddress.IPv6Address(address))


@dataclass(frozen=True, slots=True)
class Change:
    """What `ZoneIndex.derive` changed: the names whose answers may differ, by unit.

    `services`: (namespace, name) of services whose names must be encoded again (their
    old names, the old answerer lists, are gone; their new names are
    `Answerer.service_listed`); `namespaces`: namespaces that appeared or disappeared;
    `addresses`: addresses whose reverse name changed (PTR targets, or existence).
    """

    services: tuple[tuple[str, str], ...]
    namespaces: tuple[str, ...]
    addresses: tuple[str, ...]


class ZoneIndex:
    """One catalog indexed for the cluster zone `zone` (lower-case labels), so that each
    question is a few look-ups. Never changes once built; `derive` makes the next one.

    `count_pods`: keep the addresses of each namespace's Kubernetes instances (`pods`, for
    `pods="verified"`). `ignore_empty_service`: a ClusterIP service without a ready endpoint
    is left out (CoreDNS `ignore empty_service`, 7).
    """

    def __init__(self, catalog: Catalog, zone: Name, *, count_pods: bool = False,
                 ignore_empty_service: bool = False) -> None:
        self.zone = zone
        self.ready = catalog.ready
        self.count_pods = count_pods
        self.ignore_empty_service = ignore_empty_service
        # `derive` relies on keys that lower-casing leaves alone (two keys differing in case
        # only would be one service here: the last in key order).
        self.lower_case = True
        # Namespace -> how many catalog services it holds (those `ignore_empty_service`
        # hides included): a namespace exists while the count is above zero (35).
        namespaces: dict[str, int] = {}
        services: dict[tuple[str, str], IndexedService] = {}
        # ExternalName services whose target is in the zone: their answers follow the
        # target's, so `derive` names them as changed whenever anything changes.
        aliases: dict[tuple[str, str], None] = {}
        for key in sorted(catalog.services):
            namespace = lower(key.namespace)
            namespaces[namespace] = namespaces.get(namespace, 0) + 1
            if self.lower_case and not is_lower_case(key):
                self.lower_case = False
            svc = self._indexed(catalog.services[key])
            if svc is not None:
                services[(svc.namespace, svc.name)] = svc
                if self._is_alias(svc):
                    aliases[(svc.namespace, svc.name)] = None
        ptr, refs = self._reverse_index(services)
        # (lower-case namespace, name) -> the service; None values: a set.
        self.services: CowMap[tuple[str, str], IndexedService] = CowMap(services.items())
        self.namespaces: CowMap[str, int] = CowMap(namespaces.items())
        self.aliases: CowMap[tuple[str, str], None] = CowMap(aliases.items())
        # Address -> the PTR targets of its reverse name.
        self.ptr: CowMap[str, tuple[Name, ...]] = CowMap(ptr.items())
        # Which services carry each address, in key order: what `derive` reads to find an
        # address's PTR targets again.
        self.refs: CowMap[str, tuple[tuple[str, str], ...]] = CowMap(refs.items())
        # Namespace -> address -> how many Kubernetes instances of its services have it.
        self.pods: CowMap[str, CowMap[str, int]] = CowMap()
        if count_pods:
            for key, service in catalog.services.items():
                self._count_pods(self.pods, lower(key.namespace), service, 1)

    def pod_namespace(self, address: str) -> str | None:
        """The namespace of the pod at `address` (normalised text, as in `pods`), when the
        index counts pods and exactly one namespace has a Service endpoint there; else
        None (for autopath: the client's namespace)."""
        found = {namespace for namespace, _ in self.refs.get(address, ())
                 if address in self.pods.get(namespace, ())}
        return found.pop() if len(found) == 1 else None

    def _indexed(self, service: Service) -> IndexedService | None:
        svc = index_service(service)
        if self.ignore_empty_service and svc.shape is ServiceShape.CLUSTER and \
                not svc.endpoints:
            return None  # 7: as if it did not exist
        return svc

    def _is_alias(self, svc: IndexedService) -> bool:
        return svc.shape is ServiceShape.EXTERNAL and bool(svc.external) and \
            parse(svc.external, self.zone).in_zone

    @staticmethod
    def _count_pods(pods: CowMap[str, CowMap[str, int]], namespace: str, service: Service,
                    step: int) -> None:
        counts = pods.get(namespace)
        if counts is None:
            counts = pods[namespace] = CowMap()
        for instance in service.instances:
            if instance.origin.kind is not OriginKind.KUBERNETES:
                continue
            address = address_data(instance.address)
            if address is not None:
                left = counts.get(address.address, 0) + step
                if left > 0:
                    counts[address.address] = left
                else:
                    counts.pop(address.address, None)
        if not counts:
            pods.pop(namespace)

    def _reverse_index(self, services: dict[tuple[str, str], IndexedService]
                       ) -> tuple[dict[str, tuple[Name, ...]], dict[str, tuple[Any, ...]]]:
        """(PTR targets by address, services by address), from services in key order."""
        # A cluster IP names its service (the first one, in key order, as CoreDNS);
        # otherwise an address names every endpoint carrying it, de-duplicated (30, 31).
        by_cluster_ip: dict[str, Name] = {}
        by_endpoint: dict[str, dict[Name, None]] = {}
        refs: dict[str, list[tuple[str, str]]] = {}
        for key, svc in services.items():
            for address in svc.addresses():
                refs.setdefault(address, []).append(key)
            if not svc.exists:
                continue
            for ip in svc.cluster_ips:
                by_cluster_ip.setdefault(ip.address, svc.labels() + self.zone)
            for endpoint in svc.endpoints:
                target = (endpoint.name, *svc.labels(), *self.zone)
                by_endpoint.setdefault(endpoint.address.address, {})[target] = None
        index = {ip: tuple(targets) for ip, targets in by_endpoint.items()}
        index.update((ip, (target,)) for ip, target in by_cluster_ip.items())
        return index, {address: tuple(keys) for address, keys in refs.items()}

    def _targets(self, address: str) -> tuple[Name, ...]:
        """The PTR targets of one address, as `_reverse_index` finds them."""
        found: dict[Name, None] = {}
        for key in self.refs.get(address, ()):
            svc = self.services[key]
            if not svc.exists:
                continue
            for ip in svc.cluster_ips:
                if ip.address == address:
                    return (svc.labels() + self.zone,)  # a cluster IP wins (30)
            for endpoint in svc.endpoints:
                if endpoint.address.address == address:
                    found[(endpoint.name, *svc.labels(), *self.zone)] = None
        return tuple(found)

    def derive(self, catalog: Catalog, previous: Catalog,
               changed: Collection[ServiceKey]) -> tuple[ZoneIndex, Change] | None:
        """The index of `catalog`, from this one (built for `previous`) and the keys of the
        services that differ between them (added, removed or changed). This index does not
        change. None when it cannot be done that way (keys that are not lower case, or
        readiness changed): build a new one then.
        """
        if not self.lower_case or catalog.ready != self.ready or \
                not all(is_lower_case(key) for key in changed):
            return None
        new = copy.copy(self)  # shares everything; what changes is copied below
        services = new.services = self.services.derive()
        namespaces = new.namespaces = self.namespaces.derive()
        refs = new.refs = self.refs.derive()
        ptr = new.ptr = self.ptr.derive()
        aliases = new.aliases = self.aliases.derive()
        pods = new.pods = self.pods.derive() if self.count_pods else self.pods
        touched_services: dict[tuple[str, str], None] = {}
        touched_namespaces: dict[str, None] = {}
        addresses: dict[str, None] = {}
        copied: set[str] = set()
        for key in changed:
            before, after = previous.services.get(key), catalog.services.get(key)
            namespace = key.namespace
            if (before is None) != (after is None):
                was = namespaces.get(namespace, 0)
                count = was + (1 if after is not None else -1)
                if count > 0:
                    namespaces[namespace] = count
                else:
                    namespaces.pop(namespace, None)
                if (was > 0) != (count > 0):
                    touched_namespaces[namespace] = None
            if self.count_pods:
                if namespace not in copied:  # copy on write: the old index keeps its own
                    copied.add(namespace)
                    if namespace in pods:
                        pods[namespace] = pods[namespace].derive()
                for service, step in ((before, -1), (after, 1)):
                    if service is not None:
                        self._count_pods(pods, namespace, service, step)
            lk = (namespace, key.name)
            old = services.get(lk)
            svc = self._indexed(after) if after is not None else None
            if svc is None:
                services.pop(lk, None)
                aliases.pop(lk, None)
            else:
                services[lk] = svc
                if self._is_alias(svc):
                    aliases[lk] = None
                else:
                    aliases.pop(lk, None)
            if old == svc:
                continue  # e.g. a label changed: nothing DNS says
            touched_services[lk] = None
            old_addresses = old.addresses() if old is not None else ()
            new_addresses = svc.addresses() if svc is not None else ()
            for address in old_addresses:
                if address not in new_addresses:
                    left = tuple(k for k in refs.get(address, ()) if k != lk)
                    if left:
                        refs[address] = left
                    else:
                        refs.pop(address, None)
            for address in new_addresses:
                if address not in old_addresses:
                    refs[address] = tuple(sorted((*refs.get(address, ()), lk)))
            addresses.update(dict.fromkeys(old_addresses))
            addresses.update(dict.fromkeys(new_addresses))
        changed_addresses = []
        for address in addresses:
            targets = new._targets(address)
            if targets:
                ptr[address] = targets
            else:
                ptr.pop(address, None)
            if targets != self.ptr.get(address, ()):
                changed_addresses.append(address)
        if touched_services or touched_namespaces:
            # ExternalName answers follow their targets' (26, 27): encode them again.
            touched_services.update(dict.fromkeys(aliases))
        return new, Change(tuple(touched_services), tuple(touched_namespaces),
                           tuple(changed_addresses))
