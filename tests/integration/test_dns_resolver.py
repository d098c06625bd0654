"""The bridge as a pod's only resolver (issue 16), in process, against real upstream servers.

The cache (with an injected clock: TTLs and serve-stale), identical concurrent misses
made one upstream query, per-zone forwarding, a failing upstream skipped until it answers,
loops cut, recursion only for allowed client networks, and the counts `metrics()` reports.
`tests/e2e/test_dns_resolver.py` asks the same of `bridge run` as a subprocess.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Iterator
from types import MappingProxyType

import dns.message
import dns.query
import dns.rcode
import pytest

from bridge.catalog.model import Catalog, Port, Service, ServiceKey, ServiceType
from bridge.config import DnsSettings
from bridge.dns import listeners
from bridge.dns.forward_zones import MAX_FAILS
from bridge.dns.server import DnsServer
from tests.integration.dns_upstream import UpstreamServer
from tests.integration.harness import eventually

TIMEOUT = 10.0
CATALOG = Catalog(MappingProxyType({s.key: s for s in [
    Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP,
            ports=(Port("https", 443),), cluster_ips=("10.96.0.1",)),
]}), ready=True, generation=1)
OURS = "kubernetes.default.svc.cluster.local."


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def serve(**kwargs) -> DnsServer:
    options = {k: kwargs.pop(k) for k in ("cache_clock", "upstream_timeout", "probe_loops")
               if k in kwargs}
    server = DnsServer(DnsSettings(**{"listen": "127.0.0.1:0", "resolv_conf": "", **kwargs}),
                       **options)
    server.publish(CATALOG)
    return server


def ask(srv: DnsServer, name: str, qtype: str = "A", *, source: str = "127.0.0.1",
        tcp: bool = False, qid: int | None = None) -> dns.message.Message:
    host, port = srv.addresses[0]
    query = dns.message.make_query(name, qtype, id=qid)
    if tcp:
        return dns.query.tcp(query, host, port=port, timeout=TIMEOUT, source=source)
    return dns.query.udp(query, host, port=port, timeout=TIMEOUT, source=source)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer({"www.example.test.": ["300 A 192.0.2.80"],
                         "short.example.test.": ["10 A 192.0.2.81"],
                         "slow.example.test.": ["300 A 192.0.2.82"]}) as server:
        yield server


def test_second_ask_is_answered_from_the_cache_with_the_ttl_counted_down(upstream):
    clock = Clock()
    with serve(upstreams=(upstream.address,), cache_clock=clock) as srv:
        first = ask(srv, "www.example.test.")
        assert addresses(first) == ["192.0.2.80"] and first.answer[0].ttl == 300
        clock.now += 100
        for tcp in (False, True):
            again = ask(srv, "WWW.example.TEST.", tcp=tcp)
            assert addresses(again) == ["192.0.2.80"], again.to_text()
            assert again.answer[0].ttl == 200, "counted down by the 100 s it was kept"
            assert again.question[0].name.to_text() == "WWW.example.TEST.", "client's spelling"
        assert upstream.seen("www.example.test.") == 1, "one upstream query for three asks"
        clock.now += 200
        ask(srv, "www.example.test.")
        assert upstream.seen("www.example.test.") == 2, "expired after its TTL: asked again"
        got = srv.metrics().totals
        from bridge.dns import metrics
        assert (got[metrics.HITS], got[metrics.MISSES]) == (2, 2), got


def test_negative_answers_are_cached_for_the_soa_minimum(upstream):
    """The test upstream's SOA: TTL 300, minimum 300 (RFC 2308: the lesser)."""
    clock = Clock()
    with serve(upstreams=(upstream.address,), cache_clock=clock) as srv:
        assert ask(srv, "nothing.example.test.").rcode() == dns.rcode.NXDOMAIN
        clock.now += 299
        assert ask(srv, "nothing.example.test.").rcode() == dns.rcode.NXDOMAIN
        assert upstream.seen("nothing.example.test.") == 1
        clock.now += 1
        ask(srv, "nothing.example.test.")
        assert upstream.seen("nothing.example.test.") == 2


