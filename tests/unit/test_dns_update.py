"""Incremental table updates (bridge.dns.table `Table.update`, bridge.dns.zone_index `derive`).

The central property: after any sequence of catalog changes, the table derived step by step
holds exactly what a table built from scratch for the final catalog holds (same serial),
and answers every question about it with the same bytes: every listed name, absent names,
reverse names, in several qtypes. Catalogs are drawn from small pools of names, addresses
and ports so that changes collide: shared pod IPs across services (PTR), cluster IPs that
move, namespaces that empty, ExternalNames pointing at services that change, Consul
instances, readiness flips, hostnames shared by two pods.
"""

from __future__ import annotations

import random
import struct
from types import MappingProxyType
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.catalog.model import (
    Catalog,
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
)
from bridge.config import DnsSettings
from bridge.dns import cow_map, encode
from bridge.dns import table as table_module
from bridge.dns.answer import Answerer
from bridge.dns.consul_domain import ConsulOptions
from bridge.dns.cow_map import CowMap
from bridge.dns.encode import wire
from bridge.dns.query import Name, upper
from bridge.dns.records import Answers, QType
from bridge.dns.server import DnsServer
from bridge.dns.table import Table, changed_keys

ZONE = "cluster.local"
K8S = Origin(OriginKind.KUBERNETES, "east")
NAMESPACES = ("default", "prod", "dev")
NAMES = ("a", "b", "web", "db", "api")
POD_IPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "fd00::1", "fd00::2",
           "not-an-ip")
CLUSTER_IPS = ("10.96.0.1", "10.96.0.2", "10.0.0.1", "fd00:96::1", "None")
PORTS = (Port("http", 80), Port("https", 443), Port("", 8080), Port("dns", 53, "UDP"),
         Port("HTTP", 8080, "tcp"), Port("metrics", 9090, ""))
HOSTNAMES = ("", "", "web-0", "dup", "Bad_Host")
EXTERNALS = ("www.example.com", "a.default.svc.cluster.local", "b.prod.svc.cluster.local.",
             "web.dev.svc.cluster.local", "nosuch.default.svc.cluster.local", "10.1.2.3", "")
TAGS = ("v1", "v2", "primary")
QTYPES = (QType.A, QType.AAAA, QType.SRV, QType.PTR, QType.CNAME, QType.SOA, QType.NS,
          QType.TXT, QType.MX, QType.ANY, QType.HTTPS, QType.AXFR, QType.IXFR, 65280)

OPTIONS = {
    "plain": {},
    "everything": {"pods": "verified", "ignore_empty_service": True, "forwarding": True,
                   "consul": ConsulOptions("consul", a_record_limit=2),
                   "ns_addresses": ["10.0.0.53"]},
    "insecure": {"pods": "insecure", "consul": ConsulOptions("consul")},
}

instances = st.builds(
    lambda address, ports, ready, hostname, consul, tags: Instance(
        address, tuple(ports),
        Origin(OriginKind.CONSUL, "vm-1") if consul else K8S, ready=ready,
        hostname=hostname, node_name="vm-1" if consul else "", tags=tuple(tags)),
    st.sampled_from(POD_IPS), st.lists(st.sampled_from(PORTS), max_size=2), st.booleans(),
    st.sampled_from(HOSTNAMES), st.sampled_from((False, False, False, True)),
    st.lists(st.sampled_from(TAGS), max_size=2))


@st.composite
def services(draw: st.DrawFn, key: ServiceKey) -> Service:
    kind = draw(st.sampled_from((ServiceType.HEADLESS, ServiceType.HEADLESS,
                                 ServiceType.CLUSTER_IP, ServiceType.EXTERNAL_NAME)))
    return Service(key, kind,
                   ports=tuple(draw(st.lists(st.sampled_from(PORTS), max_size=3))),
                   cluster_ips=tuple(draw(st.lists(st.sampled_from(CLUSTER_IPS), max_size=2)))
                   if kind is ServiceType.CLUSTER_IP else (),
                   external_name=draw(st.sampled_from(EXTERNALS))
                   if kind is ServiceType.EXTERNAL_NAME else "",
                   instances=tuple(draw(st.lists(instances, max_size=4))),
                   publish_not_ready=draw(st.sampled_from((False, False, True))))


