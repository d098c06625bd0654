"""Precomputed wire answers and the packet handler (bridge.dns.table), without sockets.

The central test compares the fast path (hand-scanned header, precomputed bytes, patched
ID/flags/case) with the slow path (dnslib parse, answer.py, dnslib encode) for every name
of a sample catalog, in several spellings, qtypes and EDNS variants. dnspython, which
neither path uses, decodes both. Numbers are the rules of
docs/dns-conformance.md.
"""

from __future__ import annotations

import random
import struct
from types import MappingProxyType

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
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
from bridge.dns.consul_domain import ConsulOptions
from bridge.dns.query import text
from bridge.dns.records import NOT_OURS, NotOurs
from bridge.dns.respond import CHASE
from bridge.dns.table import Table

K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP, HTTPS = Port("http", 80), Port("https", 443)
Z = ".default.svc.cluster.local."


def pod(address: str, *ports: Port, ready: bool = True, hostname: str = "") -> Instance:
    return Instance(address, ports, K8S, ready=ready, hostname=hostname)


def catalog(*services: Service, ready: bool = True) -> Catalog:
    return Catalog(MappingProxyType({s.key: s for s in services}), ready=ready, generation=9)


SAMPLE = catalog(
    Service(ServiceKey("default", "php-apache-svc"), ServiceType.HEADLESS, ports=(HTTP, HTTPS),
            instances=(pod("10.28.5.15", HTTP, HTTPS), pod("10.28.3.13", HTTP, HTTPS),
                       pod("10.28.9.9", HTTP, ready=False))),
    Service(ServiceKey("default", "web"), ServiceType.HEADLESS, ports=(HTTP,),
            instances=(pod("10.1.0.10", HTTP, hostname="web-0"), pod("fd00::1", HTTP),
                       pod("10.1.0.12", HTTP, hostname="dup"),
                       pod("10.1.0.13", HTTP, hostname="dup"))),
    Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP, ports=(HTTPS,),
            cluster_ips=("10.96.0.1",), instances=(pod("192.168.1.10", HTTPS),)),
    Service(ServiceKey("default", "dual"), ServiceType.CLUSTER_IP, ports=(HTTP,),
            cluster_ips=("10.96.0.20", "fd00:10::20")),
    Service(ServiceKey("default", "ext"), ServiceType.EXTERNAL_NAME,
            external_name="www.example.com"),
    Service(ServiceKey("default", "ext-in"), ServiceType.EXTERNAL_NAME,
            external_name="kubernetes.default.svc.cluster.local"),
    Service(ServiceKey("prod", "api"), ServiceType.CLUSTER_IP, ports=(HTTP,),
            cluster_ips=("10.96.1.1",)),
)
TABLE = Table(SAMPLE, "cluster.local", 30, ns_addresses=["10.0.0.53"])


def query(name: str, qtype: str | int = "A", *, qid: int = 4321, edns: int | None = None,
          payload: int = 4096, do: bool = False, rd: bool = True, cd: bool = False,
          rdclass: str = "IN") -> bytes:
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    # dnspython turns EDNS on whenever a payload or DO is given: pass them only with EDNS.
    extra = {} if edns is None else {"payload": payload, "want_dnssec": do}
    message = dns.message.make_query(name, qtype, rdclass=rdclass, use_edns=edns, id=qid,
                                     flags=flags, **extra)
    return message.to_wire()


def parse(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire, one_rr_per_rrset=True)


def meaning(wire: bytes | NotOurs | None) -> object:
    """Everything a client can observe, names in their exact spelling, order kept."""
    if not isinstance(wire, bytes):
        return wire
    m = parse(wire)

    def section(rrsets: list) -> list[tuple]:
        return [(r.name.to_text(), r.ttl, r.rdclass, r.rdtype, [d.to_text() for d in r])
                for r in rrsets]

    return (m.id, int(m.flags), m.rcode(), [q.to_text() for q in m.question],
            section(m.answer), section(m.authority), section(m.additional),
            m.edns, m.payload if m.edns >= 0 else None, int(m.ednsflags))


def forbid_slow_path(table: Table):
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a simple query must not need the slow path")
    table.respond_slow = refuse  # type: ignore[method-assign]


