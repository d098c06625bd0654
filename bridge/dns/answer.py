"""What the cluster zone says: (catalog, question name, qtype) -> response (pure: no I/O).

`Answerer` owns the *meaning* of every answer in the cluster zone and the reverse zones:
which names exist, which records they carry, and when the answer is NXDOMAIN, NODATA,
SERVFAIL or REFUSED. It knows nothing of wire formats: `table.py` encodes its responses.
Numbers in comments are rules of the conformance checklist (see the README's DNS section).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from bridge.catalog.model import Catalog, Port, ServiceKey
from bridge.dns.addresses import Address, address_record, address_records, of_family
from bridge.dns.query import Kind, Name, Query, lower, parse, zone_labels
from bridge.dns.records import (
    CNAME,
    NO_TRANSFER,
    NOT_OURS,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    Answers,
    NotOurs,
    QType,
    Rcode,
    Record,
    Response,
)
from bridge.dns.zone_index import (
    Change,
    IndexedService,
    ServiceShape,
    ZoneIndex,
    pod_address,
    reverse_of,
)

if TYPE_CHECKING:
    from bridge.config import DnsSettings

SCHEMA_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400
MAX_SOA_TTL = 300
MAX_CNAME_CHAIN = 10
PODS_DISABLED, PODS_INSECURE, PODS_VERIFIED = "disabled", "insecure", "verified"


class _Srv(NamedTuple):
    """One SRV candidate before de-duplication: what CoreDNS counts for the weight (12)."""

    target: Name  # relative to the zone
    address: Address
    port: int


_Found = dict[int, tuple[list[Record], list[Record]]]


def _matches(port: Port, name: str, protocol: str) -> bool:
    """Port name and protocol compare case-insensitively; unnamed ports never match (9, 10)."""
    return bool(port.name) and lower(port.name) == name and lower(port.protocol) == protocol


class Answerer:
    """Answers questions about one catalog. Immutable once built; share it freely.

    The catalog is indexed once (`ZoneIndex`: by service, endpoint name and address), so
    that each question is a few look-ups. `derive` makes the answerer of a next catalog
    from the services that changed and says which names the change touches, for the
    table's incremental updates; `listed` gives every name with its answers without
    parsing names, for its builds. The SOA serial is the catalog's generation unless the
    caller fixes it (`serial`): the table keeps it across incremental updates.

    Deliberate departures from CoreDNS:

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
        self.ns_addresses = address_records(ns_addresses)
        self.index = ZoneIndex(catalog, self.zone, count_pods=pods == PODS_VERIFIED,
                               ignore_empty_service=ignore_empty_service)
        self._negatives: dict[tuple[Rcode, Name], Response] = {}

    @property
    def dynamic_pods(self) -> bool:
        """True when `<a-b-c-d>.<ns>.pod.<zone>` names exist without being listed (50, 51)."""
        return self.pods != PODS_DISABLED

    def derive(self, catalog: Catalog, previous: Catalog,
               changed: Collection[ServiceKey]) -> tuple[Answerer, Change] | None:
        """The answerer of `catalog`, from this one (built for `previous`) and the keys of
        the services that differ between them, with the names that changed
        (`ZoneIndex.derive`). This answerer does not change. None when it cannot be done
        that way: build a new one then.
        """
        derived = self.index.derive(catalog, previous, changed)
        if derived is None:
            return None
        new = copy.copy(self)
        new.index, change = derived
        return new, change

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
        for namespace in sorted(self.index.namespaces):
            yield from self.namespace_names(namespace)
        for svc in self.index.services.values():
            yield from self._service_names(svc)
        for address in self.index.ptr:
            yield reverse_of(address)

    def namespace_names(self, namespace: str) -> list[Name]:
        """The names a namespace has while it exists (`names` lists them then)."""
        zone = self.zone
        if self.dynamic_pods:
            return [(namespace, "svc", *zone), (namespace, "pod", *zone)]
        return [(namespace, "svc", *zone)]

    def service_names(self, key: tuple[str, str]) -> list[Name]:
        """The names service `key` (lower-case namespace, name) has, as `names` lists them."""
        svc = self.index.services.get(key)
        return self._service_names(svc) if svc is not None else []

    def _service_names(self, svc: IndexedService) -> list[Name]:
        if not svc.exists:
            return []
        base = svc.labels() + self.zone
        out = [base]
        if svc.shape is ServiceShape.EXTERNAL:
            return out
        out += [(endpoint, *base) for endpoint in svc.by_endpoint]
        pairs = svc.port_pairs()
        out += [("_" + protocol, *base) for protocol in sorted({proto for _, proto in pairs})]
        out += [("_" + name, "_" + protocol, *base) for name, protocol in sorted(pairs)]
        return out

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
        for namespace in sorted(self.index.namespaces):
            yield from self.namespace_listed(namespace, spell, zone)
        for svc in self.index.services.values():
            yield from self._service_listed(svc, spell, zone)
        for address in self.index.ptr:
            yield self._reverse_listed(address, spell)

    def namespace_listed(self, namespace: str, spell: Callable[[str], str], zone: Name
                         ) -> Iterator[tuple[Name, Name, Answers]]:
        """`listed` for a namespace's own names (nothing if it does not exist)."""
        if namespace not in self.index.namespaces:
            return
        for name in self.namespace_names(namespace):
            spelled = tuple(map(spell, name[:len(name) - len(self.zone)])) + zone
            answers = self.answers_query(parse(spelled, self.zone))
            assert isinstance(answers, Answers)
            yield spelled, zone, answers

    def service_listed(self, key: tuple[str, str], spell: Callable[[str], str], zone: Name
                       ) -> Iterator[tuple[Name, Name, Answers]]:
        """`listed` for the names of service `key` (nothing if it does not exist)."""
        svc = self.index.services.get(key)
        if svc is not None:
            yield from self._service_listed(svc, spell, zone)

    def _service_listed(self, svc: IndexedService, spell: Callable[[str], str], zone: Name
                        ) -> Iterator[tuple[Name, Name, Answers]]:
        if not svc.exists:
            return
        namespace, service = svc.namespace, svc.name
        base = (spell(service), spell(namespace), spell("svc"), *zone)
        q = Query(Kind.SERVICE, base, zone, namespace=namespace, service=service)
        yield base, zone, self._answered(q)
        if svc.shape is ServiceShape.EXTERNAL:
            return
        for endpoint in svc.by_endpoint:
            q = Query(Kind.ENDPOINT, (spell(endpoint), *base), zone, namespace=namespace,
                      service=service, endpoint=endpoint)
            yield q.name, zone, self._answered(q)
        pairs = svc.port_pairs()
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
            if address in self.index.ptr:
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
            return Answers({int(QType.SOA): nodata, **NO_TRANSFER}, self._missing(q.zone))
        by_type: dict[int, Response]
        if isinstance(found, IndexedService):
            by_type = {qtype: self._alias(q, found, qtype)
                       for qtype in (QType.A, QType.AAAA, QType.CNAME)}
        else:
            by_type = {qtype: Response(Rcode.NOERROR, tuple(answers), (), tuple(additional))
                       if answers else nodata
                       for qtype, (answers, additional) in found.items()}
        # 40: every other qtype (MX, ANY, HINFO, ...) on an existing name is NODATA.
        return Answers({**by_type, **NO_TRANSFER}, nodata)

    def _reverse_answers(self, name: Name, zone: Name, address: str) -> Answers | NotOurs:
        targets = self.index.ptr.get(address)
        if not targets:
            return NOT_OURS  # 33: fall through to the forwarder for unknown addresses
        ptr = Response(Rcode.NOERROR,
                       tuple(Record(name, self.ttl, PTR(t)) for t in targets))  # 30-32
        return Answers({QType.PTR: ptr, **NO_TRANSFER}, self._negative(Rcode.NOERROR, zone))

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

    def _find(self, q: Query) -> _Found | IndexedService | None:
        """Records by qtype for an existing name, an ExternalName service, or None."""
        kind = q.kind
        if kind is Kind.SERVICE or kind is Kind.ENDPOINT or kind is Kind.PORT \
                or kind is Kind.PROTOCOL:
            svc = self.index.services.get((q.namespace, q.service))
            if svc is None or not svc.exists:
                return None  # 34, 35, 14
            if svc.shape is ServiceShape.EXTERNAL:
                return svc if kind is Kind.SERVICE else None  # 29
            return self._service(q, svc)
        if kind is Kind.NAMESPACE:
            return {} if q.namespace in self.index.namespaces else None  # 35, 36
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
        if kind is Kind.POD and self.pods != PODS_DISABLED and q.namespace in self.index.namespaces:
            if not q.service:
                return {}  # 50: <ns>.pod.<zone> exists
            address = pod_address(q.service)
            if address is None or (self.pods == PODS_VERIFIED and str(address) not in
                                   self.index.pods.get(q.namespace, ())):
                return None  # 50, 51
            return self._addresses(q.name, [address_record(address)])  # 50, 51
        return None  # INVALID, POD: 37, 38, 48, 49, 50, 51

    def _addresses(self, name: Name, addresses: Sequence[Address]) -> _Found:
        ttl = self.ttl
        return {qtype: ([Record(name, ttl, a) for a in of_family(addresses, qtype)], [])
                for qtype in (QType.A, QType.AAAA)}

    def _service(self, q: Query, svc: IndexedService) -> _Found | None:
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
                        for p in svc.srv_ports() if p.name)
            return {} if known else None
        elif kind is Kind.PORT:
            candidates = self._port_candidates(svc, q.port, q.protocol)
            # 10; only SRV lives here (CoreDNS would also answer A: a quirk not copied).
            return {QType.SRV: self._srv(q, candidates)} if candidates else None
        elif svc.shape is ServiceShape.CLUSTER:
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

    def _port_candidates(self, svc: IndexedService, name: str, protocol: str) -> list[_Srv]:
        if svc.shape is ServiceShape.CLUSTER:
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

    def _alias(self, q: Query, svc: IndexedService, qtype: int) -> Response:
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
            if isinstance(found, IndexedService):
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