def test_identical_concurrent_misses_make_one_upstream_query(upstream):
    upstream.delay["slow.example.test."] = 0.3  # all five arrive while the first is out
    with serve(upstreams=(upstream.address,)) as srv, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        for qid in range(100, 105):
            sock.sendto(dns.message.make_query("slow.example.test.", "A", id=qid).to_wire(),
                        srv.addresses[0])
        replies = [dns.message.from_wire(sock.recv(4096)) for _ in range(5)]
        assert sorted(r.id for r in replies) == list(range(100, 105)), "each gets its own ID"
        assert all(addresses(r) == ["192.0.2.82"] for r in replies)
        assert upstream.seen("slow.example.test.") == 1, "one upstream query for five misses"


def test_serve_stale_when_every_upstream_fails(upstream):
    clock = Clock()
    with serve(upstreams=(upstream.address,), cache_clock=clock, serve_stale=60,
               upstream_timeout=0.5) as srv:
        assert addresses(ask(srv, "short.example.test.")) == ["192.0.2.81"]
        upstream.stop()
        clock.now += 10  # expired
        stale = ask(srv, "short.example.test.")
        assert stale.rcode() == dns.rcode.NOERROR and addresses(stale) == ["192.0.2.81"]
        assert stale.answer[0].ttl == 30, "RFC 8767: stale answers carry TTL 30"
        assert srv.metrics().stale == 1
        clock.now += 60  # past the stale window
        assert ask(srv, "short.example.test.").rcode() == dns.rcode.SERVFAIL


def test_each_zone_goes_to_its_own_upstreams(upstream):
    with UpstreamServer({"db.corp.test.": ["60 A 10.20.0.5"]}) as corp, \
            serve(upstreams=(upstream.address,),
                  forward_zones={"corp.test": (corp.address,)}) as srv:
        assert addresses(ask(srv, "db.corp.test.")) == ["10.20.0.5"]
        assert addresses(ask(srv, "www.example.test.")) == ["192.0.2.80"]
        assert (corp.seen("db.corp.test."), upstream.seen("db.corp.test.")) == (1, 0)
        assert (corp.seen("www.example.test."), upstream.seen("www.example.test.")) == (0, 1)
        sent = srv.metrics().upstreams
        assert sent == {corp.address: [2, 0], upstream.address: [2, 0]}, \
            f"each: its zone's loop probe and one query: {sent}"


def _quiet_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999), where no socket of the
    forwarder's lands by chance before an upstream is started there again."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no quiet port free")


def test_a_failing_upstream_is_skipped_until_it_answers_again(upstream):
    port = _quiet_port()
    dead = f"127.0.0.1:{port}"
    with serve(forward_zones={".": (dead, upstream.address)}, cache_size=0,
               probe_loops=False) as srv:
        for _ in range(MAX_FAILS):
            assert addresses(ask(srv, "www.example.test.")) == ["192.0.2.80"]
        tries = srv.metrics().upstreams[dead]
        assert tries == [MAX_FAILS, MAX_FAILS], "tried first while healthy, refused each time"
        for _ in range(3):
            assert addresses(ask(srv, "www.example.test.")) == ["192.0.2.80"]
        assert srv.metrics().upstreams[dead][0] == MAX_FAILS, "down: skipped"
        assert not srv._forwarder.sent, \
            "exchanges that moved on after a refusal are forgotten when they end"  # type: ignore[union-attr]
        with UpstreamServer({"www.example.test.": ["300 A 192.0.2.99"]}, port=port) as back:
            # The health probe (`. NS` every 0.5 s, as CoreDNS) finds it answering again.
            eventually(lambda: back.seen(".") >= 1, what="a health probe of the down upstream")
            eventually(lambda: addresses(ask(srv, "www.example.test.")) == ["192.0.2.99"],
                       what="the upstream that answers again is asked first again")