def allow_slow_path(table: Table) -> None:
    del table.respond_slow


def spellings(name: str, rng: random.Random) -> list[str]:
    mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
    return [name, name.upper(), mixed]


QTYPES = ["A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "SOA", "NS", "MX", "ANY", "HTTPS", "CAA",
          "AXFR", "IXFR", 65280]
ABSENT = ["nosuch" + Z, "x" * 40 + Z, "a.b.c.web" + Z, "foo.cluster.local.", "*" + Z,
          "svc0.nons.svc.cluster.local.", "10-1-0-99.web" + Z, "_x._tcp.web" + Z,
          "php-apache-svc.default.svc.cluster.local.default.svc.cluster.local.",
          "www.example.com.", "4.3.2.1.in-addr.arpa.", "example.", "."]


def test_fast_path_agrees_with_slow_path_for_every_name():
    rng = random.Random(1234)
    names = [text(n) for n in TABLE.answerer.names()] + ABSENT
    assert len(names) > 40
    compared = 0
    for name in names:
        for spelled in spellings(name, rng):
            for qtype in QTYPES:
                for edns, do, rd, cd in ((None, False, True, False), (0, True, False, True)):
                    packet = query(spelled, qtype, qid=rng.randrange(65536), edns=edns,
                                   do=do, rd=rd, cd=cd)
                    forbid_slow_path(TABLE)
                    try:
                        fast = TABLE.respond(packet, tcp=True)
                    finally:
                        allow_slow_path(TABLE)
                    slow = TABLE.respond_slow(packet, tcp=True)
                    assert meaning(fast) == meaning(slow), \
                        f"fast and slow paths disagree for {spelled} {qtype} edns={edns}"
                    compared += 1
    assert compared > 5000


def test_every_precomputed_entry_is_reachable_by_its_key():
    for key in TABLE.entries:
        name_end = key.index(b"\x00") + 1
        qtype = int.from_bytes(key[name_end:name_end + 2], "big")
        packet = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + key
        reply = TABLE.respond(packet)
        assert isinstance(reply, bytes), (key, qtype)
        assert reply[:2] == b"\x00\x07"


# --- header handling --------------------------------------------------------------------------

def test_reply_copies_id_rd_cd_and_sets_qr_aa_not_ra():
    for rd, cd in ((True, False), (False, False), (True, True), (False, True)):
        reply = parse(TABLE.respond(query("web" + Z, qid=0xBEEF, rd=rd, cd=cd)))
        assert reply.id == 0xBEEF
        assert bool(reply.flags & dns.flags.RD) is rd
        assert bool(reply.flags & dns.flags.CD) is cd
        assert reply.flags & dns.flags.QR and reply.flags & dns.flags.AA
        assert not reply.flags & dns.flags.RA, "no recursion offered (yet)"


def test_a_answer_exactly_the_ready_addresses_2_13():
    reply = parse(TABLE.respond(query("php-apache-svc" + Z)))
    assert reply.rcode() == dns.rcode.NOERROR
    assert [(r.ttl, r[0].to_text()) for r in reply.answer] == [
        (30, "10.28.5.15"), (30, "10.28.3.13")]


def test_case_of_the_question_comes_back_46_47():
    reply = parse(TABLE.respond(query("PhP-ApAcHe-SvC.DeFault.svc.cluster.local")))
    assert {r.name.to_text() for r in reply.answer} == {"PhP-ApAcHe-SvC.DeFault.svc.cluster.local."}
    assert reply.question[0].name.to_text() == "PhP-ApAcHe-SvC.DeFault.svc.cluster.local."
    srv = parse(TABLE.respond(query("_HTTP._tcp.WEB.default.svc.CLUSTER.Local", "SRV")))
    assert srv.answer[0][0].target.to_text() == "web-0.web.default.svc.CLUSTER.Local."
    assert srv.additional[0].name.to_text() == "web-0.web.default.svc.CLUSTER.Local."
    # The stored bytes stay lower case: the next lower-case client is not affected.
    plain = parse(TABLE.respond(query("_http._tcp.web.default.svc.cluster.local", "SRV")))
    assert plain.answer[0][0].target.to_text() == "web-0.web.default.svc.cluster.local."


