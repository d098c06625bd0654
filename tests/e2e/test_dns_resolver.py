"""`bridge run` as a pod's only resolver (issue 16), as a subprocess, upstreams on loopback.

One bridge (one DNS worker process, as by default) runs against the Kubernetes and Consul
test servers (subprocesses) and three upstream resolvers (tests/integration/dns_upstream.py)
plus a relay that forwards back to the bridge (a forwarding loop). The tests ask it over
UDP and TCP and read `/metrics` over HTTP. Waiting is polling with deadlines; TTLs are
short real ones (2 s) where time is the subject.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually
from tests.e2e.proc import Proc
from tests.integration.dns_upstream import UpstreamServer

TIMEOUT = 10.0
UPSTREAM_TIMEOUT = 1.0
# A generous margin over dns.upstream_timeout for the SERVFAIL deadline: two processes and
# a loaded 2-core machine between the query and the reply.
MARGIN = 2.0

KUBERNETES = """
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP}]
"""
POD = """
apiVersion: v1
kind: Pod
metadata: {name: web-%(i)d, namespace: default, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: web, image: web, ports: [{name: http, containerPort: 80}]}]
status:
  phase: Running
  podIP: 10.1.0.%(i)d
  podIPs: [{ip: 10.1.0.%(i)d}]
  conditions: [{type: Ready, status: "True"}]
