"""The sidecar resolver: names outside our zones through a real upstream test server.

Checklist rules 27, 28, 33 and 57 are asked in test_dns_conformance.py; here are the
forwarder's own promises: the upstream's reply untouched apart from the ID, TCP retry on
TC, SERVFAIL on timeout or a dead upstream, failover, never holding up other queries, a
bound on what is in flight, and where the upstreams come from.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from types import MappingProxyType

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from bridge.catalog.model import Catalog, Port, Service, ServiceKey, ServiceType
from bridge.config import DnsSettings
from bridge.dns.server import DnsServer
from tests.integration.dns_upstream import UpstreamServer, dead_address

TIMEOUT = 10.0
RECORDS = {
    "www.example.test.": ["300 A 192.0.2.80", "300 AAAA 2001:db8::80"],
    "big.example.test.": [f"300 A 198.51.100.{i}" for i in range(100)],
    "slow.example.test.": ["300 A 192.0.2.81"],
}
CATALOG = Catalog(MappingProxyType({s.key: s for s in [
    Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP,
            ports=(Port("https", 443),), cluster_ips=("10.96.0.1",)),
    Service(ServiceKey("default", "ext"), ServiceType.EXTERNAL_NAME,
            external_name="www.example.test"),
]}), ready=True, generation=1)


def settings(*upstreams: str, **kwargs) -> DnsSettings:
    # No cache unless asked: each test's questions must reach the upstream.
    return DnsSettings(listen="127.0.0.1:0", resolv_conf="", upstreams=upstreams,
                       **{"cache_size": 0, **kwargs})


def serve(*upstreams: str, **kwargs) -> DnsServer:
    """A server with the catalog published, to be started by `with`."""
    options = {k: kwargs.pop(k) for k in ("max_in_flight",) if k in kwargs}
    server = DnsServer(settings(*upstreams, **kwargs), **options)
    server.publish(CATALOG)
    return server


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(RECORDS) as server:
        yield server


@pytest.fixture
def server(upstream) -> Iterator[DnsServer]:
    with serve(upstream.address) as srv:
        yield srv


def ask(srv: DnsServer, name: str, qtype: str = "A", *, tcp: bool = False,
        **kwargs) -> dns.message.Message:
    host, port = srv.addresses[0]
    query = dns.message.make_query(name, qtype, **kwargs)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, host, port=port, timeout=TIMEOUT)


def records(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def raw(srv: DnsServer, packet: bytes, tcp: bool) -> bytes:
    if not tcp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(packet, srv.addresses[0])
            return sock.recv(65535)
    with socket.create_connection(srv.addresses[0], timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack(">H", len(packet)) + packet)
        return _read_raw_frame(sock)


def _read_raw_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed early"
            data += chunk
        return data
    return exactly(struct.unpack(">H", exactly(2))[0])


@pytest.mark.parametrize("tcp", [False, True], ids=["udp-client", "tcp-client"])
def test_reply_is_the_upstreams_apart_from_the_id(server, upstream, tcp):
    query = dns.message.make_query("www.example.test.", "AAAA", id=0xBEEF, use_edns=0,
                                   payload=4096, want_dnssec=True).to_wire()
    reply = raw(server, query, tcp)
    assert reply[:2] == b"\xbe\xef", "the client's ID"
    assert reply[2:] == upstream.last_reply("www.example.test.")[2:], "the rest untouched"
    message = dns.message.from_wire(reply)
    assert records(message) == ["2001:db8::80"] and message.flags & dns.flags.RA
    forwarded = [q for q in upstream.queries if q[0] == "www.example.test."]
    assert [transport for *_, transport in forwarded] == ["udp"], "UDP first, also for TCP"


def test_truncated_udp_reply_is_retried_over_tcp(upstream):
    upstream.udp_limit = 512  # whatever the client advertises
    with serve(upstream.address) as srv:
        reply = ask(srv, "big.example.test.", use_edns=0, payload=4096)
        assert not reply.flags & dns.flags.TC and len(records(reply)) == 100
        assert [t for name, _, t in upstream.queries if name == "big.example.test."] == [
            "udp", "tcp"]


def test_tcp_reply_too_big_for_the_client_is_passed_on_truncated(server, upstream):
    reply = ask(server, "big.example.test.")  # no EDNS: 512 bytes
    assert reply.flags & dns.flags.TC and not reply.answer
    assert len(records(ask(server, "big.example.test.", tcp=True))) == 100, \
        "the client's own retry over TCP gets everything"


def test_timeout_gives_servfail(upstream):
    upstream.drop.add("slow.example.test.")
    with serve(upstream.address, upstream_timeout=0.3) as srv:
        reply = ask(srv, "slow.example.test.", use_edns=0)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert reply.question[0].name.to_text() == "slow.example.test." and reply.edns == 0
        assert upstream.seen("slow.example.test.") == 2, "sent once, and once again"
        assert records(ask(srv, "www.example.test.")) == ["192.0.2.80"], "and on it goes"


def test_dead_upstream_fails_over_to_the_next(upstream):
    with serve(dead_address(), upstream.address, upstream_timeout=30) as srv:
        assert records(ask(srv, "www.example.test.")) == ["192.0.2.80"]


def test_only_dead_upstreams_give_servfail_without_waiting_for_the_timeout():
    # The timeout is longer than the client waits: only "port unreachable" can answer.
    with serve(dead_address(), dead_address(), upstream_timeout=60) as srv:
        assert ask(srv, "www.example.test.").rcode() == dns.rcode.SERVFAIL
        assert ask(srv, "www.example.test.", tcp=True).rcode() == dns.rcode.SERVFAIL


def test_externalname_chase_fails_as_servfail_when_the_upstream_is_dead():
    with serve(dead_address(), upstream_timeout=60) as srv:
        assert ask(srv, "ext.default.svc.cluster.local.").rcode() == dns.rcode.SERVFAIL
        cname = ask(srv, "ext.default.svc.cluster.local.", "CNAME")
        assert records(cname) == ["www.example.test."], "the CNAME itself needs no upstream"


def test_slow_upstream_does_not_hold_up_other_queries_udp(upstream):
    upstream.delay["slow.example.test."] = 1.0
    with serve(upstream.address, upstream_timeout=5) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        target = srv.addresses[0]
        for qid, name in ((1, "slow.example.test."), (2, "kubernetes.default.svc.cluster.local."),
                          (3, "www.example.test.")):
            sock.sendto(dns.message.make_query(name, "A", id=qid).to_wire(), target)
        order = [dns.message.from_wire(sock.recv(4096)).id for _ in range(3)]
    assert order[-1] == 1 and sorted(order[:2]) == [2, 3], order


def test_slow_upstream_does_not_hold_up_a_tcp_connection(upstream):
    upstream.delay["slow.example.test."] = 1.0
    with serve(upstream.address, upstream_timeout=5) as srv, \
            socket.create_connection(srv.addresses[0], timeout=TIMEOUT) as sock:
        for qid, name in ((1, "slow.example.test."), (2, "kubernetes.default.svc.cluster.local.")):
            wire = dns.message.make_query(name, "A", id=qid).to_wire()
            sock.sendall(struct.pack(">H", len(wire)) + wire)
        sock.shutdown(socket.SHUT_WR)  # half-closed: the forwarded reply must still come
        order = [read_frame(sock).id for _ in range(2)]
        assert sock.recv(1) == b"", "closed once every reply is out"
    assert order == [2, 1], "replies in the order they are ready (RFC 7766)"


def read_frame(sock: socket.socket) -> dns.message.Message:
    return dns.message.from_wire(_read_raw_frame(sock))


def test_in_flight_queries_are_bounded(upstream):
    upstream.drop.add("slow.example.test.")
    with serve(upstream.address, upstream_timeout=30, max_in_flight=2) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        for qid in range(5):
            sock.sendto(dns.message.make_query("slow.example.test.", "A", id=qid).to_wire(),
                        srv.addresses[0])
        replies = [dns.message.from_wire(sock.recv(4096)) for _ in range(3)]
        assert {r.rcode() for r in replies} == {dns.rcode.SERVFAIL}
        assert sorted(r.id for r in replies) == [2, 3, 4], "the first two are still waiting"
        assert srv.stats["forwarded"] == 2


def test_upstreams_from_resolv_conf_minus_ourselves(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver 10.96.0.10\nnameserver ::1\n")
    on_53 = DnsServer(DnsSettings(listen="0.0.0.0:53", resolv_conf=str(resolv)))
    assert on_53.upstreams == (("10.96.0.10", 53),), "127.0.0.1:53 and [::1]:53 are us"
    elsewhere = DnsServer(DnsSettings(listen="0.0.0.0:5353", resolv_conf=str(resolv)))
    assert elsewhere.upstreams == (("127.0.0.1", 53), ("10.96.0.10", 53), ("::1", 53))
    configured = DnsServer(DnsSettings(listen="0.0.0.0:53", resolv_conf=str(resolv),
                                       upstreams=("192.0.2.1:5300",)))
    assert configured.upstreams == (("192.0.2.1", 5300),)
    assert DnsServer(DnsSettings(resolv_conf=str(tmp_path / "absent"))).upstreams == ()


def test_no_upstream_refuses_and_does_not_offer_recursion():
    with serve() as srv:
        reply = ask(srv, "www.example.test.")
        assert reply.rcode() == dns.rcode.REFUSED and not reply.flags & dns.flags.RA
        assert srv.upstreams == ()


def test_this_hosts_own_addresses_are_not_upstreams(tmp_path):
    own = "127.0.0.1"  # a host without a route out has loopback only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.99", 9))  # no packet sent: picks the outgoing address
            own = probe.getsockname()[0]
        except OSError:
            pass
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {own}\nnameserver 192.0.2.53\n")
    assert DnsServer(DnsSettings(listen=":53", resolv_conf=str(resolv))).upstreams == (
        ("192.0.2.53", 53),)