def test_nxdomain_and_nodata_carry_the_zone_soa_45():
    for name, rcode in (("nosuch" + Z, dns.rcode.NXDOMAIN), ("web" + Z, dns.rcode.NOERROR),
                        ("y" * 60 + ".z" + Z, dns.rcode.NXDOMAIN)):
        qtype = "TXT" if rcode == dns.rcode.NOERROR else "A"
        reply = parse(TABLE.respond(query(name.upper(), qtype)))
        assert reply.rcode() == rcode and not reply.answer
        assert [r.name.to_text() for r in reply.authority] == ["CLUSTER.LOCAL."]
        soa = reply.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 30 and soa[0].minimum == 30
        assert soa[0].mname.to_text() == "ns.dns.CLUSTER.LOCAL."
        assert reply.flags & dns.flags.AA


def test_absent_names_do_not_grow_the_table():
    before = len(TABLE.entries), len(TABLE.defaults)
    rng = random.Random(5)
    for _ in range(500):
        name = "".join(rng.choice("abcdef-") for _ in range(rng.randrange(1, 60)))
        reply = TABLE.respond(query(f"{name}.default.svc.cluster.local", "A"))
        assert parse(reply).rcode() == dns.rcode.NXDOMAIN
    assert (len(TABLE.entries), len(TABLE.defaults)) == before
    assert len(TABLE._negatives) <= 254


def test_not_ready_catalog_answers_servfail_for_absent_names_53():
    table = Table(catalog(*SAMPLE.services.values(), ready=False), "cluster.local", 30)
    reply = parse(table.respond(query("nosuch" + Z)))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    assert parse(Table(Catalog(), "cluster.local", 30).respond(query("web" + Z))).rcode() == \
        dns.rcode.SERVFAIL


# --- EDNS ----------------------------------------------------------------------------------------

def test_edns_opt_is_echoed_with_our_payload_and_do_55():
    reply = parse(TABLE.respond(query("web" + Z, edns=0, payload=4096, do=True)))
    assert reply.edns == 0 and reply.payload == 1232
    assert reply.ednsflags & dns.flags.DO
    plain = parse(TABLE.respond(query("web" + Z, edns=0, payload=512)))
    assert plain.edns == 0 and not plain.ednsflags & dns.flags.DO
    assert parse(TABLE.respond(query("web" + Z))).edns == -1, "no OPT without one in the query"


def test_edns_options_are_accepted_and_dropped():
    message = dns.message.make_query("web" + Z, "A", use_edns=0, options=[
        dns.edns.GenericOption(10, b"\x01" * 8)])  # a client cookie, as dig sends
    reply = parse(TABLE.respond(message.to_wire()))
    assert reply.rcode() == dns.rcode.NOERROR and reply.edns == 0 and not reply.options


def test_edns_version_above_zero_is_badvers_55():
    reply = parse(TABLE.respond(query("web" + Z, edns=1)))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0 and not reply.answer


# --- truncation ------------------------------------------------------------------------------------

BIG = Table(catalog(Service(
    ServiceKey("default", "big"), ServiceType.HEADLESS, ports=(HTTP,),
    instances=tuple(pod(f"10.50.{i // 200}.{i % 200}", HTTP, hostname=f"big-{i}")
                    for i in range(300)))), "cluster.local", 30)


@pytest.mark.parametrize(("edns", "payload", "limit"), [
    (None, 0, 512), (0, 4096, 1232), (0, 800, 800), (0, 100, 512)])
def test_udp_replies_are_truncated_to_the_client_limit_with_tc_56(edns, payload, limit):
    for qtype, full in (("A", 300), ("SRV", 300)):
        packet = query("BIG" + Z, qtype, edns=edns, payload=payload or 1232)
        for reply_wire in (BIG.respond(packet), BIG.respond_slow(packet)):
            assert isinstance(reply_wire, bytes)
            assert len(reply_wire) <= limit, f"{qtype} reply of {len(reply_wire)} > {limit}"
            reply = parse(reply_wire)
            assert reply.flags & dns.flags.TC, "TC must be set when records were dropped"
            assert 0 < len(reply.answer) < full
            assert reply.edns == (-1 if edns is None else 0), "the OPT survives truncation"
            assert all(r.name.to_text() == "BIG" + Z for r in reply.answer)