KEYS = st.builds(ServiceKey, st.sampled_from(NAMESPACES), st.sampled_from(NAMES))


@st.composite
def histories(draw: st.DrawFn) -> list[Catalog]:
    """A first catalog, then catalogs each a few service changes away from the previous."""
    current: dict[ServiceKey, Service] = {}
    for key in draw(st.lists(KEYS, max_size=6)):
        current[key] = draw(services(key))
    out = [Catalog(MappingProxyType(dict(current)), ready=True, generation=1)]
    for step in range(draw(st.integers(1, 6))):
        for key in draw(st.lists(KEYS, min_size=1, max_size=3)):
            if key in current and draw(st.booleans()):
                old = current[key]
                change = draw(st.sampled_from(("remove", "flip", "ports", "ips", "endpoint")))
                if change == "remove":
                    del current[key]
                elif change == "flip" and old.instances:
                    i = draw(st.integers(0, len(old.instances) - 1))
                    flipped = Instance(**{**_fields(old.instances[i]),
                                          "ready": not old.instances[i].ready})
                    current[key] = _replace(old, instances=(
                        *old.instances[:i], flipped, *old.instances[i + 1:]))
                elif change == "ports":
                    current[key] = _replace(old, ports=tuple(
                        draw(st.lists(st.sampled_from(PORTS), max_size=3))))
                elif change == "ips":
                    current[key] = _replace(old, cluster_ips=tuple(
                        draw(st.lists(st.sampled_from(CLUSTER_IPS), max_size=2))))
                else:
                    current[key] = _replace(old, instances=(
                        *old.instances[1:], draw(instances)))
            else:
                current[key] = draw(services(key))
        out.append(Catalog(MappingProxyType(dict(current)), ready=True, generation=step + 2))
    return out


def _fields(obj: object) -> dict:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}  # type: ignore[attr-defined]


def _replace(service: Service, **changes: object) -> Service:
    return Service(**{**_fields(service), **changes})


def query(name: Name, qtype: int, qid: int = 77, edns: bool = False) -> bytes:
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    packet += wire(name) + struct.pack(">HH", qtype, 1)
    if edns:
        packet += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    return packet


def reply(table: Table, packet: bytes) -> object:
    random.seed(7)  # Consul answers are shuffled per query: the same order for both tables
    return table.respond(packet, tcp=True)


def every_name(table: Table) -> list[Name]:
    names = list(table.answerer.names())
    if table.consul is not None:
        names += list(table.consul.names())
    return names


def assert_same(derived: Table, scratch: Table, extra_names: list[Name]) -> None:
    """The derived table holds and answers exactly what the scratch table does."""
    assert derived.serial == scratch.serial
    assert derived.entries == scratch.entries
    assert derived.defaults == scratch.defaults
    assert derived.slow_defaults == scratch.slow_defaults
    assert derived.shuffled == scratch.shuffled
    assert derived.chases == scratch.chases
    assert sorted(derived.skipped) == sorted(scratch.skipped)
    old_answerer, new_answerer = derived.answerer, scratch.answerer
    assert sorted(old_answerer.names()) == sorted(new_answerer.names())
    assert old_answerer.index.ptr == new_answerer.index.ptr
    assert old_answerer.index.refs == new_answerer.index.refs
    assert old_answerer.index.namespaces == new_answerer.index.namespaces
    assert old_answerer.index.pods == new_answerer.index.pods
    assert old_answerer.index.aliases == new_answerer.index.aliases
    names = every_name(scratch) + every_name(derived) + extra_names
    rng = random.Random(3)
    for name in names:
        spelled = tuple("".join(c.upper() if rng.random() < 0.5 else c for c in label)
                        for label in name)
        for qtype in QTYPES:
            for packet in (query(name, qtype), query(spelled, qtype, edns=True)):
                assert reply(derived, packet) == reply(scratch, packet), (name, qtype)


