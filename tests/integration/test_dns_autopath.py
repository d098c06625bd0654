"""Autopath (`dns.autopath`, CoreDNS `autopath`, checklist 60): what a pod's lookup costs.

A pod's stub resolver (glibc, musl) with the cluster's `ndots: 5` tries every search
domain before the name itself and stops at the first answer that is not NXDOMAIN. These
tests walk that search path the way the stub does and count the queries it sends: with
autopath the first one is answered (a CNAME from the expansion to the name found, then its
records), without it every search domain costs a round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

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
from tests.integration.dns_upstream import UpstreamServer

TIMEOUT = 10.0
K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP = Port("http", 80)
SEARCH = ("team.svc.cluster.local", "svc.cluster.local", "cluster.local")
CATALOG = Catalog(MappingProxyType({s.key: s for s in [
    Service(ServiceKey("default", "kubernetes"), ServiceType.CLUSTER_IP,
            ports=(Port("https", 443),), cluster_ips=("10.96.0.1",)),
    # The client pods: 127.0.0.3 in namespace team (so the test can ask from its address).
    Service(ServiceKey("team", "app"), ServiceType.HEADLESS, ports=(HTTP,),
            instances=(Instance("127.0.0.3", (HTTP,), K8S),)),
    Service(ServiceKey("team", "db"), ServiceType.CLUSTER_IP, ports=(HTTP,),
            cluster_ips=("10.96.5.5",)),
]}), ready=True, generation=1)


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer({"api.example.com.": ["300 A 192.0.2.10", "300 AAAA 2001:db8::10"]}) as up:
        yield up


def serve(upstream: UpstreamServer, **kwargs) -> DnsServer:
    server = DnsServer(DnsSettings(**{"listen": "127.0.0.1:0", "resolv_conf": "",
                                      "upstreams": (upstream.address,), "cache_size": 0,
                                      **kwargs}))
    server.publish(CATALOG)
    return server


def lookup_like_a_pod(srv: DnsServer, name: str, qtype: str = "A", *,
                      source: str = "127.0.0.1", tcp: bool = False, ndots: int = 5
                      ) -> tuple[dns.message.Message, int]:
    """What a stub resolver with `search SEARCH` and `ndots` does for `name`: (the reply
    it settles on, how many queries it sent)."""
    expansions = [f"{name}.{domain}." for domain in SEARCH]
    order = [*expansions, f"{name}."] if name.count(".") < ndots else [f"{name}.", *expansions]
    host, port = srv.addresses[0]
    send = dns.query.tcp if tcp else dns.query.udp
    for sent, asked in enumerate(order, 1):
        reply = send(dns.message.make_query(asked, qtype), host, port=port, timeout=TIMEOUT,
                     source=source)
        if reply.rcode() != dns.rcode.NXDOMAIN:
            return reply, sent
    return reply, len(order)


def records(reply: dns.message.Message) -> list[tuple[str, str, str]]:
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
            for rrset in reply.answer for rd in rrset]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_an_outside_name_costs_one_query_instead_of_four(upstream, tcp):
    with serve(upstream) as plain, serve(upstream, autopath=True,
                                         autopath_namespace="team") as sidecar:
        counts = {}
        for label, srv in (("without", plain), ("with", sidecar)):
            total = 0
            for qtype in ("A", "AAAA"):
                reply, sent = lookup_like_a_pod(srv, "api.example.com", qtype, tcp=tcp)
                assert reply.rcode() == dns.rcode.NOERROR
                total += sent
            counts[label] = total
        print(f"\nqueries for api.example.com (A and AAAA, ndots 5, 3 search domains): "
              f"{counts['without']} without autopath, {counts['with']} with it")
        assert counts == {"without": 8, "with": 2}, counts


def test_the_answer_is_a_cname_from_the_expansion_to_the_name_found(upstream):
    with serve(upstream, autopath=True, autopath_namespace="team") as srv:
        reply, sent = lookup_like_a_pod(srv, "api.example.com")
        assert sent == 1
        assert reply.question[0].name.to_text() == "api.example.com.team.svc.cluster.local."
        assert records(reply) == [
            ("api.example.com.team.svc.cluster.local.", "CNAME", "api.example.com."),
            ("api.example.com.", "A", "192.0.2.10")]
        assert reply.answer[0].ttl == 300, "the CNAME carries the found record's TTL"


def test_a_service_of_another_namespace_by_its_short_name(upstream):
    with serve(upstream, autopath=True, autopath_namespace="team") as srv:
        reply, sent = lookup_like_a_pod(srv, "kubernetes.default")
        assert sent == 1
        assert records(reply) == [
            ("kubernetes.default.team.svc.cluster.local.", "CNAME",
             "kubernetes.default.svc.cluster.local."),
            ("kubernetes.default.svc.cluster.local.", "A", "10.96.0.1")]
        own, sent = lookup_like_a_pod(srv, "db")
        assert sent == 1 and records(own) == [("db.team.svc.cluster.local.", "A", "10.96.5.5")], \
            "a name that exists at the first step is answered as is"


def test_central_bridge_knows_the_namespace_of_a_pod_client(upstream):
    with serve(upstream, autopath=True, pods="verified") as srv:
        reply, sent = lookup_like_a_pod(srv, "api.example.com", source="127.0.0.3")
        assert sent == 1 and records(reply)[-1] == ("api.example.com.", "A", "192.0.2.10")
        reply, sent = lookup_like_a_pod(srv, "api.example.com", source="127.0.0.4")
        assert sent == 4, "a client that is not a known pod walks the search path itself"


def test_nothing_found_gives_the_first_nxdomain_unchanged(upstream):
    with serve(upstream, autopath=True, autopath_namespace="team") as srv:
        host, port = srv.addresses[0]
        asked = "nowhere.example.com.team.svc.cluster.local."
        reply = dns.query.udp(dns.message.make_query(asked, "A"), host, port=port,
                              timeout=TIMEOUT)
        assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
        assert reply.question[0].name.to_text() == asked
        assert upstream.seen("nowhere.example.com.") >= 1, "the last step was asked upstream"


def test_names_outside_the_clients_namespace_are_not_walked(upstream):
    with serve(upstream, autopath=True, autopath_namespace="team") as srv:
        host, port = srv.addresses[0]
        before = upstream.seen("api.example.com.")
        for asked in ("api.example.com.other.svc.cluster.local.", "api.example.com.cluster.local."):
            reply = dns.query.udp(dns.message.make_query(asked, "A"), host, port=port,
                                  timeout=TIMEOUT)
            assert reply.rcode() == dns.rcode.NXDOMAIN, asked
        assert upstream.seen("api.example.com.") == before
