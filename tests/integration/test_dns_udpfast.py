"""The compiled UDP fast path (`bridge/dns/_udpfast.c`) against the Python one.

Differential: for seed queries in every spelling, ID and EDNS size, fuzzed packets and
random questions, whatever the compiled path answers (`_udpfast.answer`, the routine each
batch runs) is byte for byte what `Table.respond` answers, and it counts the same qtype;
what it does not answer it hands back. Over a socket: a burst of mixed packets (which the
server receives several at a time) gets the replies and the counts the Python path gives.

Under BRIDGE_DNS_COMPILED=false (the pure-Python pass of `./dev test`) the compiled path is off:
the differential tests skip; the socket tests check the Python path alone.
"""

from __future__ import annotations

import random
import socket
import struct
from types import MappingProxyType

import dns.message
import dns.rcode
import pytest

from bridge.catalog.model import Catalog, Instance, Port, Service, ServiceKey, ServiceType
from bridge.config import DnsSettings
from bridge.dns import metrics, udp_batch
from bridge.dns.metrics import Counts
from bridge.dns.respond import CHASE
from bridge.dns.server import DnsServer
from bridge.dns.table import Table
from tests.conftest import PURE_DNS, eventually
from tests.integration.test_dns_fuzz import CATALOG, K8S, SEEDS, mutate, random_question

FAST = udp_batch.compiled()
compiled_only = pytest.mark.skipif(PURE_DNS, reason="BRIDGE_DNS_COMPILED=false: the compiled path is off")
WINDOW = 100  # datagrams in flight at once: well within a socket's default receive buffer
HTTP = Port("http", 80)
# Beyond the fuzz catalog: more A records than a `Rotations` holds (so a `Turns` cut from
# the answer written twice), and a headless Service whose SRV answers rotate as `Turns`
# variants made on first use.
EXTRA = [
    Service(ServiceKey("default", "wide"), ServiceType.HEADLESS, ports=(HTTP,),
            instances=tuple(Instance(f"10.4.{i // 250}.{i % 250 + 1}", (HTTP,), K8S)
                            for i in range(300))),
    Service(ServiceKey("apps", "db"), ServiceType.HEADLESS, ports=(HTTP,),
            instances=tuple(Instance(f"10.5.0.{i}", (HTTP,), K8S, hostname=f"db-{i}")
                            for i in range(1, 9))),
]
QUESTIONS = [("wide.default.svc.cluster.local.", "A"), ("db.apps.svc.cluster.local.", "SRV"),
             ("_http._tcp.db.apps.svc.cluster.local.", "SRV"), ("db-3.db.apps.svc.cluster.local.", "A"),
             ("web.default.svc.cluster.local.", "A"), ("web.default.svc.cluster.local.", "AAAA"),
             ("www.example.com.default.svc.cluster.local.", "A"), ("nosuch.apps.svc.cluster.local.", "AAAA"),
             ("a.b.nosuch.svc.cluster.local.", "SRV"), ("x.service.consul.", "A"),
             ("10-1-2-9.apps.pod.cluster.local.", "A")]


def catalog() -> Catalog:
    services = dict(CATALOG.services)
    services.update({s.key: s for s in EXTRA})
    return Catalog(MappingProxyType(services), ready=True, generation=6)


def table(udp_payload: int = 1232) -> Table:
    settings = DnsSettings(listen="127.0.0.1:0", resolv_conf="", pods="insecure",
                           consul_domain="consul", udp_payload=udp_payload)
    return DnsServer(settings, outside=lambda packet, tcp: None).publish(catalog())