ABSENT: list[Name] = [
    ("nosuch", "default", "svc", "cluster", "local"), ("x", "a", "default", "svc", "cluster",
                                                        "local"),
    ("10-0-0-1", "a", "default", "svc", "cluster", "local"),
    ("_http", "_tcp", "web", "prod", "svc", "cluster", "local"),
    ("dev", "svc", "cluster", "local"), ("prod", "pod", "cluster", "local"),
    ("10-0-0-1", "default", "pod", "cluster", "local"),
    ("10-0-0-9", "prod", "pod", "cluster", "local"),
    ("1", "0", "0", "10", "in-addr", "arpa"), ("9", "0", "0", "10", "in-addr", "arpa"),
    ("1", "0", "96", "10", "in-addr", "arpa"),
    ("a", "service", "consul"), ("v1", "b", "service", "consul"), ("_a", "_tcp", "consul"),
]


@pytest.mark.parametrize("fold", [False, True], ids=["layered", "folded"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories())
def test_updated_table_equals_a_table_built_from_scratch(option: str, fold: bool,
                                                         history: list[Catalog]) -> None:
    options = OPTIONS[option]
    table = Table(history[0], ZONE, 30, **options)
    # `fold`: every update folds its recent changes into a new base (else none does).
    with mock.patch.object(cow_map, "FOLD_MIN", 0 if fold else 1 << 30), \
            mock.patch.object(cow_map, "FOLD_SHARE", 0 if fold else 1):
        for catalog in history[1:]:
            previous = table
            before = (dict(previous.entries), dict(previous.defaults))
            table = table.update(catalog)
            # Readers may still use the previous table: it never changes.
            assert (previous.entries, previous.defaults) == before
            assert table.incremental or table.catalog is previous.catalog
            assert table.serial == history[0].generation  # kept across incremental updates
            if fold:
                assert not table._entries.recent and not table._defaults.recent
    scratch = Table(history[-1], ZONE, 30, serial=table.serial, **options)
    assert_same(table, scratch, ABSENT)


@pytest.mark.parametrize("option", sorted(OPTIONS))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories())
def test_listed_answers_equal_parsed_answers(option: str, history: list[Catalog]) -> None:
    """`Answerer.listed` (no parsing, for the build) says what `answers` says."""
    options = OPTIONS[option]
    answerer = Answerer(history[-1], ZONE, 30, pods=options.get("pods", "disabled"),
                        ignore_empty_service=options.get("ignore_empty_service", False))
    zone = tuple(upper(label) for label in answerer.zone)
    listed = list(answerer.listed(upper, zone))
    assert [tuple(label.lower() for label in name) for name, _, _ in listed] == \
        list(answerer.names())
    for name, _, answers in listed:
        assert isinstance(answers, Answers)
        assert answers == answerer.answers(name), name


def headless(key: ServiceKey, *addresses: str, ports: tuple[Port, ...] = (Port("http", 80),)
             ) -> Service:
    return Service(key, ServiceType.HEADLESS, ports=ports,
                   instances=tuple(Instance(a, ports, K8S) for a in addresses))


def big_catalog(count: int, generation: int = 1) -> Catalog:
    return Catalog(MappingProxyType({
        ServiceKey("default", f"s{i}"): headless(ServiceKey("default", f"s{i}"),
                                                 f"10.1.{i // 200}.{i % 200 + 1}",
                                                 f"10.2.{i // 200}.{i % 200 + 1}")
        for i in range(count)}), ready=True, generation=generation)


def with_service(catalog: Catalog, service: Service | None, key: ServiceKey,
                 generation: int) -> Catalog:
    services = dict(catalog.services)
    if service is None:
        del services[key]
    else:
        services[key] = service
    return Catalog(MappingProxyType(services), ready=catalog.ready, generation=generation)


def test_one_changed_service_encodes_only_its_names():
    base = big_catalog(300)
    table = Table(base, ZONE, 30)
    assert table.encoded > 300 * 6
    key = ServiceKey("default", "s7")
    changed = with_service(base, headless(key, "10.1.0.8", "10.9.9.9"), key, 2)
    updated = table.update(changed)
    assert updated.incremental
    # s7, its two endpoints, _tcp, _http._tcp; one new reverse name (10.2.0.8 went).
    assert updated.encoded == 6
    assert updated.serial == table.serial == 1
    assert_same(updated, Table(changed, ZONE, 30, serial=1),
                [("8", "0", "2", "10", "in-addr", "arpa")])


