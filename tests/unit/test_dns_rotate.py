"""Answers spread over instances (`dns.rotate`, CoreDNS `loadbalance`), without sockets.

A headless Service's A/AAAA records and its SRV records come in a rotating order chosen
by the query's ID, from precomputed bytes: every rotation holds the same record set, SRV
glue still points at the right targets, truncation keeps whole records, and the client's
spelling is kept.
"""

from __future__ import annotations

from types import MappingProxyType

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from bridge.catalog.model import Catalog, Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType
from bridge.dns.encode import MAX_TURNS
from bridge.dns.table import Table

K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP = Port("http", 80)
V4 = [f"10.1.0.{i}" for i in range(1, 6)]
V6 = [f"fd00::{i}" for i in range(1, 4)]
MANY = [f"10.2.{i // 250}.{i % 250 + 1}" for i in range(60)]


def _catalog() -> Catalog:
    services = [
        Service(ServiceKey("default", "web"), ServiceType.HEADLESS, ports=(HTTP,),
                instances=tuple(Instance(a, (HTTP,), K8S) for a in V4 + V6)),
        Service(ServiceKey("default", "many"), ServiceType.HEADLESS, ports=(HTTP,),
                instances=tuple(Instance(a, (HTTP,), K8S) for a in MANY)),
        Service(ServiceKey("default", "one"), ServiceType.HEADLESS, ports=(HTTP,),
                instances=(Instance("10.3.0.1", (HTTP,), K8S),)),
        Service(ServiceKey("default", "api"), ServiceType.CLUSTER_IP, ports=(HTTP,),
                cluster_ips=("10.96.0.5",)),
    ]
    return Catalog(MappingProxyType({s.key: s for s in services}), ready=True, generation=3)


ROTATING = Table(_catalog(), "cluster.local", 30, rotate=True)
FIXED = Table(_catalog(), "cluster.local", 30, rotate=False)


def ask(table: Table, name: str, qtype: str = "A", qid: int = 0, **kwargs) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, id=qid, **kwargs)
    reply = table.respond(query.to_wire(), False)
    assert isinstance(reply, bytes), reply
    return dns.message.from_wire(reply)


def order(reply: dns.message.Message, rdtype: int) -> list[str]:
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == rdtype for rd in rrset]


@pytest.mark.parametrize(("qtype", "addresses"), [("A", V4), ("AAAA", V6)])
def test_addresses_rotate_through_every_instance(qtype, addresses):
    rdtype = dns.rdatatype.from_text(qtype)
    orders = [order(ask(ROTATING, "web.default.svc.cluster.local.", qtype, qid), rdtype)
              for qid in range(len(addresses))]
    base = orders[0]
    assert sorted(base) == sorted(addresses)
    for qid, got in enumerate(orders):
        assert got == base[qid:] + base[:qid], f"ID {qid}: rotation {qid} of {base}, got {got}"
    assert {got[0] for got in orders} == set(addresses), "each instance comes first once"


def test_rotation_off_keeps_one_order():
    orders = {tuple(order(ask(FIXED, "web.default.svc.cluster.local.", "A", qid), 1))
              for qid in range(10)}
    assert len(orders) == 1


def _glue(reply: dns.message.Message) -> set[tuple[str, str]]:
    return {(rrset.name.to_text(), rd.to_text()) for rrset in reply.additional for rd in rrset}


def test_srv_rotates_and_its_glue_still_names_the_right_addresses():
    name = "_http._tcp.web.default.svc.cluster.local."
    fixed = ask(FIXED, name, "SRV", use_edns=0, payload=4096)
    records = sorted(rd.to_text() for rrset in fixed.answer for rd in rrset)
    firsts = set()
    for qid in range(2 * MAX_TURNS):
        reply = ask(ROTATING, name, "SRV", qid, use_edns=0, payload=4096)
        srv = [rd for rrset in reply.answer for rd in rrset]
        assert sorted(rd.to_text() for rd in srv) == records, f"ID {qid}: the same records"
        assert _glue(reply) == _glue(fixed), f"ID {qid}: each target's glue, as unrotated"
        firsts.add(srv[0].target.to_text())
    assert len(firsts) == MAX_TURNS, f"{MAX_TURNS} rotations spread over the targets: {firsts}"