def test_tcp_replies_are_complete_56():
    for qtype in ("A", "SRV"):
        reply = parse(BIG.respond(query("big" + Z, qtype), tcp=True))
        assert not reply.flags & dns.flags.TC
        assert len(reply.answer) == 300
    srv = parse(BIG.respond(query("big" + Z, "SRV"), tcp=True))
    assert len(srv.additional) == 300


def test_small_replies_are_not_truncated():
    reply = parse(TABLE.respond(query("php-apache-svc" + Z)))
    assert not reply.flags & dns.flags.TC


# --- the unusual ------------------------------------------------------------------------------------

def test_too_short_packets_and_responses_are_dropped():
    assert TABLE.respond(b"") is None
    assert TABLE.respond(b"\x00" * 11) is None
    response = bytearray(query("web" + Z))
    response[2] |= 0x80  # QR: a response; answering it could start a packet loop
    assert TABLE.respond(bytes(response)) is None


def test_unparseable_question_is_formerr_with_the_id():
    packet = query("web" + Z, qid=777)[:20]  # header fine, question cut short
    reply = parse(TABLE.respond(packet))
    assert reply.id == 777 and reply.rcode() == dns.rcode.FORMERR and not reply.question


def test_two_questions_are_formerr_and_none_is_servfail_54():
    one = query("web" + Z)
    two = one[:5] + b"\x02" + one[6:] + one[12:]
    assert parse(TABLE.respond(two)).rcode() == dns.rcode.FORMERR  # RFC 9619
    none = one[:5] + b"\x00" + one[6:12]
    assert parse(TABLE.respond(none)).rcode() == dns.rcode.SERVFAIL  # 54, as CoreDNS


def test_other_opcodes_are_notimp():
    packet = bytearray(query("web" + Z))
    packet[2] = (packet[2] & 0x87) | (4 << 3)  # NOTIFY
    assert parse(TABLE.respond(bytes(packet))).rcode() == dns.rcode.NOTIMP


def test_class_other_than_in_is_refused_54():
    for rdclass in ("CH", "HS", "ANY"):
        reply = parse(TABLE.respond(query("web" + Z, "A", rdclass=rdclass)))
        assert reply.rcode() == dns.rcode.REFUSED
        assert reply.question[0].rdclass == dns.rdataclass.from_text(rdclass)


def test_zone_transfers_are_refused_52():
    assert parse(TABLE.respond(query("cluster.local", "AXFR"), tcp=True)).rcode() == \
        dns.rcode.REFUSED


def test_outside_names_are_not_ours_then_refused_57():
    packet = query("www.example.com", "A", edns=0)
    assert TABLE.respond(packet) is NOT_OURS
    reply = parse(TABLE.refuse(packet))
    assert reply.rcode() == dns.rcode.REFUSED and reply.edns == 0
    assert reply.question[0].name.to_text() == "www.example.com."
    assert not reply.flags & dns.flags.AA


def test_compressed_question_goes_through_the_slow_path():
    plain = query("web" + Z, qid=9)
    # A question can only point back into the header: offset 4 holds a zero byte, so the
    # name is the root, which is not ours. A forward pointer is malformed: FORMERR.
    backward = plain[:12] + b"\xc0\x04" + plain[-4:]
    assert TABLE.respond(backward) is NOT_OURS
    assert parse(TABLE.refuse(backward)).rcode() == dns.rcode.REFUSED
    forward = plain[:12] + b"\xc0\x20" + plain[-4:]
    assert parse(TABLE.respond(forward)).rcode() == dns.rcode.FORMERR


def test_unencodable_catalog_names_are_skipped_and_reported():
    long_name = "s" * 64
    table = Table(catalog(
        Service(ServiceKey("default", long_name), ServiceType.CLUSTER_IP, ports=(HTTP,),
                cluster_ips=("10.96.5.5",)),
        Service(ServiceKey("default", "ok"), ServiceType.CLUSTER_IP, ports=(HTTP,),
                cluster_ips=("10.96.5.6",))), "cluster.local", 30)
    assert any(long_name in line for line in table.skipped)
    assert parse(table.respond(query("ok" + Z))).answer[0][0].to_text() == "10.96.5.6"


