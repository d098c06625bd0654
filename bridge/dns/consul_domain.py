"""The Consul domain: what a Consul agent's DNS interface answers, from our catalog (pure).

When `dns.consul_domain` is set (e.g. `consul`), the server also answers
`<svc>.service.<domain>` and the other names of Consul's DNS interface for services
(checklist rules 61-66), from the instances of the merged catalog whose origin is Consul.
`ConsulAnswerer` says what those names hold; the table encodes and serves them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bridge.catalog.model import Catalog, Instance, OriginKind, Service
from bridge.dns.addresses import Address, address_record, address_records, ip_address, of_family
from bridge.dns.query import Name, labels, lower, zone_labels
from bridge.dns.records import NO_TRANSFER, NOT_OURS, NS, SOA, SRV, Answers, NotOurs, QType, Rcode, Record, Response

DEFAULT_DATACENTER = "dc1"  # Consul's default datacenter name
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 86400  # Consul's dns_config.soa defaults


@dataclass(frozen=True, slots=True)
class ConsulOptions:
    """How the Consul domain is served. `ttl` is Consul's service_ttl (default 0 s)."""

    domain: str
    ttl: int = 0
    datacenter: str = DEFAULT_DATACENTER
    a_record_limit: int = 0  # 0: no limit


@dataclass(frozen=True, slots=True)
class _Inst:
    address: Address
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ports: tuple[int, ...]
    node: str
    tags: tuple[str, ...]  # lower case, each once


@dataclass(frozen=True, slots=True)
class _Select:
    """A service lookup: these instances; `srv_only` for `_<svc>._<tag>` without `.service`."""

    instances: tuple[_Inst, ...]
    srv_only: bool = False


@dataclass(frozen=True, slots=True)
class _Addr:
    address: Address


class _Apex:
    pass


class _NsHost:
    pass


class _Ent:
    """An empty non-terminal: names exist below it, so it is NODATA, never NXDOMAIN."""


_Spec = _Select | _Addr | _Apex | _NsHost | _Ent
_APEX, _NS_HOST, _ENT = _Apex(), _NsHost(), _Ent()