def test_rotation_keeps_the_clients_spelling():
    """Checklist 47: the zone inside SRV targets is written as the client spelled it."""
    name = "_HTTP._tcp.WEB.Default.svc.Cluster.Local."
    fixed = ask(FIXED, name, "SRV", use_edns=0, payload=4096)
    want = sorted(rd.target.to_text() for rrset in fixed.answer for rd in rrset)
    assert all(t.endswith(".Cluster.Local.") for t in want), want
    for qid in range(MAX_TURNS):
        reply = ask(ROTATING, name, "SRV", qid, use_edns=0, payload=4096)
        assert sorted(rd.target.to_text() for rrset in reply.answer for rd in rrset) == want
        assert _glue(reply) == _glue(fixed)


@pytest.mark.parametrize("qid", [0, 1, 17, 59, 60, 65535])
def test_truncated_rotations_keep_whole_records(qid):
    reply = ask(ROTATING, "many.default.svc.cluster.local.", "A", qid)  # no EDNS: 512 bytes
    assert reply.flags & dns.flags.TC
    got = order(reply, 1)
    full = order(ask(ROTATING, "many.default.svc.cluster.local.", "A", qid, use_edns=0,
                     payload=4096), 1)
    assert len(full) == len(MANY) and sorted(full) == sorted(MANY)
    assert got and got == full[:len(got)], "a prefix of the same rotation, whole records"
    base = order(ask(ROTATING, "many.default.svc.cluster.local.", "A", 0, use_edns=0,
                     payload=4096), 1)
    assert full == base[qid % 60:] + base[:qid % 60], "rotation ID modulo the record count"


def test_single_answers_and_cluster_ips_do_not_change():
    for name in ("one.default.svc.cluster.local.", "api.default.svc.cluster.local."):
        assert {tuple(order(ask(ROTATING, name, "A", qid), 1)) for qid in range(4)} == \
            {tuple(order(ask(FIXED, name, "A", 0), 1))}


def test_rotation_survives_an_incremental_update():
    catalog = _catalog()
    services = dict(catalog.services)
    key = ServiceKey("default", "web")
    services[key] = Service(key, ServiceType.HEADLESS, ports=(HTTP,),
                            instances=tuple(Instance(a, (HTTP,), K8S) for a in V4[:3]))
    updated = ROTATING.update(Catalog(MappingProxyType(services), ready=True, generation=4))
    assert updated.incremental
    firsts = {order(ask(updated, "web.default.svc.cluster.local.", "A", qid), 1)[0]
              for qid in range(3)}
    assert firsts == set(V4[:3])


def test_srv_rotations_moved_as_bytes_equal_the_rotated_answer_encoded():
    """The SRV rotations are made by moving the records' bytes and the glue's pointers;
    each must be byte for byte what encoding the rotated answer gives."""
    from bridge.dns.answer import Answerer
    from bridge.dns.encode import Turns, _encode, encode, wire

    mixed = Service(ServiceKey("default", "mixed"), ServiceType.HEADLESS, ports=(HTTP,),
                    instances=(Instance("10.9.0.1", (HTTP,), K8S, hostname="a"),
                               Instance("fd00::9", (HTTP,), K8S),
                               Instance("10.9.0.3", (HTTP,), K8S, hostname="longer-name"),
                               Instance("10.9.0.4", (HTTP,), K8S)))
    answerer = Answerer(Catalog(MappingProxyType({mixed.key: mixed}), ready=True), "cluster.local", 30)
    for spelled in (("_http", "_tcp", "mixed", "default", "svc", "cluster", "local"),
                    ("_HTTP", "_tcp", "MIXED", "default", "svc", "Cluster", "LOCAL")):
        response = answerer.answer(spelled, 33)
        question = wire(spelled)
        entry = encode(spelled, response, question, rotate=True)
        turns = entry.spots
        assert type(turns) is Turns and len(turns.variants) == 4
        for k in range(4):
            variant = turns.turn(entry, k)[0]
            turned = response._replace(answer=response.answer[k:] + response.answer[:k])
            assert variant == _encode(spelled, turned, question, False), f"rotation {k}"