"""
WEB = [f"10.1.0.{i}" for i in (1, 2, 3)]


class Relay:
    """A forwarder that sends every query it gets to `target` unchanged (ID included, as
    CoreDNS's forward does) and relays the reply back: put between the bridge and itself,
    a forwarding loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.target: tuple[str, int] | None = None
        self.relayed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            if self.target is None or not data:
                continue
            self.relayed += 1
            threading.Thread(target=self._one, args=(data, peer), daemon=True).start()

    def _one(self, data: bytes, peer: Any) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out, \
                contextlib.suppress(OSError):
            out.settimeout(5)
            assert self.target is not None
            out.sendto(data, self.target)
            self.sock.sendto(out.recv(65535), peer)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Bridge:
    def __init__(self, dns_port: int, http_port: int, consul_url: str) -> None:
        self.dns = ("127.0.0.1", dns_port)
        self.http = f"http://127.0.0.1:{http_port}"
        self.consul_url = consul_url

    def ask(self, name: str, qtype: str = "A", *, tcp: bool = False, qid: int | None = None,
            source: str = "127.0.0.1") -> dns.message.Message:
        query = dns.message.make_query(name, qtype, id=qid)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, self.dns[0], port=self.dns[1], timeout=TIMEOUT, source=source)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=TIMEOUT) as response:
            text = response.read().decode()
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name.startswith("bridge_dns_")}


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp: Path = tmp_path_factory.mktemp("resolver")
    (tmp / "k8s.yaml").write_text(KUBERNETES + "".join("---" + POD % {"i": i} for i in (1, 2, 3)))
    main = UpstreamServer({"www.example.test.": ["300 A 192.0.2.80"]})
    main.drop.add("black.hole.test.")
    corp = UpstreamServer({"db.corp.test.": ["60 A 10.20.0.5"]})
    short = UpstreamServer({"fresh.stale.test.": ["2 A 192.0.2.3"]})
    relay = Relay()
    settings = {"dns": {
        "listen": "127.0.0.1:0", "resolv_conf": "", "upstreams": [main.address],
        "upstream_timeout": UPSTREAM_TIMEOUT, "serve_stale": 60,
        "forward_zones": {"corp.test": [corp.address], "stale.test": [short.address],
                          "loop.test": [relay.address]},
        "allow_recursion": ["127.0.0.1/32"]}}
    (tmp / "bridge.yaml").write_text(yaml.safe_dump(settings))
    fake = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--load", str(tmp / "k8s.yaml"),
                "--write-kubeconfig", str(tmp / "kubeconfig"))
    consul = Proc("fake-consul", "--listen", "127.0.0.1:0")
    run = None
    try:
        fake.expect("fake-k8s listening")
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        run = Proc("run", "--config", str(tmp / "bridge.yaml"), "--kubeconfig",
                   str(tmp / "kubeconfig"), "--consul-addr", consul_url,
                   "--http-listen", "127.0.0.1:0")
        dns_port = int(run.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
        http_port = int(run.expect(r"http listening on 127\.0\.0\.1:(\d+)").group(1))
        relay.target = ("127.0.0.1", dns_port)
        bridge = Bridge(dns_port, http_port, consul_url)
        eventually(lambda: addresses(bridge.ask("kube-dns.kube-system.svc.cluster.local.")),
              what="the catalog answered")
        yield {"bridge": bridge, "main": main, "corp": corp, "short": short, "relay": relay,
               "run": run}
    finally:
        if run is not None:
            run.stop()
        fake.stop()
        consul.stop()
        for server in (main, corp, short):
            server.stop()
        relay.stop()


def test_kube_system_is_answered_but_not_synced_to_consul(world):
    bridge = world["bridge"]
    reply = bridge.ask("kube-dns.kube-system.svc.cluster.local.")
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["10.96.0.10"]
    with urllib.request.urlopen(f"{bridge.consul_url}/v1/catalog/services", timeout=TIMEOUT) as r:
        synced = r.read().decode()
    eventually(lambda: "web" in urllib.request.urlopen(f"{bridge.consul_url}/v1/catalog/services",
                                                  timeout=TIMEOUT).read().decode(),
          what="default/web synced to Consul")
    assert "kube-dns" not in synced, "kubernetes.deny_namespaces still keeps it from Consul"


def test_metrics_move_by_exactly_what_was_sent(world):
    bridge, corp = world["bridge"], world["corp"]
    to = corp.address
    before = bridge.metrics()
    bridge.ask("web.default.svc.cluster.local.")  # udp A NOERROR
    bridge.ask("web.default.svc.cluster.local.", "AAAA")  # udp AAAA NOERROR (NODATA)
    bridge.ask("nothing.default.svc.cluster.local.", tcp=True)  # tcp A NXDOMAIN
    bridge.ask("db.corp.test.")  # udp A: a cache miss, forwarded to corp
    bridge.ask("db.corp.test.", tcp=True)  # tcp A: a cache hit
    after = bridge.metrics()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("bridge_dns_requests_total", proto="udp", type="A") == 2
    assert delta("bridge_dns_requests_total", proto="udp", type="AAAA") == 1
    assert delta("bridge_dns_requests_total", proto="tcp", type="A") == 2
    assert delta("bridge_dns_responses_total", rcode="NOERROR") == 4
    assert delta("bridge_dns_responses_total", rcode="NXDOMAIN") == 1
    assert delta("bridge_dns_request_duration_seconds_count", proto="udp") == 3
    assert delta("bridge_dns_request_duration_seconds_count", proto="tcp") == 2
    assert delta("bridge_dns_cache_misses_total") == 1
    assert delta("bridge_dns_cache_hits_total", type="success") == 1
    assert delta("bridge_dns_forward_requests_total", to=to) == 1
    assert delta("bridge_dns_forward_failures_total", to=to) == 0
    assert corp.seen("db.corp.test.") == 1


def test_each_zone_goes_to_its_own_upstream(world):
    bridge, main, corp = world["bridge"], world["main"], world["corp"]
    assert addresses(bridge.ask("www.example.test.")) == ["192.0.2.80"]
    assert addresses(bridge.ask("db.corp.test.", "A", tcp=True)) == ["10.20.0.5"]
    assert main.seen("www.example.test.") == 1 and corp.seen("www.example.test.") == 0
    assert main.seen("db.corp.test.") == 0


def test_rotation_is_visible_over_repeated_queries(world):
    bridge = world["bridge"]
    orders = [addresses(bridge.ask("web.default.svc.cluster.local.", qid=qid))
              for qid in range(3)]
    assert all(sorted(order) == WEB for order in orders), orders
    assert {order[0] for order in orders} == set(WEB), f"each pod first once: {orders}"


def test_refused_outside_allow_recursion_with_our_zones_still_answered(world):
    bridge, main = world["bridge"], world["main"]
    seen = main.seen("www.example.test.")
    before = bridge.metrics().get(("bridge_dns_recursion_refused_total", ()), 0.0)
    for tcp in (False, True):
        refused = bridge.ask("www.example.test.", tcp=tcp, source="127.0.0.2")
        assert refused.rcode() == dns.rcode.REFUSED, refused.to_text()
        ours = bridge.ask("kube-dns.kube-system.svc.cluster.local.", tcp=tcp, source="127.0.0.2")
        assert addresses(ours) == ["10.96.0.10"]
    assert main.seen("www.example.test.") == seen, "nothing forwarded for 127.0.0.2"
    assert bridge.metrics()[("bridge_dns_recursion_refused_total", ())] - before == 2


def test_a_forwarding_loop_is_cut_and_reported_once(world):
    bridge, relay = world["bridge"], world["relay"]
    # The start-up probe (HINFO <random>.<random>.loop.test) came back through the relay.
    eventually(lambda: bridge.metrics().get(("bridge_dns_forward_loops_total", ()), 0) >= 1,
          what="the loop probe seen coming back")
    loops = bridge.metrics()[("bridge_dns_forward_loops_total", ())]
    relayed = relay.relayed
    reply = bridge.ask("anything.loop.test.")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert bridge.metrics()[("bridge_dns_forward_loops_total", ())] == loops + 1
    assert relay.relayed == relayed + 1, "forwarded once, not again and again"
    assert addresses(bridge.ask("web.default.svc.cluster.local.")), "our zones as before"


def test_uncached_name_servfail_within_the_upstream_timeout(world):
    bridge = world["bridge"]
    started = time.monotonic()
    reply = bridge.ask("black.hole.test.")  # the upstream never answers it
    took = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert took < UPSTREAM_TIMEOUT + MARGIN, f"SERVFAIL after {took:.2f}s"


def test_cached_then_counted_down_then_stale_while_the_upstream_is_stopped(world):
    bridge, short = world["bridge"], world["short"]
    first = bridge.ask("fresh.stale.test.")
    assert addresses(first) == ["192.0.2.3"] and first.answer[0].ttl == 2
    short.stop()
    lower = eventually(lambda: (r := bridge.ask("fresh.stale.test.")).answer and
                  r.answer[0].ttl < 2 and r, what="an answer from the cache with a lower TTL")
    assert lower.rcode() == dns.rcode.NOERROR and addresses(lower) == ["192.0.2.3"]
    stale = eventually(lambda: (r := bridge.ask("fresh.stale.test.", tcp=True)).answer and
                  r.answer[0].ttl == 30 and r, what="past its TTL: the stale answer (TTL 30)")
    assert stale.rcode() == dns.rcode.NOERROR and addresses(stale) == ["192.0.2.3"]
    assert bridge.metrics()[("bridge_dns_cache_served_stale_total", ())] >= 1
    uncached = bridge.ask("other.stale.test.")
    assert uncached.rcode() == dns.rcode.SERVFAIL, "nothing cached: SERVFAIL"


def test_the_loop_was_logged_once(world):
    run = world["run"]
    run.stop()
    stderr = run.stderr
    logged = [line for line in stderr.splitlines() if "forwarding loop" in line]
    assert len(logged) == 1, logged
