"""What the cluster DNS says: (catalog, question name, qtype) -> response (pure: no I/O).

This module owns the *meaning* of every answer: which names exist, which records they
carry, and when the answer is NXDOMAIN, NODATA, SERVFAIL or REFUSED. It knows nothing of
wire formats; `table.py` turns its responses into bytes and `server.py` moves the bytes.

An `Answerer` indexes one immutable `Catalog` once (by service, endpoint name and address)
so that each question is a few dictionary look-ups. It never changes once built, so any
number of threads may use it. `derive` makes the answerer of a next catalog from the
services that changed (copy on write: the indexes are copied, unchanged services shared),
and says which names and addresses the change touches, for `table.py`'s incremental
updates; `listed` gives every name with its answers without parsing names, for its builds.

The SOA serial is the catalog's generation unless the caller fixes it (`serial`): `table.py`
keeps it across incremental updates (see there).

The rules follow the conformance checklist in `reference/kubernetes-dns.md` §5; the
numbers in comments refer to it. Deliberate departures from CoreDNS:

- `_<proto>.<svc>.<ns>.svc.<zone>` and `dns.<zone>` are empty non-terminals (NODATA), not
  NXDOMAIN: they have names below them, and an NXDOMAIN there would let a resolver that
  minimises query names (RFC 7816) or cuts below NXDOMAIN (RFC 8020) deny the SRV names
  and `ns.dns.<zone>`.
- `_<port>._<proto>` labels name SRV records only; CoreDNS also answers A on them.
- An ExternalName whose target does not exist in the zone ends its chain with NXDOMAIN
  (RFC 6604, the rcode of the last name); CoreDNS keeps NOERROR.
- Reverse names of addresses the catalog does not know are `NOT_OURS` (like CoreDNS's
  `fallthrough in-addr.arpa ip6.arpa` in both default Corefiles): the server forwards or
  refuses them.
- Pod records (`<a-b-c-d>.<ns>.pod.<zone>`): `pods="disabled"` (the default) answers
  NXDOMAIN for every name below `pod.<zone>` (CoreDNS `pods disabled`, 49); `pods="insecure"`
  answers the address written in the name for any namespace that exists (CoreDNS
  `pods insecure`, kube-dns), dashed IPv6 too, and NODATA for `<ns>.pod.<zone>` (50);
  `pods="verified"` answers only addresses of pods the catalog knows in that namespace
  (51). The catalog knows the pods behind Service endpoints, ready or not, not every pod
  as CoreDNS's pod watch does. Those names cannot be listed in advance:
  `Answerer.names` says which are computed.
- With `ignore_empty_service` a ClusterIP service with no ready endpoint does not exist
  (CoreDNS `ignore empty_service`, 7), PTR of its cluster IP included.

A namespace exists when the catalog holds a service in it (the catalog holds only the
namespaces the settings expose, 35): a namespace with no service at all is NXDOMAIN, as a
namespace that does not exist is.
"""

from __future__ import annotations

import copy
import enum
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from bridge.catalog.model import (
    Catalog,
    Instance,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
)
from bridge.dns.query import (
    IN_ADDR_ARPA,
    IPAddress,
    Kind,
    Name,
    Query,
    lower,
    parse,
    reverse_name,
    zone_labels,
)

if TYPE_CHECKING:
    from bridge.config import DnsSettings

SCHEMA_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400
MAX_SOA_TTL = 300
MAX_CNAME_CHAIN = 10
PODS_DISABLED, PODS_INSECURE, PODS_VERIFIED = "disabled", "insecure", "verified"