def test_a_namespace_appears_and_goes():
    base = big_catalog(10)
    table = Table(base, ZONE, 30, pods="insecure")
    key = ServiceKey("fresh", "only")
    added = table.update(with_service(base, headless(key, "10.7.0.1"), key, 2))
    assert added.incremental
    packet = query(("fresh", "svc", "cluster", "local"), QType.A)
    assert added.respond(packet)[3] & 0xF == 0  # NOERROR: the namespace exists (35)
    assert table.respond(packet)[3] & 0xF == 3  # the old table is untouched: NXDOMAIN
    removed = added.update(with_service(added.catalog, None, key, 3))
    assert removed.incremental
    assert removed.respond(packet)[3] & 0xF == 3
    assert_same(removed, Table(removed.catalog, ZONE, 30, pods="insecure", serial=1),
                [("fresh", "svc", "cluster", "local"), ("fresh", "pod", "cluster", "local"),
                 ("1", "0", "7", "10", "in-addr", "arpa")])


def test_many_changes_readiness_and_nested_zones_build_afresh():
    base = big_catalog(300)
    table = Table(base, ZONE, 30)
    many = big_catalog(300, generation=2)
    services = {key: headless(key, "10.5.5.5") for key in list(many.services)[:150]}
    many = Catalog(MappingProxyType({**many.services, **services}), ready=True, generation=2)
    rebuilt = table.update(many)
    assert not rebuilt.incremental and rebuilt.serial == 2
    unready = table.update(Catalog(base.services, ready=False, generation=3))
    assert not unready.incremental and unready.serial == 3
    nested = Table(base, ZONE, 30, consul=ConsulOptions("consul.cluster.local"))
    key = ServiceKey("default", "s1")
    assert not nested.update(with_service(base, None, key, 4)).incremental
    assert table.update(base) is table  # the same catalog: nothing to do


def test_mixed_case_keys_build_afresh():
    key = ServiceKey("default", "Web")
    base = with_service(big_catalog(5), headless(key, "10.3.0.1"), key, 1)
    table = Table(base, ZONE, 30)
    lower = ServiceKey("default", "web")
    changed = with_service(base, headless(lower, "10.3.0.2"), lower, 2)
    updated = table.update(changed)
    assert not updated.incremental
    assert_same(updated, Table(changed, ZONE, 30, serial=updated.serial), [])


def test_server_publishes_incrementally_and_keeps_the_serial():
    server = DnsServer(DnsSettings(listen="127.0.0.1:0"), outside=lambda *_: None)
    base = big_catalog(50)
    first = server.publish(base)
    assert not first.incremental  # from the empty, not-ready table: a full build
    key = ServiceKey("default", "s3")
    second = server.publish(with_service(base, headless(key, "10.4.0.1"), key, 2))
    assert second.incremental and server.table is second and second.serial == first.serial
    nxdomain = second.respond(query(("nosuch", "default", "svc", "cluster", "local"), 1))
    assert isinstance(nxdomain, bytes) and nxdomain[3] & 0xF == 3
    # The SOA serial in the negative answer is the one of the last full build.
    assert struct.pack(">I", first.serial) in nxdomain


def test_full_build_threshold_is_a_share_of_the_services(monkeypatch):
    monkeypatch.setattr(table_module, "FULL_BUILD_MIN", 1)
    base = big_catalog(9)
    table = Table(base, ZONE, 30)
    keys = list(base.services)
    changed = base
    for n, key in enumerate(keys[:3]):
        changed = with_service(changed, headless(key, f"10.6.0.{n + 1}"), key, 2)
    assert table.update(changed).incremental  # 3 of 9: a third
    key = keys[3]
    changed = with_service(changed, headless(key, "10.6.0.9"), key, 2)
    assert not table.update(changed).incremental  # 4 of 9


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=25), st.lists(st.integers(0, 30), max_size=25),
       st.sets(st.integers(0, 30)), st.booleans())