# --- fuzzing -------------------------------------------------------------------------------------------

def check_reply(reply: object) -> None:
    assert reply is None or reply is NOT_OURS or isinstance(reply, bytes)
    if isinstance(reply, bytes):
        parsed = dns.message.from_wire(reply)  # a well-formed message, whatever came in
        assert parsed.flags & dns.flags.QR


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700), st.booleans())
def test_arbitrary_bytes_never_raise(data, tcp):
    check_reply(TABLE.respond(data, tcp))


SEEDS = [query("web" + Z), query("_http._tcp.web" + Z, "SRV", edns=0),
         query("nosuch" + Z, edns=0, do=True), query("www.example.com"),
         query("15.5.28.10.in-addr.arpa", "PTR")]


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(SEEDS),
       st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=6),
       st.integers(0, 140), st.booleans())
def test_mutated_queries_never_raise(seed, flips, cut, tcp):
    packet = bytearray(seed)
    for at, value in flips:
        if at < len(packet):
            packet[at] = value
    check_reply(TABLE.respond(bytes(packet[:max(cut, 12)] if cut < len(packet) else packet),
                              tcp))


# --- forwarding, chasing, Consul, pods ----------------------------------------------------------

C1, C2 = Origin(OriginKind.CONSUL, "vm-1"), Origin(OriginKind.CONSUL, "vm-2")
WITH_CONSUL = catalog(
    *SAMPLE.services.values(),
    Service(ServiceKey("consul", "billing"), ServiceType.HEADLESS, ports=(Port("", 8080),),
            instances=tuple(Instance(f"192.0.2.{20 + i}", (Port("", 8080),),
                                     Origin(OriginKind.CONSUL, f"vm-{i}"), node_name=f"vm-{i}",
                                     tags=("v1",) if i % 2 else ("v2",))
                            for i in range(8))),
)
FULL = Table(WITH_CONSUL, "cluster.local", 30, ns_addresses=["10.0.0.53"], pods="insecure",
             consul=ConsulOptions("consul"), forwarding=True)


def sorted_meaning(wire: bytes | NotOurs | None) -> object:
    """`meaning` with each section as a sorted list: for answers served in random order."""
    value = meaning(wire)
    if not isinstance(value, tuple):
        return value
    parts = list(value)
    for i in (4, 5, 6):
        parts[i] = sorted(parts[i], key=repr)
    return tuple(parts)


def test_fast_path_agrees_with_slow_path_with_consul_pods_and_forwarding():
    rng = random.Random(99)
    names = [text(n) for n in FULL.answerer.names()] + [text(n) for n in FULL.consul.names()]
    names += [*ABSENT, "10-1-2-3.default.pod.cluster.local.", "fd00--1.prod.pod.cluster.local.",
              "blah.default.pod.cluster.local.", "nosuch.service.consul.", "a.b.consul.",
              "CONSUL."]
    compared = 0
    for name in names:
        for spelled in spellings(name, rng)[1:]:
            for qtype in ("A", "AAAA", "SRV", "ANY", "SOA", "TXT", "NS"):
                packet = query(spelled, qtype, qid=rng.randrange(65536), edns=0)
                fast = FULL.respond(packet, tcp=True)
                if fast is CHASE:
                    continue  # the server asks the upstream: see the chase tests
                slow = FULL.respond_slow(packet, tcp=True)
                assert sorted_meaning(fast) == sorted_meaning(slow), \
                    f"fast and slow paths disagree for {spelled} {qtype}"
                compared += 1
    assert compared > 1000


def test_forwarding_tables_offer_recursion():
    for name in ("web" + Z, "nosuch" + Z):
        assert not parse(TABLE.respond(query(name))).flags & dns.flags.RA, name
        assert parse(FULL.respond(query(name))).flags & dns.flags.RA, name
    assert parse(FULL.respond(query("billing.service.consul"))).flags & dns.flags.RA
    assert parse(FULL.refuse(query("www.example.com"))).flags & dns.flags.RA
    assert parse(FULL.servfail(query("www.example.com"))).rcode() == dns.rcode.SERVFAIL