class QType(enum.IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    SVCB = 64
    HTTPS = 65
    IXFR = 251
    AXFR = 252
    ANY = 255


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended rcode: the low 4 bits go in the header, the rest in the OPT


K = TypeVar("K")
V = TypeVar("V")


def shards_for(size: int) -> int:
    """Shards for a CowMap of `size` keys: some 16 keys a shard (a write copies one), as a
    power of two from 64 to 4,096."""
    return min(4096, max(64, 1 << (size // 16).bit_length()))


class CowMap(Generic[K, V]):
    """A mapping in shards by key hash, for copy on write between versions.

    `derive()` makes a new version sharing every shard with this one; the new version's
    first write to a shard copies that shard only. An update of a few keys in a map of
    100,000 then costs a few shards, not the map. A version that was derived from must
    not be written any more. Iteration goes shard by shard: not in insertion order.
    """

    __slots__ = ("_mask", "_owned", "_shards")

    def __init__(self, items: Iterable[tuple[K, V]] = (), *, shards: int = 64) -> None:
        if shards < 1 or shards & (shards - 1):
            raise ValueError("shards must be a power of two")
        self._shards: list[dict[K, V]] = [{} for _ in range(shards)]
        self._mask = shards - 1  # a key's shard: hash(key) & _mask
        self._owned: set[int] | None = None  # shards this version may write; None: all
        for key, value in items:
            self[key] = value

    def derive(self) -> CowMap[K, V]:
        new: CowMap[K, V] = CowMap.__new__(CowMap)
        new._shards = list(self._shards)
        new._mask = self._mask
        new._owned = set()
        return new

    def _writable(self, key: K) -> dict[K, V]:
        index = hash(key) & self._mask
        owned = self._owned
        if owned is not None and index not in owned:
            owned.add(index)
            self._shards[index] = dict(self._shards[index])
        return self._shards[index]

    def get(self, key: K, default: Any = None) -> Any:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & self._mask][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __setitem__(self, key: K, value: V) -> None:
        self._writable(key)[key] = value

    def pop(self, key: K, default: Any = None) -> Any:
        if key not in self:
            return default
        return self._writable(key).pop(key)

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def items(self) -> Iterator[tuple[K, V]]:
        for shard in self._shards:
            yield from shard.items()

    def values(self) -> Iterator[V]:
        for shard in self._shards:
            yield from shard.values()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CowMap):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CowMap({dict(self.items())!r})"


# --- record data -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class A:
    address: str
    rtype = QType.A


@dataclass(frozen=True, slots=True)
class AAAA:
    address: str
    rtype = QType.AAAA


@dataclass(frozen=True, slots=True)
class CNAME:
    target: Name
    rtype = QType.CNAME


@dataclass(frozen=True, slots=True)
class PTR:
    target: Name
    rtype = QType.PTR


@dataclass(frozen=True, slots=True)
class NS:
    target: Name
    rtype = QType.NS


@dataclass(frozen=True, slots=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: Name
    rtype = QType.SRV


@dataclass(frozen=True, slots=True)
class SOA:
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    rtype = QType.SOA


@dataclass(frozen=True, slots=True)
class TXT:
    strings: tuple[str, ...]
    rtype = QType.TXT


RData = A | AAAA | CNAME | PTR | NS | SRV | SOA | TXT


# Record, Response, Answers (and query.Query) are named tuples, not frozen dataclasses: a
# table build makes some 300,000 of them, and a tuple is made three to five times faster.
# Record data stay dataclasses, so that records of different types never compare equal.


class Record(NamedTuple):
    name: Name
    ttl: int
    data: RData

    @property
    def rtype(self) -> QType:
        return self.data.rtype


class Response(NamedTuple):
    """One answer. `chase` is an out-of-zone CNAME target left for an upstream resolver.

    `shuffle` asks the encoder to serve the answer records in a random order per query and,
    with `answer_limit` > 0, only that many of them picked at random (Consul, 61 and 66).
    """

    rcode: Rcode
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    chase: Name | None = None
    shuffle: bool = False
    answer_limit: int = 0


class NotOurs:
    """The question is outside every zone we answer: forward it upstream or refuse it."""

    _instance: NotOurs | None = None

    def __new__(cls) -> NotOurs:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_OURS"


NOT_OURS = NotOurs()
REFUSED = Response(Rcode.REFUSED, authoritative=False)
_NO_TRANSFER = {QType.AXFR: REFUSED, QType.IXFR: REFUSED}  # 52: no zone transfers


class Answers(NamedTuple):
    """Every response for one name: `by_type`, and `default` for any other qtype."""

    by_type: Mapping[int, Response]
    default: Response

    def get(self, qtype: int) -> Response:
        return self.by_type.get(qtype, self.default)


# --- the catalog, indexed for DNS ----------------------------------------------------------

class _Shape(enum.Enum):
    CLUSTER = "cluster"
    HEADLESS = "headless"
    EXTERNAL = "external"


Address = A | AAAA  # an address as its record data: built once per catalog, shared


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str  # the endpoint's DNS label: its hostname, else its dashed address
    address: Address
    ports: tuple[Port, ...]


@dataclass(slots=True)
class _Svc:
    name: str
    namespace: str
    shape: _Shape
    ports: tuple[Port, ...] = ()
    cluster_ips: tuple[Address, ...] = ()
    external: Name = ()
    endpoints: tuple[_Endpoint, ...] = ()
    by_endpoint: dict[str, list[_Endpoint]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        # A headless service without a published endpoint has no records at all (14).
        if self.shape is _Shape.HEADLESS:
            return bool(self.endpoints)
        if self.shape is _Shape.EXTERNAL:
            return bool(self.external)
        return True

    def labels(self) -> Name:
        return (self.name, self.namespace, "svc")


class _Srv(NamedTuple):
    """One SRV candidate before de-duplication: what CoreDNS counts for the weight (12)."""

    target: Name  # relative to the zone
    address: Address
    port: int


_Found = dict[int, tuple[list[Record], list[Record]]]


def _address(value: str) -> IPAddress | None:
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id:
        return None
    return parsed


def pod_address(label: str) -> IPAddress | None:
    """The address a pod label spells (CoreDNS findPods): `10-1-2-3`, or IPv6 `fd00--1`."""
    if label.count("-") == 3 and "--" not in label:
        return _address(label.replace("-", "."))
    return _address(label.replace("-", ":"))


def _data(address: IPAddress) -> Address:
    return A(str(address)) if address.version == 4 else AAAA(str(address))


# A dotted quad as `ipaddress` writes it (no leading zeros): the usual address, matched ten
# times faster than `ipaddress` parses it.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def address_data(value: str) -> Address | None:
    """`_data(_address(value))`: the record data of an address, None if it is not one."""
    if _IPV4.fullmatch(value):
        return A(value)
    parsed = _address(value)
    return None if parsed is None else _data(parsed)


def reverse_of(address: str) -> Name:
    """The reverse name of an address in `address_data`'s canonical text form."""
    if ":" not in address:
        return (*reversed(address.split(".")), *IN_ADDR_ARPA)
    return reverse_name(ipaddress.IPv6Address(address))


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _is_label(value: str) -> bool:
    """A DNS-1123 label: what Kubernetes allows as a hostname, and never `_`-prefixed."""
    return _DNS_LABEL.fullmatch(lower(value)) is not None


def endpoint_name(instance: Instance, address: IPAddress) -> str:
    """The endpoint's label: its hostname, else the dashed address (17, 18).

    IPv6 follows CoreDNS: `:` becomes `-`, and a trailing `-` gets a `0` (`5678-abcd--1`).
    """
    return _endpoint_label(instance, _data(address))


def _endpoint_label(instance: Instance, address: Address) -> str:
    if instance.hostname and _is_label(instance.hostname):
        return lower(instance.hostname)
    if type(address) is A:
        return address.address.replace(".", "-")
    dashed = address.address.replace(":", "-").replace(".", "-")
    return dashed + "0" if dashed.endswith("-") else dashed


def _index(service: Service) -> _Svc:
    name, namespace = lower(service.key.name), lower(service.key.namespace)
    if service.type is ServiceType.EXTERNAL_NAME:
        target = service.external_name.rstrip(".")
        # CoreDNS emits the CNAME only when the target is a name, not an IP literal.
        valid = bool(target) and _address(target) is None and ".." not in target
        return _Svc(name, namespace, _Shape.EXTERNAL,
                    external=tuple(target.split(".")) if valid else ())
    ips = tuple(dict.fromkeys(ip for ip in map(address_data, service.cluster_ips) if ip))
    # No usable cluster IP means nothing proxies the port: answer with the endpoints.
    shape = _Shape.HEADLESS if service.headless or not ips else _Shape.CLUSTER
    endpoints: list[_Endpoint] = []
    publish_not_ready = service.publish_not_ready
    for instance in service.instances:
        if not (instance.ready or publish_not_ready):  # 23, 24
            continue
        address = address_data(instance.address)
        if address is None:
            continue
        endpoints.append(_Endpoint(_endpoint_label(instance, address), address, instance.ports))
    by_endpoint: dict[str, list[_Endpoint]] = {}
    for endpoint in endpoints:
        by_endpoint.setdefault(endpoint.name, []).append(endpoint)
    return _Svc(name, namespace, shape, ports=service.ports,
                cluster_ips=ips if shape is _Shape.CLUSTER else (),
                endpoints=tuple(endpoints), by_endpoint=by_endpoint)


def _addresses_of(svc: _Svc | None) -> tuple[str, ...]:
    """The addresses whose reverse names may name `svc`: its cluster IPs and endpoints."""
    if svc is None:
        return ()
    return tuple(dict.fromkeys([*(ip.address for ip in svc.cluster_ips),
                                *(e.address.address for e in svc.endpoints)]))


def _lower_case(key: ServiceKey) -> bool:
    return lower(key.namespace) == key.namespace and lower(key.name) == key.name


@dataclass(frozen=True, slots=True)
class Change:
    """What `Answerer.derive` changed: the names whose answers may differ, by unit.

    `services`: (namespace, name) of services whose names must be encoded again (their
    old names, `old` lists, are gone; their new names are `Answerer.service_listed`);
    `namespaces`: namespaces that appeared or disappeared; `addresses`: addresses whose
    reverse name changed (PTR targets, or existence).
    """

    services: tuple[tuple[str, str], ...]
    namespaces: tuple[str, ...]
    addresses: tuple[str, ...]


def _matches(port: Port, name: str, protocol: str) -> bool:
    """Port name and protocol compare case-insensitively; unnamed ports never match (9, 10)."""
    return bool(port.name) and lower(port.name) == name and lower(port.protocol) == protocol


def _family(addresses: Sequence[Address], qtype: int) -> list[Address]:
    """The addresses of the qtype's family, each once, in catalog order (13, 16)."""
    kind = A if qtype == QType.A else AAAA
    return [a for a in {a.address: a for a in addresses}.values() if type(a) is kind]


class Answerer:
    """Answers questions about one catalog. Immutable once built; share it freely."""

    def __init__(self, catalog: Catalog, zone: str, ttl: int, *,
                 ns_addresses: Sequence[str] = (), pods: str = PODS_DISABLED,
                 ignore_empty_service: bool = False, serial: int | None = None) -> None:
        if pods not in (PODS_DISABLED, PODS_INSECURE, PODS_VERIFIED):
            raise ValueError(f"pods must be {PODS_DISABLED}, {PODS_INSECURE} or "
                             f"{PODS_VERIFIED}, not {pods!r}")
        self.zone: Name = zone_labels(zone)
        self.ttl = ttl
        self.ready = catalog.ready
        self.serial = (catalog.generation if serial is None else serial) & 0xFFFFFFFF
        self.pods = pods
        self.ignore_empty_service = ignore_empty_service
        self.ns_addresses: tuple[Address, ...] = tuple(
            _data(ip) for ip in map(_address, ns_addresses) if ip)
        # Namespace -> how many catalog services it holds (those `ignore_empty_service`
        # hides included): a namespace exists while the count is above zero (35).
        # The indexes are `CowMap`s, so that `derive` copies only the shards it changes.
        namespaces: dict[str, int] = {}
        # `derive` relies on keys that lower-casing leaves alone (two keys differing in case
        # only would be one service here: the last in key order).
        self._lower_case = True
        services: dict[tuple[str, str], _Svc] = {}
        # ExternalName services whose target is in the zone: their answers follow the
        # target's, so `derive` names them as changed whenever anything changes.
        aliases: dict[tuple[str, str], None] = {}
        for key in sorted(catalog.services):
            namespace = lower(key.namespace)
            namespaces[namespace] = namespaces.get(namespace, 0) + 1
            if self._lower_case and not _lower_case(key):
                self._lower_case = False
            svc = self._indexed(catalog.services[key])
            if svc is not None:
                services[(svc.namespace, svc.name)] = svc
                if self._is_alias(svc):
                    aliases[(svc.namespace, svc.name)] = None
        self._namespaces: CowMap[str, int] = CowMap(namespaces.items(), shards=shards_for(len(namespaces)))
        self._aliases: CowMap[tuple[str, str], None] = CowMap(aliases.items(), shards=shards_for(len(aliases)))
        ptr, refs = self._reverse_index(services)
        self._services: CowMap[tuple[str, str], _Svc] = CowMap(services.items(), shards=shards_for(len(services)))
        self._ptr: CowMap[str, tuple[Name, ...]] = CowMap(ptr.items(), shards=shards_for(len(ptr)))
        # Which services carry each address, in key order: what `derive` reads to find an
        # address's PTR targets again.
        self._refs: CowMap[str, tuple[tuple[str, str], ...]] = CowMap(refs.items(), shards=shards_for(len(refs)))
        # Namespace -> address -> how many Kubernetes instances of its services have it.
        self._pods: CowMap[str, CowMap[str, int]] = CowMap()
        if pods == PODS_VERIFIED:
            for key, service in catalog.services.items():
                self._count_pods(self._pods, lower(key.namespace), service, 1)
        self._negatives: dict[tuple[Rcode, Name], Response] = {}

    def _indexed(self, service: Service) -> _Svc | None:
        svc = _index(service)
        if self.ignore_empty_service and svc.shape is _Shape.CLUSTER and not svc.endpoints:
            return None  # 7: as if it did not exist
        return svc

    def _is_alias(self, svc: _Svc) -> bool:
        return svc.shape is _Shape.EXTERNAL and bool(svc.external) and \
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

    @property
    def dynamic_pods(self) -> bool:
        """True when `<a-b-c-d>.<ns>.pod.<zone>` names exist without being listed (50, 51)."""
        return self.pods != PODS_DISABLED

    def _reverse_index(self, services: dict[tuple[str, str], _Svc]
                       ) -> tuple[dict[str, tuple[Name, ...]], dict[str, tuple[Any, ...]]]:
        """(PTR targets by address, services by address), from services in key order."""
        # A cluster IP names its service (the first one, in key order, as CoreDNS);
        # otherwise an address names every endpoint carrying it, de-duplicated (30, 31).
        by_cluster_ip: dict[str, Name] = {}
        by_endpoint: dict[str, dict[Name, None]] = {}
        refs: dict[str, list[tuple[str, str]]] = {}
        for key, svc in services.items():
            for address in _addresses_of(svc):
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
        for key in self._refs.get(address, ()):
            svc = self._services[key]
            if not svc.exists:
                continue
            for ip in svc.cluster_ips:
                if ip.address == address:
                    return (svc.labels() + self.zone,)  # a cluster IP wins (30)
            for endpoint in svc.endpoints:
                if endpoint.address.address == address:
                    found[(endpoint.name, *svc.labels(), *self.zone)] = None
        return tuple(found)

    # --- the next catalog ----------------------------------------------------------------

    def derive(self, catalog: Catalog, previous: Catalog,
               changed: Collection[ServiceKey]) -> tuple[Answerer, Change] | None:
        """The answerer of `catalog`, from this one (built for `previous`) and the keys of
        the services that differ between them (added, removed or changed). This answerer
        does not change. None when it cannot be done that way (keys that are not lower
        case, or readiness changed): build a new one then.
        """
        if not self._lower_case or catalog.ready != self.ready or \
                not all(_lower_case(key) for key in changed):
            return None
        new = copy.copy(self)  # shares everything; what changes is copied below
        services = new._services = self._services.derive()
        namespaces = new._namespaces = self._namespaces.derive()
        refs = new._refs = self._refs.derive()
        ptr = new._ptr = self._ptr.derive()
        aliases = new._aliases = self._aliases.derive()
        pods = new._pods = self._pods.derive() if self.pods == PODS_VERIFIED else self._pods
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
            if self.pods == PODS_VERIFIED:
                if namespace not in copied:  # copy on write: the old answerer keeps its own
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
            old_addresses, new_addresses = _addresses_of(old), _addresses_of(svc)
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
            if targets != self._ptr.get(address, ()):
                changed_addresses.append(address)
        if touched_services or touched_namespaces:
            # ExternalName answers follow their targets' (26, 27): encode them again.
            touched_services.update(dict.fromkeys(aliases))
        return new, Change(tuple(touched_services), tuple(touched_namespaces),
                           tuple(changed_addresses))

    # --- the names that exist ------------------------------------------------------------

    def names(self) -> Iterator[Name]:
        """Every name that exists, lower-case: what `table.py` precomputes.

        Contract relied on by the table: for a name inside the zone that is *not* listed
        here, the responses depend only on the qtype and the zone as spelled (the only
        names they carry are built from the zone). Reverse names not listed are `NOT_OURS`.
        The one exception: with `dynamic_pods`, names of the shape `<x>.<ns>.pod.<zone>`
        are not listed (any address may be asked) and must be answered one by one.
        """
        zone = self.zone
        yield zone
        for rest in (("dns-version",), ("dns",), ("ns", "dns"), ("svc",), ("pod",)):
            yield rest + zone
        for namespace in sorted(self._namespaces):
            yield from self.namespace_names(namespace)
        for svc in self._services.values():
            yield from self._service_names(svc)
        for address in self._ptr:
            yield reverse_of(address)

    def namespace_names(self, namespace: str) -> list[Name]:
        """The names a namespace has while it exists (`names` lists them then)."""
        zone = self.zone
        if self.dynamic_pods:
            return [(namespace, "svc", *zone), (namespace, "pod", *zone)]
        return [(namespace, "svc", *zone)]

    def service_names(self, key: tuple[str, str]) -> list[Name]:
        """The names service `key` (lower-case namespace, name) has, as `names` lists them."""
        svc = self._services.get(key)
        return self._service_names(svc) if svc is not None else []

    def _service_names(self, svc: _Svc) -> list[Name]:
        if not svc.exists:
            return []
        base = svc.labels() + self.zone
        out = [base]
        if svc.shape is _Shape.EXTERNAL:
            return out
        out += [(endpoint, *base) for endpoint in svc.by_endpoint]
        pairs = self._pairs(svc)
        out += [("_" + protocol, *base) for protocol in sorted({proto for _, proto in pairs})]
        out += [("_" + name, "_" + protocol, *base) for name, protocol in sorted(pairs)]
        return out

    def _pairs(self, svc: _Svc) -> set[tuple[str, str]]:
        return {(lower(p.name), lower(p.protocol)) for p in self._srv_ports(svc) if p.name}

    def reverse_names(self, addresses: Sequence[str]) -> list[Name]:
        return [reverse_of(address) for address in addresses]

    # --- the names with their answers, without parsing -----------------------------------

    def listed(self, spell: Callable[[str], str], zone: Name
               ) -> Iterator[tuple[Name, Name, Answers]]:
        """(name, its zone, answers) for every name `names` lists, each label spelled with
        `spell` and the zone as `zone` (a spelling of this zone): what `answers` gives for
        that name, computed without parsing it.
        """
        for name in (self.zone, *(rest + self.zone for rest in (
                ("dns-version",), ("dns",), ("ns", "dns"), ("svc",), ("pod",)))):
            spelled = tuple(map(spell, name[:len(name) - len(self.zone)])) + zone
            answers = self.answers_query(parse(spelled, self.zone))
            assert isinstance(answers, Answers)
            yield spelled, zone, answers
        for namespace in sorted(self._namespaces):
            yield from self.namespace_listed(namespace, spell, zone)
        for svc in self._services.values():
            yield from self._service_listed(svc, spell, zone)
        for address in self._ptr:
            yield self._reverse_listed(address, spell)

    def namespace_listed(self, namespace: str, spell: Callable[[str], str], zone: Name
                         ) -> Iterator[tuple[Name, Name, Answers]]:
        """`listed` for a namespace's own names (nothing if it does not exist)."""
        if namespace not in self._namespaces:
            return
        for name in self.namespace_names(namespace):
            spelled = tuple(map(spell, name[:len(name) - len(self.zone)])) + zone
            answers = self.answers_query(parse(spelled, self.zone))
            assert isinstance(answers, Answers)
            yield spelled, zone, answers

    def service_listed(self, key: tuple[str, str], spell: Callable[[str], str], zone: Name
                       ) -> Iterator[tuple[Name, Name, Answers]]:
        """`listed` for the names of service `key` (nothing if it does not exist)."""
        svc = self._services.get(key)
        if svc is not None:
            yield from self._service_listed(svc, spell, zone)

    def _service_listed(self, svc: _Svc, spell: Callable[[str], str], zone: Name
                        ) -> Iterator[tuple[Name, Name, Answers]]:
        if not svc.exists:
            return
        namespace, service = svc.namespace, svc.name
        base = (spell(service), spell(namespace), spell("svc"), *zone)
        q = Query(Kind.SERVICE, base, zone, namespace=namespace, service=service)
        yield base, zone, self._answered(q)
        if svc.shape is _Shape.EXTERNAL:
            return
        for endpoint in svc.by_endpoint:
            q = Query(Kind.ENDPOINT, (spell(endpoint), *base), zone, namespace=namespace,
                      service=service, endpoint=endpoint)
            yield q.name, zone, self._answered(q)
        pairs = self._pairs(svc)
        for protocol in sorted({proto for _, proto in pairs}):
            name = (spell("_" + protocol), *base)
            # A label of `_` alone is not `_<proto>` to the parser: let it say what it is.
            q = Query(Kind.PROTOCOL, name, zone, namespace=namespace, service=service,
                      protocol=protocol) if protocol else parse(name, self.zone)
            yield name, zone, self._answered(q)
        for port, protocol in sorted(pairs):
            name = (spell("_" + port), spell("_" + protocol), *base)
            q = Query(Kind.PORT, name, zone, namespace=namespace, service=service, port=port,
                      protocol=protocol) if port and protocol else parse(name, self.zone)
            yield name, zone, self._answered(q)

    def reverse_listed(self, addresses: Sequence[str], spell: Callable[[str], str]
                       ) -> Iterator[tuple[Name, Name, Answers]]:
        """`listed` for the reverse names of `addresses` (those with a PTR only)."""
        for address in addresses:
            if address in self._ptr:
                yield self._reverse_listed(address, spell)

    def _reverse_listed(self, address: str, spell: Callable[[str], str]
                        ) -> tuple[Name, Name, Answers]:
        name = tuple(map(spell, reverse_of(address)))
        answers = self._reverse_answers(name, name[-2:], address)
        assert isinstance(answers, Answers)
        return name, name[-2:], answers

    def _answered(self, q: Query) -> Answers:
        answers = self.answers_query(q)
        assert isinstance(answers, Answers)
        return answers

    def _srv_ports(self, svc: _Svc) -> Iterator[Port]:
        if svc.shape is _Shape.CLUSTER:
            yield from svc.ports
        else:
            for endpoint in svc.endpoints:
                yield from endpoint.ports

    # --- answering -----------------------------------------------------------------------

    def answer(self, qname: str | Sequence[str | bytes], qtype: int) -> Response | NotOurs:
        """The response to one question (class IN), or NOT_OURS for names we do not serve.

        Owner names repeat `qname` exactly and names built from the zone use the zone as
        the client spelled it (46, 47); names from the catalog are lower case.
        """
        answers = self.answers(qname)
        if isinstance(answers, NotOurs):
            return answers
        return answers.get(qtype)

    def answers(self, qname: str | Sequence[str | bytes]) -> Answers | NotOurs:
        """Every response for one name: what `table.py` precomputes."""
        return self.answers_query(parse(qname, self.zone))

    def answers_query(self, q: Query) -> Answers | NotOurs:
        """`answers` for a name already parsed against this zone."""
        if q.kind is Kind.OUTSIDE or q.kind is Kind.REVERSE_OTHER:
            return NOT_OURS
        if q.kind is Kind.REVERSE:
            assert q.address is not None
            return self._reverse_answers(q.name, q.zone, str(q.address))
        nodata = self._negative(Rcode.NOERROR, q.zone)
        found = self._find(q)
        if found is None:
            # 42 (a CoreDNS quirk, kept): SOA below the apex is NODATA, existing or not.
            return Answers({QType.SOA: nodata, **_NO_TRANSFER}, self._missing(q.zone))
        if isinstance(found, _Svc):
            by_type = {qtype: self._alias(q, found, qtype)
                       for qtype in (QType.A, QType.AAAA, QType.CNAME)}
        else:
            by_type = {qtype: Response(Rcode.NOERROR, tuple(answers), (), tuple(additional))
                       if answers else nodata
                       for qtype, (answers, additional) in found.items()}
        # 40: every other qtype (MX, ANY, HINFO, ...) on an existing name is NODATA.
        return Answers({**by_type, **_NO_TRANSFER}, nodata)

    def _reverse_answers(self, name: Name, zone: Name, address: str) -> Answers | NotOurs:
        targets = self._ptr.get(address)
        if not targets:
            return NOT_OURS  # 33: fall through to the forwarder for unknown addresses
        ptr = Response(Rcode.NOERROR,
                       tuple(Record(name, self.ttl, PTR(t)) for t in targets))  # 30-32
        return Answers({QType.PTR: ptr, **_NO_TRANSFER}, self._negative(Rcode.NOERROR, zone))

    def _missing(self, zone: Name) -> Response:
        # 53: before the first complete sync an absent name may just not be known yet; a
        # SERVFAIL is not negatively cached, an NXDOMAIN would be.
        return self._negative(Rcode.NXDOMAIN if self.ready else Rcode.SERVFAIL, zone)

    def _negative(self, rcode: Rcode, zone: Name) -> Response:
        # One object per spelling of the zone (a few kept): most names share it, and the
        # table recognises a response it has encoded by identity.
        found = self._negatives.get((rcode, zone))
        if found is None:
            if len(self._negatives) >= 64:
                self._negatives.clear()
            found = self._negatives[(rcode, zone)] = \
                Response(rcode, authority=(self._soa(zone),))  # 45
        return found

    def _soa(self, zone: Name) -> Record:
        data = SOA(("ns", "dns", *zone), ("hostmaster", *zone), self.serial,
                   SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl)
        return Record(zone, min(self.ttl, MAX_SOA_TTL), data)  # 41, 45

    def _find(self, q: Query) -> _Found | _Svc | None:
        """Records by qtype for an existing name, an ExternalName service, or None."""
        kind = q.kind
        if kind is Kind.SERVICE or kind is Kind.ENDPOINT or kind is Kind.PORT \
                or kind is Kind.PROTOCOL:
            svc = self._services.get((q.namespace, q.service))
            if svc is None or not svc.exists:
                return None  # 34, 35, 14
            if svc.shape is _Shape.EXTERNAL:
                return svc if kind is Kind.SERVICE else None  # 29
            return self._service(q, svc)
        if kind is Kind.NAMESPACE:
            return {} if q.namespace in self._namespaces else None  # 35, 36
        if kind is Kind.APEX:
            host = ("ns", "dns", *q.zone)
            glue = [Record(host, self.ttl, a) for a in self.ns_addresses]
            return {QType.SOA: ([self._soa(q.zone)], []),  # 41
                    QType.NS: ([Record(q.name, self.ttl, NS(host))], glue)}  # 43, 44
        if kind is Kind.DNS_VERSION:
            return {QType.TXT: ([Record(q.name, DNS_VERSION_TTL, TXT((SCHEMA_VERSION,)))], [])}
        if kind is Kind.NS_HOST:
            return self._addresses(q.name, self.ns_addresses)  # 44
        if kind is Kind.SVC_ROOT or kind is Kind.POD_ROOT or kind is Kind.DNS_ROOT:
            return {}  # 36
        if kind is Kind.POD and self.pods != PODS_DISABLED and q.namespace in self._namespaces:
            if not q.service:
                return {}  # 50: <ns>.pod.<zone> exists
            address = pod_address(q.service)
            if address is None or (self.pods == PODS_VERIFIED and str(address) not in
                                   self._pods.get(q.namespace, ())):
                return None  # 50, 51
            return self._addresses(q.name, [_data(address)])  # 50, 51
        return None  # INVALID, POD: 37, 38, 48, 49, 50, 51

    def _addresses(self, name: Name, addresses: Sequence[Address]) -> _Found:
        ttl = self.ttl
        return {qtype: ([Record(name, ttl, a) for a in _family(addresses, qtype)], [])
                for qtype in (QType.A, QType.AAAA)}

    def _service(self, q: Query, svc: _Svc) -> _Found | None:
        kind = q.kind
        if kind is Kind.ENDPOINT:
            endpoints = svc.by_endpoint.get(q.endpoint)
            if not endpoints:
                return None  # 19; endpoint names exist for ClusterIP services too (20)
            addresses = [e.address for e in endpoints]
            candidates = [_Srv((e.name, *svc.labels()), e.address, p.port)
                          for e in endpoints for p in e.ports]
        elif kind is Kind.PROTOCOL:
            known = any(lower(p.protocol) == q.protocol
                        for p in self._srv_ports(svc) if p.name)
            return {} if known else None
        elif kind is Kind.PORT:
            candidates = self._port_candidates(svc, q.port, q.protocol)
            # 10; only SRV lives here (CoreDNS would also answer A: a quirk not copied).
            return {QType.SRV: self._srv(q, candidates)} if candidates else None
        elif svc.shape is _Shape.CLUSTER:
            addresses = list(svc.cluster_ips)  # 2, 3, 4, 6
            candidates = [_Srv(svc.labels(), ip, p.port)
                          for p in svc.ports for ip in svc.cluster_ips]  # 11
        else:
            addresses = [e.address for e in svc.endpoints]  # 13
            candidates = [_Srv((e.name, *svc.labels()), e.address, p.port)
                          for e in svc.endpoints for p in e.ports]  # 22: no ports, no SRV
        found = self._addresses(q.name, addresses)
        found[QType.SRV] = self._srv(q, candidates)
        return found

    def _port_candidates(self, svc: _Svc, name: str, protocol: str) -> list[_Srv]:
        if svc.shape is _Shape.CLUSTER:
            return [_Srv(svc.labels(), ip, p.port)
                    for p in svc.ports if _matches(p, name, protocol)
                    for ip in svc.cluster_ips]  # 8
        return [_Srv((e.name, *svc.labels()), e.address, p.port)
                for e in svc.endpoints for p in e.ports if _matches(p, name, protocol)]  # 21

    def _srv(self, q: Query, candidates: list[_Srv]) -> tuple[list[Record], list[Record]]:
        if not candidates:
            return [], []
        # 12: CoreDNS counts every candidate before de-duplicating: floor(100/N), at least 1.
        weight = max(1, 100 // len(candidates))
        answers: dict[tuple[Name, int], Record] = {}
        glue: dict[tuple[Name, str], Record] = {}
        for c in candidates:
            target = c.target + q.zone
            if (target, c.port) not in answers:
                answers[(target, c.port)] = Record(q.name, self.ttl,
                                                   SRV(0, weight, c.port, target))
            if (target, c.address.address) not in glue:
                glue[(target, c.address.address)] = Record(target, self.ttl, c.address)
        return list(answers.values()), list(glue.values())

    def _alias(self, q: Query, svc: _Svc, qtype: int) -> Response:
        """ExternalName: a CNAME, chased inside the zone for A/AAAA (26, 27)."""
        chain = [Record(q.name, self.ttl, CNAME(svc.external))]
        if qtype == QType.CNAME:
            return Response(Rcode.NOERROR, tuple(chain))
        seen = {tuple(lower(label) for label in q.name)}
        target = svc.external
        for _ in range(MAX_CNAME_CHAIN):
            tq = parse(target, self.zone)
            folded = tuple(lower(label) for label in target)
            if not tq.in_zone:
                return Response(Rcode.NOERROR, tuple(chain), chase=target)
            if folded in seen:
                break  # a loop: answer with the chain so far, as CoreDNS drops loops
            seen.add(folded)
            found = self._find(tq)
            if found is None:
                missing = self._missing(q.zone)  # RFC 6604: the rcode of the last name
                return Response(missing.rcode, tuple(chain), missing.authority)
            if isinstance(found, _Svc):
                chain.append(Record(target, self.ttl, CNAME(found.external)))
                target = found.external
                continue
            answers, additional = found.get(qtype, ([], []))
            if not answers:
                return Response(Rcode.NOERROR, tuple(chain), (self._soa(q.zone),))
            return Response(Rcode.NOERROR, tuple(chain + answers), (), tuple(additional))
        return Response(Rcode.NOERROR, tuple(chain))


def answer(catalog: Catalog, qname: str | Sequence[str | bytes], qtype: int,
           settings: DnsSettings, *, ns_addresses: Sequence[str] = ()) -> Response | NotOurs:
    """One-off convenience: index `catalog` and answer one question. Servers keep an Answerer."""
    return Answerer(catalog, settings.zone, settings.ttl, ns_addresses=ns_addresses,
                    pods=settings.pods).answer(qname, qtype)