def test_a_forwarded_query_that_comes_back_is_answered_servfail_not_forwarded_again(caplog):
    caplog.set_level(logging.WARNING)
    bound = listeners.bind("127.0.0.1", 0)
    address = f"127.0.0.1:{bound.port}"
    srv = DnsServer(DnsSettings(listen=address, resolv_conf="", upstreams=(address,),
                                upstream_timeout=5.0))
    srv.publish(CATALOG)
    srv.start((bound.udp, bound.tcp))
    try:
        eventually(lambda: srv.metrics().totals[_loops()] >= 1,
                   what="the start-up probe seen coming back")
        forwarded = srv._forwarder.stats["forwarded"]  # type: ignore[union-attr]
        loops = srv.metrics().totals[_loops()]
        reply = ask(srv, "www.example.org.")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert srv.metrics().totals[_loops()] == loops + 1, "the query came back once"
        assert srv._forwarder.stats["forwarded"] == forwarded + 1, \
            "one upstream query for one client query: no amplification"  # type: ignore[union-attr]
        assert addresses(ask(srv, OURS)) == ["10.96.0.1"], "our zones are answered as before"
        logged = [r for r in caplog.records if "forwarding loop" in r.getMessage()]
        assert len(logged) == 1, "reported once"
    finally:
        srv.stop()


def _loops() -> int:
    from bridge.dns import metrics

    return metrics.LOOPS


def test_recursion_only_for_allowed_client_networks(upstream):
    with serve(listen="127.0.0.1:0", upstreams=(upstream.address,),
               allow_recursion=("127.0.0.1/32",)) as srv:
        for tcp in (False, True):
            refused = ask(srv, "www.example.test.", source="127.0.0.2", tcp=tcp)
            assert refused.rcode() == dns.rcode.REFUSED, refused.to_text()
            assert addresses(ask(srv, OURS, source="127.0.0.2", tcp=tcp)) == ["10.96.0.1"], \
                "our zones are still answered"
        assert upstream.seen("www.example.test.") == 0, "nothing forwarded for it"
        assert addresses(ask(srv, "www.example.test.", source="127.0.0.1")) == ["192.0.2.80"]
        from bridge.dns import metrics
        assert srv.metrics().totals[metrics.NOT_RECURSIVE] == 2


def test_metrics_count_what_was_sent(upstream):
    from bridge.dns import metrics

    with serve(upstreams=(upstream.address,), probe_loops=False) as srv:
        before = srv.metrics()
        ask(srv, OURS)
        ask(srv, OURS, "AAAA")
        ask(srv, "nothing.default.svc.cluster.local.")
        ask(srv, "www.example.test.", tcp=True)
        ask(srv, "www.example.test.")
        after = eventually(lambda: (m := srv.metrics()).totals[metrics.ANSWERED] ==
                           before.totals[metrics.ANSWERED] + 5 and m)

        def delta(mapping_after, mapping_before):
            return {k: v - mapping_before.get(k, 0) for k, v in mapping_after.items()
                    if v != mapping_before.get(k, 0)}

        assert delta(after.requests, before.requests) == {("udp", "A"): 3, ("udp", "AAAA"): 1,
                                                          ("tcp", "A"): 1}
        assert delta(after.responses, before.responses) == {"NOERROR": 4, "NXDOMAIN": 1}
        assert after.totals[metrics.MISSES] - before.totals[metrics.MISSES] == 1
        assert after.totals[metrics.HITS] - before.totals[metrics.HITS] == 1
        assert after.upstreams[upstream.address][0] - \
            before.upstreams.get(upstream.address, [0, 0])[0] == 1
        assert sum(after.spans["udp"]) - sum(before.spans["udp"]) == 4
        assert sum(after.spans["tcp"]) - sum(before.spans.get("tcp", [])) == 1