def test_externalname_outside_is_chased_only_when_forwarding_27():
    assert FULL.respond(query("ext" + Z)) is CHASE
    assert FULL.respond(query("EXT" + Z, "AAAA", edns=0)) is CHASE
    cname = parse(FULL.respond(query("ext" + Z, "CNAME")))
    assert [r.to_text() for r in cname.answer] == [f"ext{Z} 30 IN CNAME www.example.com."]
    plain = parse(TABLE.respond(query("ext" + Z)))
    assert [r.to_text() for r in plain.answer] == [f"ext{Z} 30 IN CNAME www.example.com."], \
        "without an upstream: the CNAME alone, for the client to follow"
    inside = FULL.respond(query("ext-in" + Z))
    assert isinstance(inside, bytes), "an in-zone target is answered locally"


def upstream_reply(chase: bytes, *records: str, rcode: int = dns.rcode.NOERROR,
                   tc: bool = False) -> bytes:
    message = dns.message.make_response(dns.message.from_wire(chase))
    for record in records:
        message.answer.append(dns.rrset.from_text(*record.split(None, 4)))
    message.set_rcode(rcode)
    if tc:
        message.flags |= dns.flags.TC
    return message.to_wire()


def test_chase_query_and_reply_27_28():
    packet = query("Ext" + Z, "A", qid=77, edns=0, do=True, cd=True)
    chase = FULL.chase_query(packet)
    asked = dns.message.from_wire(chase)
    assert asked.question[0].to_text() == "www.example.com. IN A"
    assert asked.flags & dns.flags.RD and asked.flags & dns.flags.CD
    assert asked.edns == 0 and asked.payload == 1232 and asked.ednsflags & dns.flags.DO
    reply = parse(FULL.chase_reply(packet, False, upstream_reply(
        chase, "www.example.com. 300 IN A 192.0.2.53")))
    assert reply.id == 77 and reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
    assert [r.to_text() for r in reply.answer] == [
        f"Ext{Z} 30 IN CNAME www.example.com.", "www.example.com. 300 IN A 192.0.2.53"]
    assert not reply.flags & dns.flags.TC
    truncated = parse(FULL.chase_reply(packet, False, upstream_reply(chase, tc=True)))
    assert truncated.flags & dns.flags.TC, "28: TC copied from the upstream"
    missing = parse(FULL.chase_reply(packet, False, upstream_reply(chase,
                                                                   rcode=dns.rcode.NXDOMAIN)))
    assert missing.rcode() == dns.rcode.NXDOMAIN and len(missing.answer) == 1
    for failed in (None, upstream_reply(chase, rcode=dns.rcode.REFUSED), b"\x00garbage"):
        assert parse(FULL.chase_reply(packet, False, failed)).rcode() == dns.rcode.SERVFAIL
    assert FULL.chase_query(query("web" + Z)) is None, "not an ExternalName"


def test_chase_reply_is_cut_to_the_client_size_56():
    packet = query("ext" + Z, "A")  # no EDNS: 512 bytes
    chase = FULL.chase_query(packet)
    many = [f"www.example.com. 300 IN A 198.51.100.{i}" for i in range(60)]
    reply_wire = FULL.chase_reply(packet, False, upstream_reply(chase, *many))
    assert len(reply_wire) <= 512 and parse(reply_wire).flags & dns.flags.TC
    full = parse(FULL.chase_reply(packet, True, upstream_reply(chase, *many)))
    assert len(full.answer) == 61, "the CNAME and all 60 records over TCP"


def test_consul_answers_are_shuffled_per_query_61():
    orders = set()
    for _ in range(40):
        reply = parse(FULL.respond(query("billing.service.consul")))
        got = [r[0].to_text() for r in reply.answer]
        assert sorted(got) == sorted(f"192.0.2.{20 + i}" for i in range(8))
        orders.add(tuple(got))
    assert len(orders) > 1


