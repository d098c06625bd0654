"""The DNS conformance rules of docs/dns-conformance.md, rule by rule, end to end.

Every case asks a running `DnsServer` with dnspython, once over UDP and once over TCP, and
is named `rule<N>-...` so that coverage can be audited: `test_every_rule_has_a_case`
fails if a rule from 1-59 or 61-66 has none. Rule 60 (autopath) is not implemented.

The catalog follows CoreDNS's test fixture (namespace `testns`), plus the demo's names and
a few Consul services. Names outside the zones go to a real upstream test server
(`dns_upstream.py`). TTL is the settings' default, 30; the Consul TTL is Consul's, 0.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import MappingProxyType

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

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
from bridge.dns.server import DnsServer
from tests.integration.dns_upstream import UpstreamServer

TIMEOUT = 5.0
K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP = Port("http", 80)
T = ".testns.svc.cluster.local."
D = ".default.svc.cluster.local."
SOA_CL = "cluster.local. 30 SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 30"
SOA_CONSUL = "consul. 0 SOA ns.consul. hostmaster.consul. 7 3600 600 86400 0"
RULES = set(range(1, 60)) | set(range(61, 67))  # 60 (autopath) is left out


def pod(address: str, *ports: Port, ready: bool = True, hostname: str = "",
        target: str = "") -> Instance:
    return Instance(address, ports, K8S, ready=ready, hostname=hostname, target=target)


def vm(address: str, node: str, port: int, *tags: str, ready: bool = True) -> Instance:
    return Instance(address, (Port("", port),), Origin(OriginKind.CONSUL, node), ready=ready,
                    node_name=node, tags=tags, consul_id=f"{node}-svc")


def svc(name: str, kind: ServiceType, *, ns: str = "testns", ports=(), ips=(), pods=(),
        external: str = "", publish_not_ready: bool = False) -> Service:
    return Service(ServiceKey(ns, name), kind, ports=tuple(ports), cluster_ips=tuple(ips),
                   external_name=external, instances=tuple(pods),
                   publish_not_ready=publish_not_ready)


CLUSTER, HEADLESS, EXTERNAL = (ServiceType.CLUSTER_IP, ServiceType.HEADLESS,
                               ServiceType.EXTERNAL_NAME)
SERVICES = [
    svc("svc1", CLUSTER, ports=[HTTP], ips=["10.0.0.1"],
        pods=[pod("172.0.0.1", HTTP, hostname="ep1a"),
              pod("172.0.0.9", HTTP, ready=False, hostname="ep1c")]),
    svc("svc6", CLUSTER, ports=[HTTP], ips=["1234:abcd::1"]),
    svc("svc-dual-stack", CLUSTER, ports=[HTTP], ips=["10.0.0.3", "10::3"]),
    svc("svcempty", CLUSTER, ports=[HTTP], ips=["10.0.0.5"]),
    svc("unnamed", CLUSTER, ports=[Port("", 53)], ips=["10.0.0.6"]),
    svc("udpsvc", CLUSTER, ports=[Port("dns", 53, "UDP")], ips=["10.0.0.7"]),
    svc("hdls1", HEADLESS, ports=[HTTP], pods=[
        pod("172.0.0.2", HTTP, target="hdls1-pod-a"),
        pod("172.0.0.3", HTTP, hostname="dup-name"),
        pod("172.0.0.4", HTTP, hostname="dup-name"),
        pod("5678:abcd::1", HTTP),
        pod("5678:abcd::2", HTTP, hostname="ep6"),
        pod("172.0.0.8", HTTP, ready=False, hostname="notready")]),
    svc("hdls2", HEADLESS, ports=[HTTP], pods=[pod("172.0.0.2", HTTP)]),
    svc("hdls-empty", HEADLESS, ports=[HTTP], pods=[pod("172.0.0.10", HTTP, ready=False)]),
    svc("hdlsprtls", HEADLESS, pods=[pod("172.0.0.20")]),
    svc("hdls-pnr", HEADLESS, ports=[HTTP], publish_not_ready=True,
        pods=[pod("172.0.0.30", HTTP, ready=False)]),
    svc("external", EXTERNAL, external="ext.interwebs.test"),
    svc("external-to-service", EXTERNAL, external="svc1.testns.svc.cluster.local"),
    svc("ext-big", EXTERNAL, external="big.example.test"),
    svc("big", HEADLESS, ports=[HTTP],
        pods=[pod(f"10.60.{i // 200}.{i % 200}", HTTP) for i in range(120)]),
    svc("php-apache-svc", HEADLESS, ns="default", ports=[HTTP, Port("https", 443)],
        pods=[pod("10.28.5.15", HTTP, Port("https", 443)),
              pod("10.28.3.13", HTTP, Port("https", 443))]),
    svc("kubernetes", CLUSTER, ns="default", ports=[Port("https", 443)], ips=["10.96.0.1"]),
    svc("billing", HEADLESS, ns="consul", ports=[Port("", 8080)], pods=[
        vm("192.0.2.21", "vm-1", 8080, "v1", "primary"),
        vm("192.0.2.22", "vm-2", 8080, "v2"),
        vm("2001:db8::24", "vm-4", 8080, "v2"),
        vm("192.0.2.23", "vm-3", 8080, "v1", ready=False)]),  # a critical check
    svc("payments", HEADLESS, ns="consul", ports=[Port("", 9090)],
        pods=[vm("192.0.2.31", "vm-5", 9090, ready=False)]),
    svc("many", HEADLESS, ns="consul", ports=[Port("", 9000)],
        pods=[vm(f"192.0.2.{40 + i}", f"node-{i}", 9000) for i in range(10)]),
]


def catalog(ready: bool = True) -> Catalog:
    return Catalog(MappingProxyType({s.key: s for s in SERVICES}), ready=ready, generation=7)


# --- servers ----------------------------------------------------------------------------------

UPSTREAM_RECORDS = {
    "ext.interwebs.test.": ["300 A 192.0.2.53", "300 AAAA 2001:db8::53"],
    "www.example.test.": ["300 A 192.0.2.80"],
    "big.example.test.": [f"300 A 198.51.100.{i}" for i in range(100)],
    "4.3.2.1.in-addr.arpa.": ["300 PTR upstream.example.test."],
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(UPSTREAM_RECORDS) as server:
        yield server


@pytest.fixture(scope="module")
def upstream_without_tcp() -> Iterator[UpstreamServer]:
    with UpstreamServer(UPSTREAM_RECORDS, tcp=False) as server:
        yield server


@pytest.fixture(scope="module")
def servers(upstream, upstream_without_tcp) -> Iterator[dict[str, DnsServer]]:
    """Every server the cases name, all on 127.0.0.1 port 0."""

    def settings(**kwargs) -> DnsSettings:
        base = {"listen": "127.0.0.1:0", "resolv_conf": "", "ns_addresses": ("10.0.0.53",)}
        return DnsSettings(**{**base, **kwargs})

    made = {
        # pods insecure, the Consul domain, forwarding: what most cases ask.
        "main": DnsServer(settings(pods="insecure", consul_domain="consul",
                                   upstreams=(upstream.address,))),
        "no-upstream": DnsServer(settings()),
        "pods-disabled": DnsServer(settings()),
        "pods-verified": DnsServer(settings(), pods="verified"),
        "unsynced": DnsServer(settings()),
        "ignore-empty": DnsServer(settings(), ignore_empty_service=True),
        "a-record-limit": DnsServer(settings(consul_domain="consul"), consul_a_record_limit=3),
        "upstream-without-tcp": DnsServer(settings(upstreams=(upstream_without_tcp.address,))),
    }
    for name, server in made.items():
        server.publish(catalog(ready=name != "unsynced"))
        server.start()
    yield made
    for server in made.values():
        server.stop()


# --- asking -----------------------------------------------------------------------------------

@dataclass
class Ask:
    """One server over one transport, plus the upstream, for a case's checks."""

    server: DnsServer
    transport: str
    upstream: UpstreamServer
    upstream_without_tcp: UpstreamServer
    servers: dict[str, DnsServer]

    def __call__(self, name: str, qtype: str = "A", *, server: str | None = None,
                 **kwargs) -> dns.message.Message:
        target = self.servers[server] if server else self.server
        kwargs.setdefault("use_edns", 0)
        if kwargs["use_edns"] is None:
            kwargs.pop("use_edns")
        else:
            kwargs.setdefault("payload", 1232)
        query = dns.message.make_query(name, qtype, **kwargs)
        host, port = target.addresses[0]
        if self.transport == "udp":
            return dns.query.udp(query, host, port=port, timeout=TIMEOUT)
        return dns.query.tcp(query, host, port=port, timeout=TIMEOUT)

    def raw(self, packet: bytes) -> bytes:
        """Send raw bytes, return the raw reply."""
        host, port = self.server.addresses[0]
        if self.transport == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.sendto(packet, (host, port))
                return sock.recv(65535)
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            sock.sendall(struct.pack(">H", len(packet)) + packet)
            size = struct.unpack(">H", _exactly(sock, 2))[0]
            return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def lines(section: list) -> list[str]:
    """Records as 'owner ttl TYPE rdata', owner spelled as received."""
    return [f"{rrset.name.to_text()} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} "
            f"{rd.to_text()}" for rrset in section for rd in rrset]


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]