def addr_label(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Consul's hex form of an address: `c000020a` for 192.0.2.10, 32 digits for IPv6."""
    return ip.packed.hex()


def _healthy(catalog: Catalog) -> dict[str, list[_Inst]]:
    """Healthy Consul-origin instances by lower-case service label, in a stable order."""
    out: dict[str, dict[_Inst, None]] = {}
    for key in sorted(catalog.services):
        for instance in catalog.services[key].instances:
            inst = _inst(instance)
            if inst is not None:
                out.setdefault(lower(key.name), {})[inst] = None
    return {name: list(found) for name, found in out.items()}


def _inst(instance: Instance) -> _Inst | None:
    if instance.origin.kind is not OriginKind.CONSUL or not instance.ready:
        return None
    ip = ip_address(instance.address)
    if ip is None:
        return None
    ports = tuple(dict.fromkeys(p.port for p in instance.ports if 0 < p.port < 65536))
    tags = tuple(dict.fromkeys(lower(tag) for tag in instance.tags if tag))
    return _Inst(address_record(ip), ip, ports, instance.node_name, tags)


class ConsulAnswerer:
    """Answers questions in the Consul domain about one catalog. Immutable once built.

    Names, with the checklist rules they follow:

        [<tag>.]<svc>.service[.<dc>[.dc]].<domain>    A, AAAA, ANY; SRV when asked (61, 63, 65)
        _<svc>._<tag>.service[.<dc>[.dc]].<domain>    the same; `_tcp` means no tag filter (64)
        _<svc>._<tag>[.<dc>[.dc]].<domain>            SRV (`.service` may be left out, 64)
        <hex address>.addr[.<dc>[.dc]].<domain>       the A/AAAA an SRV target names (65)
        <domain>                                      SOA, and NS `ns.<domain>` with our address

    `<svc>` is the catalog's DNS label for the Consul service (its key name; instances of one
    label in several namespaces are one service, as in Consul), `<tag>` any of an instance's
    tags, matched case-insensitively (a tag with dots spans several labels, as Consul joins
    them). Only healthy instances are served (the Consul source marks an instance ready when
    its checks pass, warning included only if so configured): a service or tag with none is
    NXDOMAIN (62), a type it has no address of is NODATA.

    As Consul does: answers are in random order per query (the encoder shuffles responses
    marked `shuffle`); `a_record_limit` caps A/AAAA/ANY answers at N records picked at random,
    never SRV (66); SRV is `1 1 <port> <hex>.addr.<dc>.<domain>` with the address in the
    additional section, in the domain as the client spelled it; TTL and SOA minimum default to
    0; an SOA question on any name of the domain gets the SOA in the answer section.

    Deliberate departures from Consul: every SRV target is the `addr` form (the catalog keeps
    the address an instance is reached at, not whether it came from the service or the node);
    each named port of an instance gets its own SRV; a UDP answer that does not fit sets TC
    (Consul trims silently by default); `_<svc>._<tag>.<domain>` asked for another type than
    SRV is NODATA, not NXDOMAIN (the name exists); a datacenter other than ours is NXDOMAIN
    (Consul would ask that datacenter); `addr` names exist only for the addresses we serve;
    zone transfers are REFUSED; names of nodes and prepared queries are not served.
    """

    def __init__(self, catalog: Catalog, options: ConsulOptions, *,
                 ns_addresses: Sequence[str] = (), serial: int | None = None) -> None:
        self.zone: Name = zone_labels(options.domain)
        self.ttl = options.ttl
        self.datacenter = lower(options.datacenter or DEFAULT_DATACENTER)
        self.limit = max(0, options.a_record_limit)
        self.ready = catalog.ready
        self.serial = (catalog.generation if serial is None else serial) & 0xFFFFFFFF
        self.ns_addresses = address_records(ns_addresses)
        self._names: dict[Name, _Spec] = {(): _APEX, ("ns",): _NS_HOST}
        self._build(_healthy(catalog))

    # --- the names that exist ------------------------------------------------------------

    def _build(self, services: dict[str, list[_Inst]]) -> None:
        suffixes: list[Name] = [(), (self.datacenter,), (self.datacenter, "dc")]
        names = self._names
        addresses: dict[str, _Inst] = {}
        for service, instances in sorted(services.items()):
            tagged: dict[str, list[_Inst]] = {}
            for inst in instances:
                addresses.setdefault(inst.address.address, inst)
                for tag in inst.tags:
                    tagged.setdefault(tag, []).append(inst)
            selections: list[tuple[str, tuple[_Inst, ...]]] = [("", tuple(instances))]
            selections += [(tag, tuple(found)) for tag, found in sorted(tagged.items())]
            for suffix in suffixes:
                for tag, selected in selections:
                    tag_labels = tuple(tag.split(".")) if tag else ()
                    if tag and not all(tag_labels):
                        continue  # `a..b`, `.a`: no name spells it
                    names[(*tag_labels, service, "service", *suffix)] = _Select(selected)
                    if tag == "tcp" or "." in tag:
                        continue  # `_<svc>._tcp` is the unfiltered form; one label only
                    rfc = ("_" + service, "_" + (tag or "tcp"))
                    names[(*rfc, "service", *suffix)] = _Select(selected)
                    names.setdefault((*rfc, *suffix), _Select(selected, srv_only=True))
        for inst in addresses.values():
            for suffix in suffixes:
                names[(addr_label(inst.ip), "addr", *suffix)] = _Addr(inst.address)
        for name in list(names):
            for i in range(1, len(name)):
                names.setdefault(name[i:], _ENT)

    def names(self) -> Iterator[Name]:
        """Every name that exists, lower case. A name not listed is NXDOMAIN for every
        qtype but SOA, and its responses depend only on the qtype and the zone's spelling."""
        for name in self._names:
            yield name + self.zone

    def changed_names(self, old: ConsulAnswerer) -> Iterator[tuple[Name, bool]]:
        """(name in lower case, whether it exists here) for each name whose answers may
        differ from `old`'s: gone, new, or holding other instances. `old` must differ only
        in the catalog (same options, serial and readiness): a name's answers depend on
        nothing else than what it holds.
        """
        for rest, spec in self._names.items():
            if old._names.get(rest) != spec:
                yield rest + self.zone, True
        for rest in old._names:
            if rest not in self._names:
                yield rest + self.zone, False

    @staticmethod
    def serves(catalog_service: Service | None) -> bool:
        """True when a catalog service contributes to the Consul domain (as far as any
        of its instances comes from Consul): a change elsewhere cannot change the domain."""
        return catalog_service is not None and any(
            instance.origin.kind is OriginKind.CONSUL for instance in catalog_service.instances)

    # --- answering -----------------------------------------------------------------------

    def answer(self, qname: str | Sequence[str | bytes], qtype: int) -> Response | NotOurs:
        answers = self.answers(qname)
        if isinstance(answers, NotOurs):
            return answers
        return answers.get(qtype)

    def answers(self, qname: str | Sequence[str | bytes]) -> Answers | NotOurs:
        asked = labels(qname)
        size = len(self.zone)
        if len(asked) < size or tuple(lower(x) for x in asked[len(asked) - size:]) != self.zone:
            return NOT_OURS
        zone = asked[len(asked) - size:]
        rest = tuple(lower(x) for x in asked[:len(asked) - size])
        soa = self._soa(zone)
        nodata = Response(Rcode.NOERROR, authority=(soa,))
        # Consul answers an SOA question on any name of its domain with the SOA itself.
        by_type: dict[int, Response] = {QType.SOA: Response(Rcode.NOERROR, (soa,)),
                                        **NO_TRANSFER}
        spec = self._names.get(rest)
        if spec is None:
            missing = Rcode.NXDOMAIN if self.ready else Rcode.SERVFAIL
            return Answers(by_type, Response(missing, authority=(soa,)))  # 62
        if isinstance(spec, _Select):
            by_type.update(self._select(asked, zone, spec, nodata))
        elif isinstance(spec, _Addr):
            by_type.update(self._addresses(asked, [spec.address], nodata))
        elif spec is _NS_HOST:
            by_type.update(self._addresses(asked, self.ns_addresses, nodata))
        elif spec is _APEX:
            host = ("ns", *zone)
            glue = tuple(Record(host, self.ttl, a) for a in self.ns_addresses)
            by_type[QType.NS] = Response(Rcode.NOERROR, (Record(asked, self.ttl, NS(host)),),
                                         (), glue)
        return Answers(by_type, nodata)

    def _soa(self, zone: Name) -> Record:
        data = SOA(("ns", *zone), ("hostmaster", *zone), self.serial,
                   SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl)
        return Record(zone, self.ttl, data)

    def _addresses(self, name: Name, addresses: Sequence[Address], nodata: Response
                   ) -> dict[int, Response]:
        out: dict[int, Response] = {}
        for qtype, found in ((QType.A, of_family(addresses, QType.A)),
                             (QType.AAAA, of_family(addresses, QType.AAAA)),
                             (QType.ANY, of_family(addresses, QType.A)
                              + of_family(addresses, QType.AAAA))):
            out[qtype] = self._shuffled(tuple(Record(name, self.ttl, a) for a in found),
                                        (), self.limit, nodata)
        return out

    def _select(self, name: Name, zone: Name, spec: _Select, nodata: Response
                ) -> dict[int, Response]:
        out = {} if spec.srv_only else self._addresses(
            name, [inst.address for inst in spec.instances], nodata)  # 61, 63, 66
        srv: dict[tuple[str, str, int], Record] = {}
        glue: dict[Name, Record] = {}
        for inst in spec.instances:
            target = (addr_label(inst.ip), "addr", self.datacenter, *zone)
            for port in inst.ports:
                srv.setdefault((inst.node, inst.address.address, port),
                               Record(name, self.ttl, SRV(1, 1, port, target)))  # 65
                glue.setdefault(target, Record(target, self.ttl, inst.address))
        out[QType.SRV] = self._shuffled(tuple(srv.values()), tuple(glue.values()), 0, nodata)
        return out

    @staticmethod
    def _shuffled(answer: tuple[Record, ...], additional: tuple[Record, ...], limit: int,
                  nodata: Response) -> Response:
        if not answer:
            return nodata
        many = len(answer) > 1
        return Response(Rcode.NOERROR, answer, (), additional, shuffle=many,
                        answer_limit=limit if many and 0 < limit < len(answer) else 0)