def test_changed_keys_agree_with_a_plain_comparison(before: list[int], after: list[int],
                                                    modified: set[int], copy_keys: bool):
    """Side by side while the orders agree, by key after: the same answer as comparing
    every key, whatever the order, insertions and removals."""
    def make(i: int, version: int) -> Service:
        key = ServiceKey("ns", f"s{i}")
        return Service(key, ServiceType.HEADLESS, ports=(Port("p", version),))

    old_objects = {i: make(i, 1) for i in before}
    old = {ServiceKey("ns", f"s{i}"): old_objects[i] for i in dict.fromkeys(before)}
    new = {}
    for i in dict.fromkeys(after):
        service = make(i, 2) if i in modified else old_objects.get(i) or make(i, 1)
        key = ServiceKey("ns", f"s{i}") if copy_keys or i not in old_objects else service.key
        new[key] = service
    expected = {key for key in {**old, **new} if old.get(key) != new.get(key)}
    found = changed_keys(MappingProxyType(old), MappingProxyType(new))
    assert sorted(found) == sorted(expected)
    assert len(found) == len(set(found))


def test_address_answers_encode_as_the_general_writer_does():
    """`encode`'s shortcut for A answers of the question's name writes what `_Writer` does."""
    from bridge.dns.records import A, Rcode, Record, Response
    question = ("WEB", "DEFAULT", "SVC", "CLUSTER", "LOCAL")
    for count in (1, 2, 5):
        response = Response(Rcode.NOERROR, tuple(Record(question, 30 + i, A(f"10.0.{i}.{i + 1}"))
                                                 for i in range(count)))
        fast = encode.encode(question, response)
        writer = encode.Writer(question, wire(question))
        ends = []
        for record in response.answer:
            writer.record(record)
            ends.append(len(writer.buf))
        assert fast.body == bytes(writer.buf)
        assert fast.ends == tuple(ends) and fast.counts == (count, 0, 0) and not fast.spots


def test_cow_maps_share_their_base_until_folded():
    base: CowMap[str, int] = CowMap((f"k{i}", i) for i in range(100))
    derived = base.derive()
    derived["k1"] = -1
    derived.pop("k2")
    derived["new"] = 7
    assert base.get("k1") == 1 and "k2" in base and "new" not in base and len(base) == 100, \
        "writes to a derived map must not show in the map it came from"
    assert derived.get("k1") == -1 and "k2" not in derived and derived["new"] == 7
    assert len(derived) == 100 and derived.get("k2", "absent") == "absent"
    assert derived.base is base.base, "the large dict is shared, not copied"
    assert dict(derived.items()) == {**{f"k{i}": i for i in range(100) if i != 2}, "k1": -1,
                                     "new": 7}
    again = derived.derive()
    again.pop("new")
    again["k2"] = 2
    assert "new" in derived and "k2" not in derived and len(again) == 100
    with mock.patch.object(cow_map, "FOLD_MIN", 0), mock.patch.object(cow_map, "FOLD_SHARE", 0):
        folded = again.derive()
    assert folded.base is not again.base and not folded.recent, "recent changes merged"
    assert folded == again and len(folded) == 100
    folded["k3"] = 33  # a folded map owns its base: written in place
    assert again.get("k3") == 3 and folded.base["k3"] == 33
    holder: CowMap[str, None] = CowMap([("present", None)])
    assert "present" in holder and holder.derive().pop("present", "absent") is None, \
        "None is a value like any other"
    with pytest.raises(KeyError):
        holder["absent"]


@pytest.mark.parametrize("option", sorted(OPTIONS))
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(history=histories())
def test_shortcut_encodings_equal_the_general_writer(option: str, history: list[Catalog]):
    """`encode` writes the usual answers (addresses, one PTR, SRV with glue) directly: the
    same bytes as `_Writer`, for every response of every name of a catalog."""
    options = OPTIONS[option]
    table = Table(history[-1], ZONE, 30, **options)
    compared = 0
    for name in every_name(table):
        spelled = tuple(upper(label) for label in name)
        for zone in table._zones:
            answers, _ = table._answers(zone, spelled)
            if isinstance(answers, Answers):
                break
        else:
            continue
        question = wire(spelled)
        for response in (answers.default, *answers.by_type.values()):
            for ra in (False, True):
                assert encode.encode(spelled, response, question, ra=ra) == \
                    encode.encode_by_writer(spelled, question, response, ra), (name,
                                                                                    response)
                compared += 1
    assert compared or not every_name(table)