# --- the cases ------------------------------------------------------------------------------------

Check = Callable[[Ask], None]


@dataclass
class Case:
    rule: int
    what: str
    qname: str = ""
    qtype: str = "A"
    rcode: str = "NOERROR"
    answer: list[str] | None = None  # compared as a set unless `ordered`
    ordered: bool = False
    additional: list[str] | None = None  # without our OPT record
    authority: list[str] | None = None
    aa: bool | None = True
    server: str = "main"
    query: dict = field(default_factory=dict)
    check: Check | None = None

    @property
    def id(self) -> str:
        return f"rule{self.rule}-{self.what}"


def nx(rule: int, what: str, qname: str, qtype: str = "A", soa: str = SOA_CL, **kw) -> Case:
    return Case(rule, what, qname, qtype, "NXDOMAIN", [], authority=[soa], **kw)


def nodata(rule: int, what: str, qname: str, qtype: str = "A", soa: str = SOA_CL,
           **kw) -> Case:
    return Case(rule, what, qname, qtype, "NOERROR", [], authority=[soa], **kw)


def run(case: Case, ask: Ask) -> None:
    if case.check is not None:
        case.check(ask)
        if not case.qname:
            return
    reply = ask(case.qname, case.qtype, **case.query)
    assert dns.rcode.to_text(reply.rcode()) == case.rcode, reply.to_text()
    if case.aa is not None:
        assert bool(reply.flags & dns.flags.AA) is case.aa, reply.to_text()
    assert not reply.flags & dns.flags.TC, reply.to_text()
    if case.answer is not None:
        got = lines(reply.answer)
        assert (got if case.ordered else sorted(got)) == \
            (case.answer if case.ordered else sorted(case.answer)), reply.to_text()
    if case.additional is not None:
        assert sorted(lines(reply.additional)) == sorted(case.additional), reply.to_text()
    if case.authority is not None:
        assert lines(reply.authority) == case.authority, reply.to_text()