def respelled(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def queries(rng: random.Random) -> list[bytes]:
    """Every question in many spellings, IDs and EDNS payloads (some cut short)."""
    out = list(SEEDS)
    for name, qtype in QUESTIONS + [(q.question[0].name.to_text(), q.question[0].rdtype)
                                    for q in map(dns.message.from_wire, SEEDS)]:
        for _ in range(40):
            edns = rng.choice([-1, 0])
            query = dns.message.make_query(respelled(name, rng), qtype, id=rng.randrange(65536),
                                           use_edns=edns, payload=rng.choice([512, 700, 1232, 4096]),
                                           want_dnssec=edns == 0 and rng.random() < 0.5)
            query.flags = rng.choice([0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD])
            out.append(query.to_wire())
    return out


def records(message: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in message.answer for rd in rrset)


def compare(tbl: Table, packets: list[bytes]) -> int:
    """Both paths over `packets`; how many the compiled one answered."""
    assert FAST is not None
    answered = 0
    for packet in packets:
        counts = Counts("udp")
        expected = tbl.respond(packet, False, counts.qtypes)
        got = FAST.answer(tbl, packet)
        if got is None:
            continue
        answered += 1
        reply, qslot = got
        assert reply == expected, f"compiled and Python replies differ for {packet.hex()}:\n" \
                                  f"  compiled {reply.hex()}\n  python   {expected!r}"
        assert counts.qtypes[qslot] == 1 and sum(counts.qtypes) == 1, \
            f"compiled path counts qtype slot {qslot} for {packet.hex()}, Python " \
            f"{[i for i, c in enumerate(counts.qtypes) if c]}"
    return answered


@compiled_only
def test_the_compiled_path_is_built():
    assert FAST is not None, "bridge/dns/_udpfast.c was not built: installing needs a C " \
                             "compiler and Python's headers (./dev installs them)"


@compiled_only
@pytest.mark.parametrize("udp_payload", [512, 1232, 4096])
def test_usual_queries_get_the_same_bytes_from_both_paths(udp_payload):
    tbl = table(udp_payload)
    packets = queries(random.Random(udp_payload))
    answered = compare(tbl, packets)
    assert answered > len(packets) // 3, \
        f"the compiled path answered only {answered} of {len(packets)}"


@compiled_only
@pytest.mark.parametrize(("name", "other", "qtype"), [
    ("db.apps.svc.cluster.local.", "DB.Apps.svc.cluster.local.", "SRV"),
    # Negative answers are made per zone and length of what precedes it.
    ("www.example.com.default.svc.cluster.local.", "WWW.examplf.org.default.svc.cluster.local.", "A")])
def test_an_answer_made_on_first_use_is_left_to_python_then_served(name, other, qtype):
    """SRV rotations and the negative answers of absent names are made by Python."""
    tbl = table()
    assert FAST is not None
    packet, again = (dns.message.make_query(n, qtype, id=0x0305, use_edns=0, payload=1232).to_wire()
                     for n in (name, other))
    assert FAST.answer(tbl, packet) is None, f"{name} {qtype} answered before it was made"
    expected = tbl.respond(packet, False)  # makes it
    got = FAST.answer(tbl, packet)
    assert got is not None and got[0] == expected, f"{name} {qtype}: not served as Python does"
    got = FAST.answer(tbl, again)
    assert got is not None and got[0] == tbl.respond(again, False), \
        f"{other} {qtype}, answered from what {name} made: not served as Python does"


@compiled_only
def test_fuzzed_packets_get_the_same_bytes_from_both_paths():
    tbl = table()
    rng = random.Random(19)
    compare(tbl, queries(rng))  # make the rotations and negative answers first
    seeds = queries(rng)
    packets = [mutate(rng.choice(seeds), rng, rng.randrange(1, 4)) for _ in range(20000)]
    packets += [random_question(rng) for _ in range(5000)]
    packets += [rng.randbytes(rng.randrange(0, 80)) for _ in range(2000)]
    answered = compare(tbl, packets)
    assert answered > 1000, f"only {answered} fuzzed packets answered by the compiled path"


@compiled_only
def test_a_changed_table_is_read_afresh():
    server = DnsServer(DnsSettings(listen="127.0.0.1:0", resolv_conf=""),
                       outside=lambda packet, tcp: None)
    first = server.publish(catalog())
    services = dict(catalog().services)
    del services[ServiceKey("default", "wide")]
    services[ServiceKey("default", "new")] = Service(
        ServiceKey("default", "new"), ServiceType.CLUSTER_IP, ports=(HTTP,), cluster_ips=("10.96.7.7",))
    second = server.publish(Catalog(MappingProxyType(services), ready=True, generation=7))
    assert FAST is not None
    for name in ("wide.default.svc.cluster.local.", "new.default.svc.cluster.local."):
        packet = dns.message.make_query(name, "A", id=7).to_wire()
        for tbl in (first, second):
            got = FAST.answer(tbl, packet)
            expected = tbl.respond(packet, False)
            assert got is None or got[0] == expected, f"{name}: stale or wrong answer"
    assert FAST.answer(second, dns.message.make_query("new.default.svc.cluster.local.", "A")
                       .to_wire()) is not None, "an added name is not answered by the compiled path"


def test_a_burst_gets_the_replies_and_counts_of_the_python_path():
    rng = random.Random(5)
    settings = DnsSettings(listen="127.0.0.1:0", resolv_conf="", pods="insecure",
                           consul_domain="consul")
    with DnsServer(settings, outside=lambda packet, tcp: None) as server:
        tbl = server.publish(catalog())
        usual = queries(rng)
        burst = [struct.pack(">H", i) + packet[2:] for i, packet in enumerate(
            [rng.choice(usual) for _ in range(1500)] +
            [mutate(rng.choice(usual), rng, 2) for _ in range(300)] +
            [random_question(rng) for _ in range(200)])]
        rng.shuffle(burst)
        expected: dict[bytes, bytes] = {}
        for packet in burst:
            reply = tbl.respond(packet, False)
            if reply is CHASE:  # no upstream to chase through: the CNAME chain alone
                reply = tbl.respond_slow(packet, False)
            if isinstance(reply, bytes):
                expected[packet[:2]] = reply
        before = server.metrics()
        got: dict[bytes, bytes] = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for start in range(0, len(burst), WINDOW):
                window = burst[start:start + WINDOW]
                for packet in window:
                    client.sendto(packet, server.addresses[0])
                waited = {p[:2] for p in window} & expected.keys()
                while not waited <= got.keys():
                    reply = client.recv(65535)
                    got[reply[:2]] = reply
        for qid, reply in expected.items():
            if reply != got[qid]:
                # Consul answers are shuffled per query: the same records in any order.
                theirs, mine = dns.message.from_wire(reply), dns.message.from_wire(got[qid])
                assert theirs.question[0].name.to_text().lower().endswith(".consul."), \
                    f"reply to ID {qid.hex()} differs from the Python path's:\n{mine}\n{theirs}\n" \
                    f"{got[qid].hex()}\n{reply.hex()}"
                assert records(theirs) == records(mine), f"reply to ID {qid.hex()}: other records"
        sent = len([p for p in burst if p])

        def counted() -> metrics.Report:
            report = server.metrics()
            requests = sum(report.requests.values()) - sum(before.requests.values())
            assert requests == sent, f"{requests} requests counted, {sent} sent"
            return report

        after = eventually(counted, what="every request counted")
        replies = sum(after.responses.values()) - sum(before.responses.values())
        assert replies == len(got), f"{replies} responses counted, {len(got)} received"
        spans = sum(after.spans["udp"]) - sum(before.spans["udp"])
        assert spans == replies, f"duration histogram counts {spans}, replies {replies}"
        assert server.stats["errors"] == 0


def test_a_table_published_while_waiting_answers_the_next_query():
    with DnsServer(DnsSettings(listen="127.0.0.1:0", resolv_conf=""),
                   outside=lambda packet, tcp: None) as server:
        question = dns.message.make_query("kubernetes.default.svc.cluster.local.", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            # Answered before the first publish (not ready: SERVFAIL); the serving thread
            # then waits for the next datagram with the old table current.
            client.sendto(question.to_wire(), server.addresses[0])
            first = dns.message.from_wire(client.recv(65535))
            assert first.rcode() == dns.rcode.SERVFAIL, f"before any publish: {first}"
            server.publish(catalog())
            client.sendto(question.to_wire(), server.addresses[0])
            reply = dns.message.from_wire(client.recv(65535))
        assert reply.rcode() == dns.rcode.NOERROR and records(reply) == ["10.96.0.1"], \
            f"the query after a publish was answered from the table before it:\n{reply}"


def test_ipv6_clients_get_answers_from_both_paths():
    """A handed-back packet goes back to its IPv6 peer (host, port, flowinfo, scope id)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with DnsServer(DnsSettings(listen="[::1]:0", resolv_conf=""),
                   outside=lambda packet, tcp: None) as server:
        server.publish(catalog())
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            # The first NXDOMAIN of its shape is Python's (made on first use), the second C's.
            for qid, name in enumerate(["kubernetes.default.svc.cluster.local.",
                                        "nosuch.default.svc.cluster.local.",
                                        "nosucx.default.svc.cluster.local."]):
                client.sendto(dns.message.make_query(name, "A", id=qid).to_wire(),
                              server.addresses[0])
                reply = dns.message.from_wire(client.recv(65535))
                assert reply.id == qid and reply.question[0].name.to_text() == name, reply
                expected = dns.rcode.NOERROR if qid == 0 else dns.rcode.NXDOMAIN
                assert reply.rcode() == expected, f"{name} over IPv6: {reply}"


def test_compiled_false_serves_from_python_alone(monkeypatch):
    def refuse(sock):
        raise AssertionError("dns.compiled: false asked for the compiled path")

    monkeypatch.setattr(udp_batch, "batcher", refuse)
    settings = DnsSettings(listen="127.0.0.1:0", resolv_conf="", compiled=False)
    with DnsServer(settings, outside=lambda packet, tcp: None) as server:
        server.publish(catalog())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(dns.message.make_query("kubernetes.default.svc.cluster.local.", "A")
                          .to_wire(), server.addresses[0])
            reply = dns.message.from_wire(client.recv(65535))
        assert records(reply) == ["10.96.0.1"], reply
        assert server.stats["errors"] == 0