def test_shuffled_srv_keeps_case_and_glue_65():
    for _ in range(10):
        reply = parse(FULL.respond(query("_Billing._V1.Service.CONSUL", "SRV", edns=0)))
        targets = sorted(r[0].target.to_text() for r in reply.answer)
        assert targets == sorted(f"c00002{20 + i:02x}.addr.dc1.CONSUL." for i in (1, 3, 5, 7))
        assert sorted(r.name.to_text() for r in reply.additional) == targets
    plain = parse(FULL.respond(query("_billing._v1.service.consul", "SRV")))
    assert all(r[0].target.to_text().endswith(".dc1.consul.") for r in plain.answer)


def test_a_record_limit_picks_at_random_66():
    limited = Table(WITH_CONSUL, "cluster.local", 30,
                    consul=ConsulOptions("consul", a_record_limit=3))
    seen: set[str] = set()
    for _ in range(40):
        reply = parse(limited.respond(query("billing.service.consul")))
        assert len(reply.answer) == 3
        seen.update(r[0].to_text() for r in reply.answer)
    assert len(seen) == 8
    assert len(parse(limited.respond(query("billing.service.consul", "SRV"))).answer) == 8


def test_shuffled_answers_are_truncated_whole_56():
    big = Table(catalog(Service(
        ServiceKey("consul", "big"), ServiceType.HEADLESS,
        instances=tuple(Instance(f"192.0.2.{i}", (Port("", 80),), C1, node_name=f"n{i}")
                        for i in range(1, 100))), ready=True),
        "cluster.local", 30, consul=ConsulOptions("consul"))
    wire_reply = big.respond(query("big.service.consul", "SRV"))
    reply = parse(wire_reply)
    assert len(wire_reply) <= 512 and reply.flags & dns.flags.TC
    full = parse(big.respond(query("big.service.consul", "SRV"), tcp=True))
    assert len(full.answer) == 99 and not full.flags & dns.flags.TC


def test_pod_records_are_computed_once_and_bounded_50(monkeypatch):
    monkeypatch.setattr("bridge.dns.table.MAX_COMPUTED", 16)
    table = Table(SAMPLE, "cluster.local", 30, pods="insecure")
    for i in range(100):
        reply = parse(table.respond(query(f"10-9-0-{i}.DEFAULT.pod.cluster.local")))
        assert [r[0].to_text() for r in reply.answer] == [f"10.9.0.{i}"]
        assert reply.answer[0].name.to_text() == f"10-9-0-{i}.DEFAULT.pod.cluster.local."
    assert len(table._computed) <= 16
    assert parse(table.respond(query("10-9-0-1.nons.pod.cluster.local"))).rcode() == \
        dns.rcode.NXDOMAIN
    disabled = parse(TABLE.respond(query("10-9-0-1.default.pod.cluster.local")))
    assert disabled.rcode() == dns.rcode.NXDOMAIN and not TABLE._computed


def test_two_zones_each_with_their_own_negatives():
    consul_missing = parse(FULL.respond(query("nosuch.service.CONSUL")))
    assert consul_missing.rcode() == dns.rcode.NXDOMAIN
    assert consul_missing.authority[0].name.to_text() == "CONSUL."
    assert consul_missing.authority[0].ttl == 0
    cluster_missing = parse(FULL.respond(query("nosuch" + Z)))
    assert cluster_missing.authority[0].name.to_text() == "cluster.local."
    assert FULL.respond(query("billing.service.consul.example")) is NOT_OURS
    assert len(FULL._negatives) <= 2 * 254


def test_consul_domain_must_differ_from_the_cluster_zone():
    with pytest.raises(ValueError, match="Consul domain"):
        Table(SAMPLE, "cluster.local", 30, consul=ConsulOptions("Cluster.Local."))


def test_a_consul_domain_inside_the_cluster_zone_answers_its_own_names():
    nested = Table(WITH_CONSUL, "cluster.local", 30, consul=ConsulOptions("consul.cluster.local"))
    reply = parse(nested.respond(query("billing.service.consul.cluster.local")))
    assert len(reply.answer) == 8 and {r.ttl for r in reply.answer} == {0}
    missing = parse(nested.respond(query("nosuch.service.consul.cluster.local")))
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].name.to_text() == "consul.cluster.local."
    assert parse(nested.respond(query("web" + Z))).answer, "the cluster zone is unaffected"
    assert parse(nested.respond(query("nosuch" + Z))).authority[0].name.to_text() == \
        "cluster.local."