# Custom checks, for rules that need more than one question or a look at the bytes.

def check_ptr_of_not_ready_endpoint_is_not_ours_23(ask: Ask) -> None:
    before = ask.upstream.seen("8.0.0.172.in-addr.arpa.")
    reply = ask("8.0.0.172.in-addr.arpa.", "PTR")
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer, reply.to_text()
    assert ask.upstream.seen("8.0.0.172.in-addr.arpa.") == before + 1, \
        "an address with no published endpoint is not ours: it falls through upstream"


def check_external_name_out_of_zone_via_upstream_27(ask: Ask) -> None:
    for qtype, record in (("A", "192.0.2.53"), ("AAAA", "2001:db8::53")):
        reply = ask("external" + T, qtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert lines(reply.answer) == [
            f"external{T} 30 CNAME ext.interwebs.test.",
            f"ext.interwebs.test. 300 {qtype} {record}"], reply.to_text()


def check_chased_truncation_is_copied_28(ask: Ask) -> None:
    plain = ask("ext-big" + T, use_edns=None)  # 512 bytes at most over UDP
    cname = f"ext-big{T} 30 CNAME big.example.test."
    assert lines(plain.answer)[0] == cname
    if ask.transport == "udp":
        assert plain.flags & dns.flags.TC, "101 records do not fit in 512 bytes"
    else:
        assert not plain.flags & dns.flags.TC
        assert len(lines(plain.answer)) == 101, "TCP gets the CNAME and all 100 A records"
    # An upstream whose reply stays truncated (its TCP is down): TC reaches the client.
    copied = ask("ext-big" + T, server="upstream-without-tcp")
    assert copied.flags & dns.flags.TC, copied.to_text()
    assert lines(copied.answer)[0] == cname


def check_unknown_reverse_is_forwarded_33(ask: Ask) -> None:
    reply = ask("4.3.2.1.in-addr.arpa.", "PTR")
    assert lines(reply.answer) == ["4.3.2.1.in-addr.arpa. 300 PTR upstream.example.test."]
    refused = ask("4.3.2.1.in-addr.arpa.", "PTR", server="no-upstream")
    assert refused.rcode() == dns.rcode.REFUSED


def check_zone_transfers_refused_52(ask: Ask) -> None:
    for qtype in ("AXFR", "IXFR"):
        packet = dns.message.make_query("cluster.local.", qtype).to_wire()
        reply = dns.message.from_wire(ask.raw(packet))
        assert reply.rcode() == dns.rcode.REFUSED, qtype


def check_no_question_is_servfail_54(ask: Ask) -> None:
    packet = struct.pack(">HHHHHH", 0x5454, 0x0100, 0, 0, 0, 0)
    reply = dns.message.from_wire(ask.raw(packet))
    assert reply.id == 0x5454 and reply.rcode() == dns.rcode.SERVFAIL


def check_edns_55(ask: Ask) -> None:
    reply = ask("svc1" + T, payload=4096, want_dnssec=True)
    assert reply.edns == 0 and reply.payload == 1232, "our payload size in the OPT"
    assert reply.ednsflags & dns.flags.DO, "DO echoed"
    assert ask("svc1" + T, use_edns=None).edns == -1, "no OPT without one in the query"
    badvers = ask("svc1" + T, use_edns=1)
    assert badvers.rcode() == dns.rcode.BADVERS and badvers.edns == 0


def check_truncation_56(ask: Ask) -> None:
    reply = ask("big" + T, use_edns=None)
    if ask.transport == "udp":
        assert reply.flags & dns.flags.TC and 0 < len(addresses(reply)) < 120
        assert len(reply.to_wire()) <= 512
        sized = ask("big" + T, "SRV", payload=4096)
        assert sized.flags & dns.flags.TC and len(sized.to_wire()) <= 1232, \
            "cut at min(client's size, ours)"
    else:
        assert not reply.flags & dns.flags.TC and len(addresses(reply)) == 120


def check_forwarded_untouched_57(ask: Ask) -> None:
    query = dns.message.make_query("www.example.test.", "A", id=0x5757)
    reply_wire = ask.raw(query.to_wire())
    sent = ask.upstream.last_reply("www.example.test.")
    assert reply_wire[:2] == b"\x57\x57", "the client's ID"
    assert reply_wire[2:] == sent[2:], "everything else exactly as the upstream sent it"
    reply = dns.message.from_wire(reply_wire)
    assert lines(reply.answer) == ["www.example.test. 300 A 192.0.2.80"]
    assert not reply.flags & dns.flags.AA
    refused = ask("www.example.test.", server="no-upstream")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.AA


SEARCH_EXPANSIONS = [
    "svc1.testns.svc.cluster.local.testns.svc.cluster.local.",
    "svc1.testns.svc.cluster.local.svc.cluster.local.",
    "svc1.testns.svc.cluster.local.cluster.local.",
    "api.example.test.testns.svc.cluster.local.",
    "api.example.test.svc.cluster.local.",
    "api.example.test.cluster.local.",
    "x.y.svc.cluster.local.",
]


def check_search_expansions_never_leave_58(ask: Ask) -> None:
    for name in SEARCH_EXPANSIONS:
        for qtype in ("A", "AAAA"):
            reply = ask(name, qtype)
            assert reply.rcode() == dns.rcode.NXDOMAIN, f"{name} {qtype}: {reply.to_text()}"
            assert lines(reply.authority) == [SOA_CL] and reply.flags & dns.flags.AA
        assert ask.upstream.seen(name) == 0, f"{name} must never be forwarded"


def check_consul_random_order_61(ask: Ask) -> None:
    orders = set()
    for _ in range(30):
        reply = ask("many.service.consul.")
        got = addresses(reply)
        assert sorted(got) == sorted(f"192.0.2.{40 + i}" for i in range(10))
        assert {rrset.ttl for rrset in reply.answer} == {0}
        orders.add(tuple(got))
    assert len(orders) > 1, "answers come in random order"


def check_a_record_limit_66(ask: Ask) -> None:
    seen: set[str] = set()
    for _ in range(30):
        got = addresses(ask("many.service.consul.", server="a-record-limit"))
        assert len(got) == 3, got
        seen.update(got)
    assert len(seen) > 3, "picked at random from the whole healthy set"
    srv = ask("many.service.consul.", "SRV", server="a-record-limit")
    assert len(srv.answer[0]) == 10, "SRV answers are never limited"


CASES = [
    Case(1, "dns-version", "dns-version.cluster.local.", "TXT",
         answer=['dns-version.cluster.local. 28800 TXT "1.1.0"']),
    Case(2, "clusterip-a", "svc1" + T, answer=[f"svc1{T} 30 A 10.0.0.1"]),
    Case(3, "clusterip-aaaa", "svc6" + T, "AAAA", answer=[f"svc6{T} 30 AAAA 1234:abcd::1"]),
    Case(4, "dual-stack-a", "svc-dual-stack" + T, answer=[f"svc-dual-stack{T} 30 A 10.0.0.3"]),
    Case(4, "dual-stack-aaaa", "svc-dual-stack" + T, "AAAA",
         answer=[f"svc-dual-stack{T} 30 AAAA 10::3"]),
    nodata(5, "v4-only-aaaa", "svc1" + T, "AAAA"),
    nodata(5, "v6-only-a", "svc6" + T, "A"),
    Case(6, "clusterip-without-endpoints", "svcempty" + T, answer=[f"svcempty{T} 30 A 10.0.0.5"]),
    nx(7, "ignore-empty-service", "svcempty" + T, server="ignore-empty"),
    Case(7, "ignore-empty-keeps-externalname", "external" + T, "CNAME", server="ignore-empty",
         answer=[f"external{T} 30 CNAME ext.interwebs.test."]),
    Case(8, "clusterip-srv", "_http._tcp.svc1" + T, "SRV",
         answer=[f"_http._tcp.svc1{T} 30 SRV 0 100 80 svc1{T}"],
         additional=[f"svc1{T} 30 A 10.0.0.1"]),
    Case(9, "port-case-insensitive", "_HTTP._TCP.svc1" + T, "SRV",
         answer=[f"_HTTP._TCP.svc1{T} 30 SRV 0 100 80 svc1{T}"]),
    Case(9, "udp-protocol", "_dns._udp.udpsvc" + T, "SRV",
         answer=[f"_dns._udp.udpsvc{T} 30 SRV 0 100 53 udpsvc{T}"]),
    nx(10, "unknown-port", "_nope._tcp.svc1" + T, "SRV"),
    nx(10, "wrong-protocol", "_http._udp.svc1" + T, "SRV"),
    nx(10, "unnamed-port", "_53._tcp.unnamed" + T, "SRV"),
    Case(11, "bare-name-srv", "svc1" + T, "SRV", answer=[f"svc1{T} 30 SRV 0 100 80 svc1{T}"],
         additional=[f"svc1{T} 30 A 10.0.0.1"]),
    Case(12, "dual-stack-weight-50", "svc-dual-stack" + T, "SRV",
         answer=[f"svc-dual-stack{T} 30 SRV 0 50 80 svc-dual-stack{T}"],
         additional=[f"svc-dual-stack{T} 30 A 10.0.0.3", f"svc-dual-stack{T} 30 AAAA 10::3"]),
    Case(13, "headless-a", "hdls1" + T,
         answer=[f"hdls1{T} 30 A 172.0.0.{i}" for i in (2, 3, 4)]),
    Case(13, "headless-aaaa", "hdls1" + T, "AAAA",
         answer=[f"hdls1{T} 30 AAAA 5678:abcd::1", f"hdls1{T} 30 AAAA 5678:abcd::2"]),
    nx(14, "headless-no-ready-a", "hdls-empty" + T),
    nx(14, "headless-no-ready-aaaa", "hdls-empty" + T, "AAAA"),
    nodata(15, "headless-v4-only-aaaa", "php-apache-svc" + D, "AAAA"),
    Case(16, "shared-hostname", "dup-name.hdls1" + T,
         answer=[f"dup-name.hdls1{T} 30 A 172.0.0.3", f"dup-name.hdls1{T} 30 A 172.0.0.4"]),
    Case(17, "dashed-ipv4", "172-0-0-2.hdls1" + T,
         answer=[f"172-0-0-2.hdls1{T} 30 A 172.0.0.2"]),
    Case(18, "dashed-ipv6", "5678-abcd--1.hdls1" + T, "AAAA",
         answer=[f"5678-abcd--1.hdls1{T} 30 AAAA 5678:abcd::1"]),
    nx(19, "unknown-endpoint", "bogusendpoint.hdls1" + T),
    Case(20, "endpoint-of-clusterip", "ep1a.svc1" + T, answer=[f"ep1a.svc1{T} 30 A 172.0.0.1"]),
    Case(21, "headless-srv", "_http._tcp.hdls1" + T, "SRV",
         answer=[f"_http._tcp.hdls1{T} 30 SRV 0 20 80 {t}.hdls1{T}"
                 for t in ("172-0-0-2", "dup-name", "5678-abcd--1", "ep6")],
         additional=[f"172-0-0-2.hdls1{T} 30 A 172.0.0.2", f"dup-name.hdls1{T} 30 A 172.0.0.3",
                     f"dup-name.hdls1{T} 30 A 172.0.0.4",
                     f"5678-abcd--1.hdls1{T} 30 AAAA 5678:abcd::1",
                     f"ep6.hdls1{T} 30 AAAA 5678:abcd::2"]),
    Case(22, "portless-headless-a", "hdlsprtls" + T, answer=[f"hdlsprtls{T} 30 A 172.0.0.20"]),
    nodata(22, "portless-headless-srv", "hdlsprtls" + T, "SRV"),
    nx(23, "not-ready-endpoint-name", "notready.hdls1" + T),
    nx(23, "not-ready-clusterip-endpoint", "ep1c.svc1" + T),
    Case(23, "not-ready-ptr", check=check_ptr_of_not_ready_endpoint_is_not_ours_23),
    Case(24, "publish-not-ready", "hdls-pnr" + T, answer=[f"hdls-pnr{T} 30 A 172.0.0.30"]),
    nx(25, "pod-name-is-not-a-hostname", "hdls1-pod-a.hdls1" + T),
    Case(26, "externalname-cname", "external" + T, "CNAME",
         answer=[f"external{T} 30 CNAME ext.interwebs.test."]),
    Case(27, "externalname-in-zone", "external-to-service" + T, ordered=True,
         answer=[f"external-to-service{T} 30 CNAME svc1{T}", f"svc1{T} 30 A 10.0.0.1"]),
    Case(27, "externalname-out-of-zone", check=check_external_name_out_of_zone_via_upstream_27),
    Case(28, "chased-truncation", check=check_chased_truncation_is_copied_28),
    nx(29, "below-externalname", "endpoint.external" + T),
    nx(29, "two-below-externalname", "a.b.external" + T),
    nx(29, "srv-port-on-externalname", "_http._tcp.external" + T, "SRV"),
    nodata(29, "srv-on-externalname", "external" + T, "SRV"),
    Case(30, "ptr-cluster-ip", "1.0.0.10.in-addr.arpa.", "PTR",
         answer=[f"1.0.0.10.in-addr.arpa. 30 PTR svc1{T}"]),
    Case(31, "ptr-endpoint-two-services", "2.0.0.172.in-addr.arpa.", "PTR",
         answer=[f"2.0.0.172.in-addr.arpa. 30 PTR 172-0-0-2.hdls1{T}",
                 f"2.0.0.172.in-addr.arpa. 30 PTR 172-0-0-2.hdls2{T}"]),
    Case(31, "ptr-endpoint-hostname", "3.0.0.172.in-addr.arpa.", "PTR",
         answer=[f"3.0.0.172.in-addr.arpa. 30 PTR dup-name.hdls1{T}"]),
    Case(32, "ptr-ipv6", "1." + "0." * 23 + "d.c.b.a.8.7.6.5.ip6.arpa.", "PTR",
         answer=["1." + "0." * 23 + f"d.c.b.a.8.7.6.5.ip6.arpa. 30 PTR 5678-abcd--1.hdls1{T}"]),
    Case(33, "ptr-unknown-forwarded", check=check_unknown_reverse_is_forwarded_33),
    nx(34, "missing-service", "svc0" + T),
    nx(35, "missing-namespace", "svc0.svc-nons.svc.cluster.local."),
    nx(35, "missing-namespace-itself", "svc-nons.svc.cluster.local."),
    nodata(36, "namespace", "testns.svc.cluster.local."),
    nodata(36, "namespace-ns", "testns.svc.cluster.local.", "NS"),
    nodata(36, "svc-root", "svc.cluster.local."),
    nodata(36, "pod-root", "pod.cluster.local."),
    nx(37, "not-svc-or-pod", "foo.cluster.local."),
    nx(37, "external-name-in-zone", "example.org.cluster.local."),
    nx(38, "three-labels-left", "a.b.c.svc1" + T),
    nodata(39, "txt-existing", "svc1" + T, "TXT"),
    nx(39, "txt-missing", "svc0" + T, "TXT"),
    *(nodata(40, f"{qtype.lower()}-existing", "svc1" + T, qtype)
      for qtype in ("MX", "HINFO", "CAA", "ANY", "HTTPS")),
    nx(40, "mx-missing", "svc0" + T, "MX"),
    Case(41, "apex-soa", "cluster.local.", "SOA", answer=[SOA_CL]),
    nodata(42, "soa-below-apex", "svc1" + T, "SOA"),
    nodata(42, "soa-missing-name", "svc0" + T, "SOA"),
    Case(43, "apex-ns", "cluster.local.", "NS", answer=["cluster.local. 30 NS ns.dns.cluster.local."],
         additional=["ns.dns.cluster.local. 30 A 10.0.0.53"]),
    nodata(44, "apex-a", "cluster.local."),
    nodata(44, "apex-aaaa", "cluster.local.", "AAAA"),
    Case(44, "ns-dns-a", "ns.dns.cluster.local.", answer=["ns.dns.cluster.local. 30 A 10.0.0.53"]),
    nx(45, "nxdomain-one-soa", "nosuch" + T, "AAAA"),
    nodata(45, "nodata-one-soa", "hdls1" + T, "TXT"),
    Case(46, "case-echoed", "SvC1.TeStNs.SvC.cLuStEr.LoCaL.",
         answer=["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 30 A 10.0.0.1"]),
    nx(47, "soa-zone-spelling", "NoSuch.testns.svc.cLuStEr.LoCaL.",
       soa="cLuStEr.LoCaL. 30 SOA ns.dns.cLuStEr.LoCaL. hostmaster.cLuStEr.LoCaL. 7 7200 1800 "
           "86400 30"),
    Case(47, "srv-target-spelling", "_HtTp._TcP.svc1.testns.svc.cLuStEr.LoCaL.", "SRV",
         answer=["_HtTp._TcP.svc1.testns.svc.cLuStEr.LoCaL. 30 SRV 0 100 80 "
                 "svc1.testns.svc.cLuStEr.LoCaL."]),
    nx(48, "wildcard-service", "*" + T),
    nx(48, "wildcard-namespace", "*.*.svc.cluster.local."),
    nx(49, "pods-disabled", "10-240-0-1.testns.pod.cluster.local.", server="pods-disabled"),
    Case(50, "pods-insecure", "10-240-0-1.testns.pod.cluster.local.",
         answer=["10-240-0-1.testns.pod.cluster.local. 30 A 10.240.0.1"]),
    Case(50, "pods-insecure-ipv6", "fd00--1.testns.pod.cluster.local.", "AAAA",
         answer=["fd00--1.testns.pod.cluster.local. 30 AAAA fd00::1"]),
    nx(50, "pods-insecure-not-an-ip", "blah.testns.pod.cluster.local."),
    nx(50, "pods-insecure-missing-namespace", "10-240-0-1.nons.pod.cluster.local."),
    nodata(50, "pods-insecure-namespace", "testns.pod.cluster.local."),
    Case(51, "pods-verified-known", "172-0-0-3.testns.pod.cluster.local.", server="pods-verified",
         answer=["172-0-0-3.testns.pod.cluster.local. 30 A 172.0.0.3"]),
    nx(51, "pods-verified-unknown", "10-240-0-1.testns.pod.cluster.local.", server="pods-verified"),
    nx(51, "pods-verified-other-namespace", "10-28-5-15.testns.pod.cluster.local.",
       server="pods-verified"),
    Case(52, "axfr-ixfr-refused", check=check_zone_transfers_refused_52),
    Case(53, "unsynced-servfail", "svc0" + T, rcode="SERVFAIL", answer=[], authority=[SOA_CL],
         server="unsynced"),
    Case(53, "unsynced-known-names-answer", "svc1" + T, server="unsynced",
         answer=[f"svc1{T} 30 A 10.0.0.1"]),
    Case(54, "class-chaos-refused", "version.bind.", "TXT", rcode="REFUSED", aa=False,
         query={"rdclass": "CH"}),
    Case(54, "no-question-servfail", check=check_no_question_is_servfail_54),
    Case(55, "edns", check=check_edns_55),
    Case(56, "truncation", check=check_truncation_56),
    Case(57, "forwarded", check=check_forwarded_untouched_57),
    Case(58, "search-expansions", check=check_search_expansions_never_leave_58),
    nx(59, "search-walk-continues", "foo.bar" + T),
    Case(59, "endpoint-under-service", "ep1a.svc1" + T, answer=[f"ep1a.svc1{T} 30 A 172.0.0.1"]),
    Case(61, "consul-healthy-instances", "billing.service.consul.",
         answer=["billing.service.consul. 0 A 192.0.2.21", "billing.service.consul. 0 A 192.0.2.22"]),
    Case(61, "consul-random-order", check=check_consul_random_order_61),
    nx(62, "consul-no-healthy", "payments.service.consul.", soa=SOA_CONSUL),
    nx(62, "consul-unknown", "nosuch.service.consul.", soa=SOA_CONSUL),
    Case(63, "consul-tag", "v1.billing.service.consul.",
         answer=["v1.billing.service.consul. 0 A 192.0.2.21"]),
    Case(63, "consul-tag-aaaa", "v2.billing.service.consul.", "AAAA",
         answer=["v2.billing.service.consul. 0 AAAA 2001:db8::24"]),
    nx(63, "consul-tag-only-unhealthy", "nosuchtag.billing.service.consul.", soa=SOA_CONSUL),
    Case(64, "consul-rfc2782-tag", "_billing._v2.service.consul.", "SRV",
         answer=["_billing._v2.service.consul. 0 SRV 1 1 8080 c0000216.addr.dc1.consul.",
                 "_billing._v2.service.consul. 0 SRV 1 1 8080 "
                 "20010db8000000000000000000000024.addr.dc1.consul."]),
    Case(64, "consul-rfc2782-tcp-no-filter", "_billing._tcp.service.consul.", "SRV",
         answer=[f"_billing._tcp.service.consul. 0 SRV 1 1 8080 {t}.addr.dc1.consul."
                 for t in ("c0000215", "c0000216", "20010db8000000000000000000000024")]),
    Case(64, "consul-rfc2782-without-service", "_billing._tcp.consul.", "SRV",
         answer=[f"_billing._tcp.consul. 0 SRV 1 1 8080 {t}.addr.dc1.consul."
                 for t in ("c0000215", "c0000216", "20010db8000000000000000000000024")]),
    Case(65, "consul-srv-layout", "primary.billing.service.consul.", "SRV",
         answer=["primary.billing.service.consul. 0 SRV 1 1 8080 c0000215.addr.dc1.consul."],
         additional=["c0000215.addr.dc1.consul. 0 A 192.0.2.21"]),
    Case(65, "consul-srv-only-when-asked", "primary.billing.service.consul.",
         answer=["primary.billing.service.consul. 0 A 192.0.2.21"], additional=[]),
    Case(65, "consul-srv-target-resolves", "c0000215.addr.dc1.consul.",
         answer=["c0000215.addr.dc1.consul. 0 A 192.0.2.21"]),
    Case(66, "consul-a-record-limit", check=check_a_record_limit_66),
]


@pytest.fixture(params=["udp", "tcp"])
def transport(request) -> str:
    return request.param


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case, transport: str, servers, upstream, upstream_without_tcp):
    run(case, Ask(servers[case.server], transport, upstream, upstream_without_tcp, servers))


def test_every_rule_has_a_case():
    covered = {case.rule for case in CASES}
    assert RULES - covered == set(), f"rules without a case: {sorted(RULES - covered)}"
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
