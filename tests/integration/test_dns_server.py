"""The DNS server over real sockets on port 0, asked by dnspython and by dig.

Covers the transport (UDP and TCP on one port, IPv4 and IPv6, several queries per TCP
connection, idle timeout, truncation and TCP retry, EDNS, garbage) and spot-checks the
answers end to end. Numbers are the rules of docs/dns-conformance.md.
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from types import MappingProxyType

import dns.flags
import dns.message
import dns.query
import dns.rcode
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
from tests.conftest import eventually

K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP, HTTPS = Port("http", 80), Port("https", 443)
Z = ".default.svc.cluster.local."
TIMEOUT = 3.0
DIG = shutil.which("dig") or "/usr/bin/dig"


def local(listen: str, **kwargs) -> DnsSettings:
    """Settings for a server that forwards nowhere (no resolv.conf): REFUSED outside."""
    return DnsSettings(listen=listen, resolv_conf="", **kwargs)


def pod(address: str, *ports: Port, ready: bool = True, hostname: str = "") -> Instance:
    return Instance(address, ports, K8S, ready=ready, hostname=hostname)


def make_catalog(*, ready: bool = True, extra: tuple[Service, ...] = ()) -> Catalog:
    services = (
        Service(ServiceKey("default", "php-apache-svc"), ServiceType.HEADLESS,
                ports=(HTTP, HTTPS),
                instances=(pod("10.28.5.15", HTTP, HTTPS), pod("10.28.3.13", HTTP, HTTPS),
                           pod("10.28.7.7", HTTP, HTTPS, ready=False))),
        Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP, ports=(HTTPS,),
                cluster_ips=("10.96.0.1",)),
        Service(ServiceKey("default", "big"), ServiceType.HEADLESS, ports=(HTTP,),
                instances=tuple(pod(f"10.60.{i // 200}.{i % 200}", HTTP) for i in range(120))),
        Service(ServiceKey("default", "v6"), ServiceType.CLUSTER_IP, ports=(HTTP,),
                cluster_ips=("fd00:10::5",)),
        *extra,
    )
    return Catalog(MappingProxyType({s.key: s for s in services}), ready=ready, generation=3)


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    srv = DnsServer(local("127.0.0.1:0"))
    srv.publish(make_catalog())
    srv.start()
    yield srv
    srv.stop()


def endpoint(srv: DnsServer) -> tuple[str, int]:
    host, port = srv.addresses[0]
    return host, port


def udp(srv: DnsServer, name: str, qtype: str = "A", **kwargs) -> dns.message.Message:
    host, port = endpoint(srv)
    return dns.query.udp(dns.message.make_query(name, qtype, **kwargs), host, port=port,
                         timeout=TIMEOUT)


def tcp(srv: DnsServer, name: str, qtype: str = "A", **kwargs) -> dns.message.Message:
    host, port = endpoint(srv)
    return dns.query.tcp(dns.message.make_query(name, qtype, **kwargs), host, port=port,
                         timeout=TIMEOUT)


def dig(srv: DnsServer, *args: str, at: str | None = None) -> str:
    host, port = endpoint(srv)
    host = at or host
    done = subprocess.run([DIG, f"@{host}", "-p", str(port), "+time=2", "+tries=1", *args],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, f"dig failed: {done.stdout}{done.stderr}"
    return done.stdout


def answer_lines(output: str) -> list[list[str]]:
    """The ANSWER SECTION of dig output, as whitespace-split fields."""
    lines, inside = [], False
    for line in output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            inside = True
        elif inside and (not line.strip() or line.startswith(";;")):
            inside = False
        elif inside:
            lines.append(line.split())
    return lines


def addresses(message: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in message.answer for rr in rrset]


# --- answers ----------------------------------------------------------------------------

def test_a_answers_exactly_the_two_ready_pods_ttl_30_aa_13(server):
    reply = udp(server, "php-apache-svc" + Z)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA, "in-zone answers are authoritative"
    assert sorted(addresses(reply)) == ["10.28.3.13", "10.28.5.15"]
    assert {rrset.ttl for rrset in reply.answer} == {30}


def test_dig_sees_the_same_answer(server):
    out = dig(server, "php-apache-svc.default.svc.cluster.local", "A")
    assert "status: NOERROR" in out and " aa" in out.split("flags:")[1].split(";")[0]
    rows = answer_lines(out)
    assert sorted(r[4] for r in rows) == ["10.28.3.13", "10.28.5.15"]
    assert {r[1] for r in rows} == {"30"}


def test_question_case_is_preserved_46(server):
    name = "PhP-ApAcHe-SvC.DeFault.svc.cluster.local."
    reply = udp(server, name)
    assert [rrset.name.to_text() for rrset in reply.answer] == [name]
    rows = answer_lines(dig(server, name.rstrip("."), "A"))
    assert {r[0] for r in rows} == {name}, "dig must see the owner spelled as asked"


def test_srv_with_glue_over_dig_21(server):
    out = dig(server, "_https._tcp.php-apache-svc.default.svc.cluster.local", "SRV")
    rows = answer_lines(out)
    assert sorted((r[4], r[5], r[6], r[7]) for r in rows) == [
        ("0", "50", "443", "10-28-3-13.php-apache-svc.default.svc.cluster.local."),
        ("0", "50", "443", "10-28-5-15.php-apache-svc.default.svc.cluster.local.")]
    assert "ADDITIONAL: 3" in out, "two glue A records plus our OPT"


def test_nxdomain_and_nodata_are_distinct_with_soa_45(server):
    missing = udp(server, "nosuch" + Z)
    assert missing.rcode() == dns.rcode.NXDOMAIN and not missing.answer
    nodata = udp(server, "php-apache-svc" + Z, "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    for reply in (missing, nodata):
        assert reply.flags & dns.flags.AA
        assert [(r.name.to_text(), r.rdtype, r.ttl) for r in reply.authority] == [
            ("cluster.local.", dns.rdatatype.SOA, 30)]
        assert reply.authority[0][0].minimum == 30
    assert "status: NXDOMAIN" in dig(server, "nosuch.default.svc.cluster.local")


def test_ptr_over_udp_31(server):
    reply = udp(server, "15.5.28.10.in-addr.arpa.", "PTR")
    assert addresses(reply) == ["10-28-5-15.php-apache-svc.default.svc.cluster.local."]
    assert "10-28-5-15.php-apache-svc" in dig(server, "-x", "10.28.5.15")


def test_servfail_before_the_catalog_is_ready_53():
    with DnsServer(local("127.0.0.1:0")) as srv:
        assert udp(srv, "php-apache-svc" + Z).rcode() == dns.rcode.SERVFAIL, \
            "nothing published yet"
        srv.publish(make_catalog(ready=False))
        assert udp(srv, "nosuch" + Z).rcode() == dns.rcode.SERVFAIL
        assert "status: SERVFAIL" in dig(srv, "nosuch.default.svc.cluster.local")
        assert sorted(addresses(udp(srv, "php-apache-svc" + Z))) == [
            "10.28.3.13", "10.28.5.15"], "what is known is served"
        srv.publish(make_catalog(ready=True))
        assert udp(srv, "nosuch" + Z).rcode() == dns.rcode.NXDOMAIN


def test_publish_swaps_the_answers(server):
    extra = Service(ServiceKey("default", "late"), ServiceType.CLUSTER_IP, ports=(HTTP,),
                    cluster_ips=("10.96.9.9",))
    assert udp(server, "late" + Z).rcode() == dns.rcode.NXDOMAIN
    server.publish(make_catalog(extra=(extra,)))
    try:
        assert addresses(udp(server, "late" + Z)) == ["10.96.9.9"]
    finally:
        server.publish(make_catalog())


# --- TCP ---------------------------------------------------------------------------------

def frame(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack(">H", len(wire)) + wire


def read_frame(sock: socket.socket) -> dns.message.Message:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed early"
            data += chunk
        return data
    (size,) = struct.unpack(">H", exactly(2))
    return dns.message.from_wire(exactly(size))


def test_tcp_several_queries_on_one_connection(server):
    names = ["php-apache-svc" + Z, "kubernetes" + Z, "nosuch" + Z, "big" + Z, "v6" + Z]
    queries = [dns.message.make_query(n, "A", id=100 + i) for i, n in enumerate(names)]
    with socket.create_connection(endpoint(server), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(frame(q) for q in queries[:3]))  # pipelined in one write
        replies = [read_frame(sock) for _ in range(3)]
        for q in queries[3:]:  # then one at a time on the same connection
            sock.sendall(frame(q))
            replies.append(read_frame(sock))
    assert [r.id for r in replies] == [100, 101, 102, 103, 104], "answered in order"
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR, dns.rcode.NOERROR,
                                            dns.rcode.NXDOMAIN, dns.rcode.NOERROR,
                                            dns.rcode.NOERROR]
    assert len(addresses(replies[3])) == 120, "TCP is never truncated"


def test_tcp_query_split_across_writes(server):
    wire = frame(dns.message.make_query("kubernetes" + Z, "A", id=7))
    with socket.create_connection(endpoint(server), timeout=TIMEOUT) as sock:
        for i in range(len(wire)):
            sock.sendall(wire[i:i + 1])
        assert addresses(read_frame(sock)) == ["10.96.0.1"]


def test_half_closed_tcp_client_still_gets_its_reply(server):
    with socket.create_connection(endpoint(server), timeout=TIMEOUT) as sock:
        sock.sendall(frame(dns.message.make_query("kubernetes" + Z, "A", id=8)))
        sock.shutdown(socket.SHUT_WR)
        assert addresses(read_frame(sock)) == ["10.96.0.1"]
        assert sock.recv(1) == b"", "closed after the reply"


def test_dig_over_tcp(server):
    out = dig(server, "+tcp", "kubernetes.default.svc.cluster.local")
    assert [r[4] for r in answer_lines(out)] == ["10.96.0.1"]


def test_idle_tcp_connections_are_closed():
    # A real deadline (the DNS server reads the real clock): the idle timeout is 0.3 s and the
    # default 10 s, so a close within the socket's 8 s is this setting at work, with room for
    # a loaded machine; a server that never closes idle connections fails with a timeout.
    with DnsServer(local("127.0.0.1:0"), tcp_idle_timeout=0.3) as srv:
        srv.publish(make_catalog())
        with socket.create_connection(endpoint(srv), timeout=8) as sock:
            sock.sendall(frame(dns.message.make_query("kubernetes" + Z, "A", id=9)))
            assert addresses(read_frame(sock)) == ["10.96.0.1"], "served before it went idle"
            assert sock.recv(1) == b"", "the server must close an idle connection"


# --- truncation and EDNS -------------------------------------------------------------------

def test_udp_truncation_then_tcp_56(server):
    reply = udp(server, "big" + Z)  # no EDNS: 512 bytes at most
    assert reply.flags & dns.flags.TC, "120 A records do not fit in 512 bytes"
    assert 0 < len(addresses(reply)) < 120
    assert len(addresses(tcp(server, "big" + Z))) == 120
    # dig retries over TCP on TC by default and gets everything; with +ignore it shows TC.
    assert len(answer_lines(dig(server, "+noedns", "big.default.svc.cluster.local"))) == 120
    ignored = dig(server, "+noedns", "+ignore", "big.default.svc.cluster.local")
    assert " tc" in ignored.split("flags:")[1].split(";")[0]


def test_edns0_opt_echoed_and_limit_applied_55(server):
    reply = udp(server, "kubernetes" + Z, use_edns=0, payload=4096, want_dnssec=True)
    assert reply.edns == 0 and reply.payload == 1232
    assert reply.ednsflags & dns.flags.DO, "DO is echoed"
    host, port = endpoint(server)
    q = dns.message.make_query("big" + Z, "SRV", use_edns=0, payload=4096)
    wire = dns.query.udp(q, host, port=port, timeout=TIMEOUT, ignore_trailing=True)
    assert wire.flags & dns.flags.TC and len(wire.to_wire()) <= 1232
    out = dig(server, "+bufsize=1232", "+ignore", "big.default.svc.cluster.local", "SRV")
    assert "udp: 1232" in out


def test_badvers_for_edns_version_1_55(server):
    reply = udp(server, "kubernetes" + Z, use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


# --- refusals and malformed input -------------------------------------------------------------

def raw_udp(srv: DnsServer, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(packet, endpoint(srv))
        return sock.recv(65535)


def test_formerr_for_an_unparseable_question(server):
    packet = dns.message.make_query("kubernetes" + Z, "A", id=0x4242).to_wire()[:18]
    reply = dns.message.from_wire(raw_udp(server, packet))
    assert reply.id == 0x4242 and reply.rcode() == dns.rcode.FORMERR


def test_chaos_class_is_refused_54(server):
    reply = udp(server, "version.bind.", "TXT", rdclass="CH")
    assert reply.rcode() == dns.rcode.REFUSED
    assert "status: REFUSED" in dig(server, "-c", "CH", "-t", "TXT", "version.bind")


def test_zone_transfer_is_refused_52(server):
    assert tcp(server, "cluster.local.", "AXFR").rcode() == dns.rcode.REFUSED


def test_outside_names_are_refused_57(server):
    reply = udp(server, "www.example.com.", "A")
    assert reply.rcode() == dns.rcode.REFUSED and not reply.flags & dns.flags.AA
    assert "status: REFUSED" in dig(server, "+tcp", "www.example.com")


def test_outside_handler_is_the_forwarding_seam():
    seen: list[tuple[bytes, bool]] = []

    def outside(packet: bytes, over_tcp: bool) -> bytes:
        seen.append((packet, over_tcp))
        reply = dns.message.make_response(dns.message.from_wire(packet))
        reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()

    with DnsServer(local("127.0.0.1:0"), outside=outside) as srv:
        srv.publish(make_catalog())
        assert udp(srv, "www.example.com.").rcode() == dns.rcode.NXDOMAIN
        assert tcp(srv, "www.example.com.").rcode() == dns.rcode.NXDOMAIN
        assert addresses(udp(srv, "kubernetes" + Z)) == ["10.96.0.1"], "ours stays ours"
    assert [over_tcp for _, over_tcp in seen] == [False, True]


def test_garbage_flood_does_not_stop_the_server():
    rng = random.Random(99)
    with DnsServer(local("127.0.0.1:0")) as srv:
        srv.publish(make_catalog())
        good = dns.message.make_query("kubernetes" + Z, "A").to_wire()
        packets = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
                   for _ in range(1500)]
        packets += [b"\x00" * 5, good[:2] + bytes([good[2] | 0x80]) + good[3:]]  # short; QR
        packets += [good[:14], good[:12] + b"\xff" * 40]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in packets:
                sock.sendto(packet, endpoint(srv))
        for _ in range(50):  # garbage over TCP: bad frames, then a dangling length
            with socket.create_connection(endpoint(srv), timeout=TIMEOUT) as conn:
                conn.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        # One reader thread handles datagrams in order: once this reply is back, every
        # piece of garbage sent before it has been handled.
        assert addresses(udp(srv, "kubernetes" + Z)) == ["10.96.0.1"]
        assert addresses(tcp(srv, "kubernetes" + Z)) == ["10.96.0.1"]
        stats = srv.stats
        assert stats["dropped"] >= 2, stats
        assert stats["formerr"] >= 2, stats
        assert stats["errors"] == 0, f"garbage must be handled, not raise: {stats}"


# --- lifecycle -----------------------------------------------------------------------------------

def test_udp_and_tcp_share_one_port_and_stop_is_quick():
    srv = DnsServer(local("127.0.0.1:0"))
    srv.publish(make_catalog())
    srv.start()
    (host, port), = srv.addresses
    assert port != 0
    assert addresses(udp(srv, "kubernetes" + Z)) == addresses(tcp(srv, "kubernetes" + Z))
    threads = list(srv._threads)
    srv.stop()
    # stop() gives its threads about a second: any still alive it failed to wake.
    assert not any(t.is_alive() for t in threads), "serving threads must be joined"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((host, port))  # the port is free again


def test_ipv6_listener():
    with DnsServer(local("[::1]:0")) as srv:
        srv.publish(make_catalog())
        (host, port), = srv.addresses
        assert host == "::1"
        q = dns.message.make_query("v6" + Z, "AAAA")
        assert addresses(dns.query.udp(q, "::1", port=port, timeout=TIMEOUT)) == ["fd00:10::5"]
        assert addresses(dns.query.tcp(q, "::1", port=port, timeout=TIMEOUT)) == ["fd00:10::5"]
        assert "fd00:10::5" in dig(srv, "-6", "v6.default.svc.cluster.local", "AAAA")


def test_stats_count_queries_and_rcodes():
    with DnsServer(local("127.0.0.1:0")) as srv:
        srv.publish(make_catalog())
        udp(srv, "kubernetes" + Z)
        udp(srv, "nosuch" + Z)
        tcp(srv, "nosuch" + Z)
        udp(srv, "big" + Z)
        # The counter is bumped just after sendto returns.
        eventually(lambda: srv.stats["answered"] >= 4, 5, "four answers counted")
        stats = srv.stats
        assert stats["queries"] == 4 and stats["answered"] == 4, stats
        assert (stats["noerror"], stats["nxdomain"], stats["truncated"]) == (2, 2, 1), stats
        assert stats["tcp_connections"] == 1


# --- IPv4 and IPv6 listeners ----------------------------------------------------------------------

def ask_at(host: str, port: int, name: str, qtype: str, tcp: bool) -> dns.message.Message:
    send = dns.query.tcp if tcp else dns.query.udp
    return send(dns.message.make_query(name, qtype), host, port=port, timeout=TIMEOUT)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", ":0", "[::]:0"])
def test_wildcard_listen_serves_ipv4_and_ipv6(listen):
    with DnsServer(local(listen)) as srv:
        srv.publish(make_catalog())
        port = srv.addresses[0][1]
        assert {p for _, p in srv.addresses} == {port}, "one port for every socket"
        for host in ("127.0.0.1", "::1"):
            for tcp in (False, True):
                reply = ask_at(host, port, "kubernetes" + Z, "A", tcp)
                assert addresses(reply) == ["10.96.0.1"], (host, tcp)
        assert "10.96.0.1" in dig(srv, "kubernetes.default.svc.cluster.local", at="127.0.0.1")
        assert "fd00:10::5" in dig(srv, "+tcp", "v6.default.svc.cluster.local", "AAAA", at="::1")


def test_explicit_host_binds_only_that_address():
    with DnsServer(local("127.0.0.1:0")) as srv:
        srv.publish(make_catalog())
        port = srv.addresses[0][1]
        assert srv.addresses == [("127.0.0.1", port)]
        with pytest.raises(OSError), socket.create_connection(("::1", port), timeout=TIMEOUT):
            pass  # nothing listens on IPv6


def test_settings_are_read_by_the_server():
    settings = DnsSettings(listen="127.0.0.1:0", zone="k8s.example", ttl=7, pods="insecure",
                           consul_domain="consul", upstreams=("192.0.2.1:5300",),
                           upstream_timeout=0.5, udp_payload=1400, tcp_idle_timeout=3.0,
                           max_tcp_connections=9, ns_addresses=("10.0.0.53",))
    srv = DnsServer(settings)
    assert (srv.udp_payload, srv.tcp_idle_timeout, srv.max_tcp_connections) == (1400, 3.0, 9)
    assert (srv.upstreams, srv.upstream_timeout, srv.pods) == ((("192.0.2.1", 5300),), 0.5,
                                                              "insecure")
    assert srv.ns_addresses == ("10.0.0.53",) and srv.consul is not None
    table = srv.publish(make_catalog())
    assert table.forwarding and table.udp_payload == 1400
    response = table.answer("kubernetes.default.svc.k8s.example.", 1)
    assert [r.ttl for r in response.answer] == [7]
    assert table.answer("10-1-2-3.default.pod.k8s.example.", 1).answer
    assert table.consul is not None and table.consul.zone == ("consul",)
    override = DnsServer(settings, udp_payload=512, upstreams=(), pods="disabled")
    assert (override.udp_payload, override.pods) == (512, "disabled")
