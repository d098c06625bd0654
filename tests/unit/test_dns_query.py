"""The qname grammar of the cluster zone (bridge.dns.query): classification only, no catalog.

Numbers in test names are the rules of docs/dns-conformance.md.
Whether a parsed name exists is answer.py's business and is tested in test_dns_answer.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from bridge.dns.query import Kind, labels, parse, reverse_name, text, zone_labels

ZONE = zone_labels("cluster.local")


def kind(name: str) -> Kind:
    return parse(name, ZONE).kind


@pytest.mark.parametrize(("name", "expected"), [
    ("cluster.local.", Kind.APEX),
    ("dns-version.cluster.local.", Kind.DNS_VERSION),
    ("dns.cluster.local.", Kind.DNS_ROOT),
    ("ns.dns.cluster.local.", Kind.NS_HOST),
    ("svc.cluster.local.", Kind.SVC_ROOT),
    ("pod.cluster.local.", Kind.POD_ROOT),
    ("default.svc.cluster.local.", Kind.NAMESPACE),
    ("web.default.svc.cluster.local.", Kind.SERVICE),
    ("web-0.web.default.svc.cluster.local.", Kind.ENDPOINT),
    ("_tcp.web.default.svc.cluster.local.", Kind.PROTOCOL),
    ("_http._tcp.web.default.svc.cluster.local.", Kind.PORT),
    ("www.example.com.", Kind.OUTSIDE),
    ("local.", Kind.OUTSIDE),
])
def test_grammar_classifies_each_name_shape(name, expected):
    assert kind(name) is expected, f"{name} parsed as {kind(name)}, expected {expected}"


def test_service_fields_are_lower_case_and_zone_keeps_client_spelling_46_47():
    q = parse("_HtTp._TcP.PhP-ApAcHe-SvC.DeFault.svc.Cluster.LOCAL.", ZONE)
    assert q.kind is Kind.PORT
    assert (q.port, q.protocol, q.service, q.namespace) == (
        "http", "tcp", "php-apache-svc", "default")
    assert q.zone == ("Cluster", "LOCAL"), "the zone part must keep the client's spelling"
    assert q.name[0] == "_HtTp", "the name as asked must be kept for owner names"


def test_endpoint_fields():
    q = parse("10-28-5-15.php-apache-svc.default.svc.cluster.local", ZONE)
    assert (q.kind, q.endpoint, q.service, q.namespace) == (
        Kind.ENDPOINT, "10-28-5-15", "php-apache-svc", "default")


@pytest.mark.parametrize("name", [
    "foo.cluster.local.",                         # 37: not svc/pod left of the zone
    "example.org.cluster.local.",                 # 37
    "a.b.c.svc1.testns.svc.cluster.local.",       # 38: three labels left of the service
    "a.b.svc1.testns.svc.cluster.local.",         # two labels that are not _port._proto
    "_http.b.svc1.testns.svc.cluster.local.",
    "x.dns.cluster.local.",
    "foo.default.svc.cluster.local.default.svc.cluster.local.",  # 58: search expansion
    "foo.default.svc.cluster.local.svc.cluster.local.",          # 58
    "api.stripe.com.cluster.local.",                             # 58
])
def test_names_outside_the_grammar_are_invalid_37_38_58(name):
    assert kind(name) is Kind.INVALID, f"{name} should be INVALID (NXDOMAIN), got {kind(name)}"


def test_wildcards_are_plain_labels_48():
    q = parse("*.default.svc.cluster.local.", ZONE)
    assert (q.kind, q.service) == (Kind.SERVICE, "*"), "`*` must not be expanded"
    assert parse("any.default.svc.cluster.local.", ZONE).service == "any"


def test_pod_names_are_their_own_kind_49():
    assert kind("10-240-0-1.podns.pod.cluster.local.") is Kind.POD
    assert kind("podns.pod.cluster.local.") is Kind.POD


def test_bare_underscore_is_not_a_protocol():
    assert kind("_.web.default.svc.cluster.local.") is Kind.ENDPOINT


def test_matching_is_ascii_case_insensitive_46():
    assert kind("WEB.DEFAULT.SVC.CLUSTER.LOCAL") is Kind.SERVICE
    # Non-ASCII letters are not folded (RFC 4343), so they never equal an ASCII zone.
    assert kind("web.default.svc.cluster.locál") is Kind.OUTSIDE


def test_zone_configuration_forms_are_equivalent():
    assert zone_labels("Cluster.Local.") == zone_labels("cluster.local") == ("cluster", "local")
    other = zone_labels("k8s.example")
    assert parse("web.ns.svc.k8s.example.", other).kind is Kind.SERVICE
    assert parse("web.ns.svc.cluster.local.", other).kind is Kind.OUTSIDE


def test_labels_from_wire_bytes_round_trip_every_octet():
    raw = [b"a\x00b", b"\xff", b"svc"]
    assert [label.encode("latin-1") for label in labels(raw)] == raw
    assert labels("a.b.") == labels("a.b") == ("a", "b")
    assert labels(".") == labels("") == ()


def test_reverse_ipv4_30_31():
    q = parse("15.5.28.10.In-Addr.Arpa.", ZONE)
    assert q.kind is Kind.REVERSE
    assert q.address == ipaddress.ip_address("10.28.5.15")
    assert q.zone == ("In-Addr", "Arpa")


def test_reverse_ipv6_uses_all_32_nibbles_32():
    address = ipaddress.ip_address("fd00::1")
    name = reverse_name(address)
    assert len(name) == 34 and name[-2:] == ("ip6", "arpa")
    q = parse(text(name).upper(), ZONE)
    assert (q.kind, q.address) == (Kind.REVERSE, address)


@pytest.mark.parametrize("name", [
    "5.28.10.in-addr.arpa.",          # too few labels
    "1.15.5.28.10.in-addr.arpa.",     # too many
    "015.5.28.10.in-addr.arpa.",      # leading zero: not canonical
    "256.5.28.10.in-addr.arpa.",
    "x.5.28.10.in-addr.arpa.",
    "in-addr.arpa.",
    "1.0.ip6.arpa.",
    ".".join(["g"] * 32) + ".ip6.arpa.",
    ".".join(["10"] * 32) + ".ip6.arpa.",
])
def test_reverse_names_that_are_not_one_address(name):
    assert kind(name) is Kind.REVERSE_OTHER


def test_reverse_name_of_ipv4():
    assert text(reverse_name(ipaddress.ip_address("10.28.5.15"))) == "15.5.28.10.in-addr.arpa."


def test_pod_names_carry_namespace_and_dashed_address_50():
    q = parse("10-240-0-1.PodNs.pod.cluster.local.", ZONE)
    assert (q.kind, q.namespace, q.service) == (Kind.POD, "podns", "10-240-0-1")
    q = parse("podns.pod.cluster.local.", ZONE)
    assert (q.kind, q.namespace, q.service) == (Kind.POD, "podns", "")
    assert kind("x.10-240-0-1.podns.pod.cluster.local.") is Kind.INVALID, "nothing below a pod"
