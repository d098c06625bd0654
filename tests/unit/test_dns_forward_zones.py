"""Forward zones, upstream health and policy, client networks, loop recognition (pure)."""

from __future__ import annotations

import random

import dns.message
import pytest

from bridge.dns.forward_zones import MAX_FAILS, ROOT, ForwardZones, zones_from
from bridge.dns.loop import LoopGuard
from bridge.dns.recursion import ClientNetworks
from bridge.dns.upstream import search_domains

A, B, C, D = ("192.0.2.1", 53), ("192.0.2.2", 53), ("192.0.2.3", 5300), ("192.0.2.4", 53)


def q(name: str, qtype: str = "A", qid: int = 7) -> bytes:
    return dns.message.make_query(name, qtype, id=qid).to_wire()


def test_most_specific_zone_wins_and_dot_takes_the_rest():
    zones = ForwardZones(zones_from({"example.com": [A], "corp.example.com": [B]}, [C]))
    assert zones.route(q("www.corp.example.com.")).zone == "corp.example.com"
    assert zones.route(q("CORP.Example.COM.")).zone == "corp.example.com", "case ignored"
    assert zones.route(q("www.example.com.")).zone == "example.com"
    assert zones.route(q("xcorp.example.com.")).zone == "example.com", "labels, not suffix bytes"
    assert zones.route(q("example.org.")).zone == ROOT
    assert [h.address for h in zones.route(q("example.org.")).upstreams] == [C]


def test_without_a_default_names_outside_every_zone_have_no_route():
    zones = ForwardZones(zones_from({"consul": [A]}, []))
    assert zones.route(q("web.service.consul.")) is not None
    assert zones.route(q("example.org.")) is None


def test_an_explicit_dot_wins_over_the_default_upstreams():
    zones = ForwardZones(zones_from({".": [A]}, [C]))
    assert [h.address for h in zones.route(q("example.org.")).upstreams] == [A]


def test_failing_upstream_goes_last_until_it_answers():
    zones = ForwardZones(zones_from({}, [A, B]))
    group = zones.route(q("example.org."))
    first = group.upstreams[0]
    for _ in range(MAX_FAILS - 1):
        assert not first.failed()
    assert [h.address for h in group.order()] == [A, B], "one failure is not enough"
    assert first.failed(), "MAX_FAILS in a row: down"
    assert [h.address for h in group.order()] == [B, A], "a down upstream is tried last"
    first.answered()
    assert [h.address for h in group.order()] == [A, B], "answered again: back in its place"


def test_health_is_shared_by_the_zones_an_upstream_serves():
    zones = ForwardZones(zones_from({"consul": [A, B]}, [A, C]))
    for _ in range(MAX_FAILS):
        zones.route(q("x.consul.")).upstreams[0].failed()
    assert [h.address for h in zones.route(q("example.org.")).order()] == [C, A]


def test_random_policy_varies_the_order_and_still_puts_down_ones_last():
    zones = ForwardZones(zones_from({}, [A, B, C, D]), "random", random.Random(1))
    group = zones.route(q("example.org."))
    orders = {tuple(h.address for h in group.order()) for _ in range(50)}
    assert len(orders) > 5, f"random order: {orders}"
    down = group.upstreams[0]
    for _ in range(MAX_FAILS):
        down.failed()
    assert all(group.order()[-1] is down for _ in range(20))


def test_sequential_policy_keeps_the_configured_order():
    group = ForwardZones(zones_from({}, [A, B, C])).route(q("example.org."))
    assert {tuple(h.address for h in group.order()) for _ in range(20)} == {(A, B, C)}


@pytest.mark.parametrize(("address", "allowed"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("10.1.2.3", True), ("172.20.0.1", True),
    ("192.168.1.1", True), ("100.64.0.7", True), ("::1", True), ("fd00::1", True),
    ("::ffff:10.0.0.1", True), ("fe80::1%eth0", True),
    ("8.8.8.8", False), ("203.0.113.9", False), ("2001:db8::1", False),
    ("::ffff:8.8.8.8", False), ("not-an-address", False),
])
def test_default_recursion_networks_are_loopback_and_private(address, allowed):
    from bridge.config import DnsSettings

    assert ClientNetworks(DnsSettings().allow_recursion).allows(address) is allowed


def test_recursion_networks_as_configured():
    nets = ClientNetworks(["127.0.0.1/32"])
    assert nets.allows("127.0.0.1") and not nets.allows("127.0.0.2")
    assert not ClientNetworks([]).allows("127.0.0.1"), "empty: nobody may recurse"


def test_loop_guard_knows_our_queries_and_probes():
    guard = LoopGuard("11.22", [".", "consul"])
    probes = dict(guard.probe_queries())
    assert set(probes) == {".", "consul"}
    probe = dns.message.from_wire(probes["consul"])
    assert probe.question[0].name.to_text() == "11.22.consul."
    assert probe.question[0].rdtype == 13, "HINFO, as CoreDNS's loop plugin"
    assert guard.came_back(probes["."], sent=set()), "a probe back, whatever its ID"
    assert guard.came_back(q("11.22.consul.", "HINFO", qid=99), sent=set())
    assert not guard.came_back(q("11.22.consul.", "A"), sent=set()), "probes are HINFO only"
    packet = q("www.example.org.", qid=0x1234)
    sent = {b"\x12\x34" + packet[12:].lower()}
    assert guard.came_back(packet, sent), "our ID and question, out upstream now"
    assert not guard.came_back(q("www.example.org.", qid=0x1235), sent), "another ID: a client"


def test_loop_is_logged_once_and_counted_every_time(caplog):
    guard = LoopGuard("1.2", ["."])
    for _ in range(3):
        guard.report(q("www.example.org."), ("127.0.0.1", 5353))
    assert guard.count == 3
    logged = [r for r in caplog.records if "forwarding loop" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert "www.example.org." in logged[0].getMessage()


def test_search_domains_last_line_wins():
    text = "search a.example b.example\nnameserver 10.0.0.1\nsearch default.svc.cluster.local. svc.cluster.local\n"
    assert search_domains(text) == ["default.svc.cluster.local", "svc.cluster.local"]
    assert search_domains("nameserver 10.0.0.1\n") == []
