"""Fuzzing the running server: over 100,000 random and mutated packets, then it still answers.

Hypothesis draws each batch's recipe (a seed query, mutations, a random seed); the batch
expands it into a few hundred packets: random bytes, mutated valid queries, and random
well-formed questions in and outside our zones (the outside ones go through the forwarder
to a live upstream test server). Packets are sent without waiting for replies; after each
batch one valid query is asked on its own socket: the server reads datagrams in order, so
its reply means the whole batch has been handled. A tenth of each batch goes over TCP.

Afterwards the server must answer correctly over UDP and TCP, forward, and have counted no
internal error (`stats["errors"]`: an exception escaping the packet handler).
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from types import MappingProxyType

import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, Phase, given, settings
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
from bridge.dns.server import DnsServer
from tests.integration.dns_upstream import UpstreamServer

TIMEOUT = 10.0
BATCHES = 240
PER_BATCH = 440  # 105,600 packets in all
HTTP = Port("http", 80)
K8S, CONSUL = Origin(OriginKind.KUBERNETES, "east"), Origin(OriginKind.CONSUL, "vm-1")
CATALOG = Catalog(MappingProxyType({s.key: s for s in [
    Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP, ports=(HTTP,),
            cluster_ips=("10.96.0.1",), instances=(Instance("10.0.0.9", (HTTP,), K8S),)),
    Service(ServiceKey("default", "web"), ServiceType.HEADLESS, ports=(HTTP,),
            instances=tuple(Instance(f"10.1.0.{i}", (HTTP,), K8S, hostname=f"web-{i}")
                            for i in range(1, 40))),
    Service(ServiceKey("default", "ext"), ServiceType.EXTERNAL_NAME,
            external_name="www.example.test"),
    Service(ServiceKey("consul", "billing"), ServiceType.HEADLESS, ports=(Port("", 8080),),
            instances=tuple(Instance(f"192.0.2.{20 + i}", (Port("", 8080),), CONSUL,
                                     node_name=f"vm-{i}", tags=("v1",)) for i in range(6))),
]}), ready=True, generation=5)

SEED_QUESTIONS = [
    ("kubernetes.default.svc.cluster.local.", "A"), ("web.default.svc.cluster.local.", "SRV"),
    ("_http._tcp.web.default.svc.cluster.local.", "SRV"), ("ext.default.svc.cluster.local.", "A"),
    ("web-3.web.default.svc.cluster.local.", "AAAA"), ("nosuch.default.svc.cluster.local.", "MX"),
    ("cluster.local.", "SOA"), ("cluster.local.", "NS"), ("dns-version.cluster.local.", "TXT"),
    ("10-1-2-3.default.pod.cluster.local.", "A"), ("billing.service.consul.", "A"),
    ("_billing._tcp.consul.", "SRV"), ("9.0.0.10.in-addr.arpa.", "PTR"),
    ("www.example.test.", "A"), ("nosuch.example.test.", "AAAA"), ("cluster.local.", "AXFR"),
]
SUFFIXES = [".default.svc.cluster.local.", ".svc.cluster.local.", ".cluster.local.",
            ".pod.cluster.local.", ".service.consul.", ".consul.", ".in-addr.arpa.",
            ".ip6.arpa.", ".example.test.", "."]
ALPHABET = "abcXYZ019-_*"


def seed_packets() -> list[bytes]:
    out = []
    for i, (name, qtype) in enumerate(SEED_QUESTIONS):
        out.append(dns.message.make_query(name, qtype, id=i).to_wire())
        out.append(dns.message.make_query(name, qtype, id=i, use_edns=0, payload=4096,
                                          want_dnssec=bool(i % 2)).to_wire())
    return out


SEEDS = seed_packets()


def random_question(rng: random.Random) -> bytes:
    labels = ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 12)))
              for _ in range(rng.randrange(0, 4))]
    name = (".".join(labels) + rng.choice(SUFFIXES)).lstrip(".") or "."
    name = name.replace("..", ".")
    try:
        wire_name = dns.message.make_query(name, "A").question[0].name.to_wire()
    except Exception:
        wire_name = b"\x00"
    qtype = rng.choice([1, 28, 33, 12, 16, 5, 6, 2, 255, 65, 252, rng.randrange(65536)])
    qclass = rng.choice([1, 1, 1, 3, 255, rng.randrange(65536)])
    header = struct.pack(">HHHHHH", rng.randrange(65536), rng.choice([0, 0x100, 0x110]), 1, 0,
                         0, rng.choice([0, 1]))
    opt = b""
    if header[-1]:
        opt = b"\x00\x00\x29" + struct.pack(">HBBHH", rng.randrange(65536), 0,
                                              rng.choice([0, 0, 1, 255]),
                                              rng.choice([0, 0x8000]), 0)
    return header + wire_name + struct.pack(">HH", qtype, qclass) + opt


def mutate(packet: bytes, rng: random.Random, rounds: int) -> bytes:
    data = bytearray(packet)
    for _ in range(rounds):
        op = rng.randrange(9)
        at = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[at] = rng.randrange(256)
        elif op == 2:
            del data[rng.randrange(len(data) + 1):]
        elif op == 3:
            data[at:at] = rng.randbytes(rng.randrange(1, 40))
        elif op == 4 and len(data) > 2:
            start = rng.randrange(len(data) - 1)
            data[at:at] = data[start:start + rng.randrange(1, 30)]
        elif op == 5 and len(data) >= 12:
            struct.pack_into(">H", data, 4 + 2 * rng.randrange(4),
                             rng.choice([0, 1, 2, 255, rng.randrange(65536)]))
        elif op == 6 and len(data) >= 4:
            data[2], data[3] = rng.randrange(256), rng.randrange(256)
        elif op == 7 and len(data) > 12:
            data[rng.randrange(12, len(data))] = rng.choice([0, 63, 64, 0xC0, 0xC0 | 0x0C, 0xFF])
        elif op == 8 and len(data) > 16:
            struct.pack_into(">H", data, len(data) - 4, rng.randrange(65536))
    return bytes(data)


def batch(rng: random.Random, base: bytes, ops: list[tuple[int, int]], size: int) -> list[bytes]:
    drawn = bytearray(base)
    for at, value in ops:  # hypothesis' own mutations of the seed
        if at < len(drawn):
            drawn[at] = value
    packets = []
    for _ in range(size):
        kind = rng.random()
        if kind < 0.2:
            packets.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind < 0.4:
            packets.append(random_question(rng))
        elif kind < 0.5:
            packets.append(bytes(drawn))
        else:
            source = rng.choice(SEEDS) if rng.random() < 0.7 else bytes(drawn)
            packets.append(mutate(source, rng, rng.randrange(1, 5)))
    return packets


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    records = {"www.example.test.": ["300 A 192.0.2.80"]}
    with UpstreamServer(records) as upstream:
        settings_ = DnsSettings(listen="127.0.0.1:0", resolv_conf="", pods="insecure",
                                consul_domain="consul", upstreams=(upstream.address,),
                                upstream_timeout=0.5)
        with DnsServer(settings_) as srv:
            srv.publish(CATALOG)
            yield srv


def sync(srv: DnsServer, sock: socket.socket, qid: int) -> dns.message.Message:
    """Ask a valid question and wait for its reply: every datagram before it is handled."""
    sock.sendto(dns.message.make_query("kubernetes.default.svc.cluster.local.", "A",
                                       id=qid).to_wire(), srv.addresses[0])
    while True:
        reply = dns.message.from_wire(sock.recv(65535))
        if reply.id == qid:
            return reply


def answers(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


# Hypothesis warns when the global `random` state moves while it draws an example; here the
# server under test moves it, on its own threads, shuffling Consul answers (random.sample in
# bridge/dns/table.py) for fuzzed packets still in flight. The draws use no global randomness.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning")
def test_fuzz_over_100k_packets_then_still_answering(server):
    target = server.addresses[0]
    sent = {"udp": 0, "tcp": 0, "batches": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as check:
        check.settimeout(TIMEOUT)
        fuzz_then_ask(server, target, sent, noise, check)


def fuzz_then_ask(server: DnsServer, target: tuple[str, int], sent: dict[str, int],
                  noise: socket.socket, check: socket.socket) -> None:

    @settings(max_examples=BATCHES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)),
                                            max_size=6),
           st.integers(0, 2**32 - 1))
    def one_batch(base: bytes, ops: list[tuple[int, int]], seed: int) -> None:
        rng = random.Random(seed)
        packets = batch(rng, base, ops, PER_BATCH)
        cut = len(packets) // 10
        for packet in packets[cut:]:
            noise.sendto(packet, target)
        sent["udp"] += len(packets) - cut
        with socket.create_connection(target, timeout=TIMEOUT) as conn:
            conn.sendall(b"".join(struct.pack(">H", len(p)) + p for p in packets[:cut]))
            conn.shutdown(socket.SHUT_WR)
        sent["tcp"] += cut
        sent["batches"] += 1
        reply = sync(server, check, sent["batches"] & 0xFFFF)
        assert answers(reply) == ["10.96.0.1"]

    one_batch()
    assert sent["udp"] + sent["tcp"] >= 100_000, sent

    # Still answering, correctly, over both transports, and still forwarding.
    assert answers(sync(server, check, 0xF00D)) == ["10.96.0.1"]
    host, port = target
    tcp = dns.query.tcp(dns.message.make_query("kubernetes.default.svc.cluster.local.", "A"),
                        host, port=port, timeout=TIMEOUT)
    assert answers(tcp) == ["10.96.0.1"]
    consul = dns.query.udp(dns.message.make_query("billing.service.consul.", "A"), host,
                           port=port, timeout=TIMEOUT)
    assert len(answers(consul)) == 6
    forwarded = dns.query.udp(dns.message.make_query("www.example.test.", "A"), host, port=port,
                              timeout=TIMEOUT)
    assert answers(forwarded) == ["192.0.2.80"]
    stats = server.stats
    assert stats["queries"] >= 100_000 - sent["tcp"], stats  # the TCP ones may still be queued
    assert stats["errors"] == 0, f"an exception escaped the handler: {stats}"
