"""Consul's DNS interface over the catalog (bridge.dns.consul_domain), without sockets.

Numbers in test names are the rules of docs/dns-conformance.md (61-66, the Consul domain).
"""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

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
from bridge.dns.consul_domain import ConsulAnswerer, ConsulOptions, addr_label
from bridge.dns.query import text
from bridge.dns.records import NOT_OURS, SOA, SRV, QType, Rcode, Response


def vm(address: str, node: str, *tags: str, port: int = 8080, ready: bool = True,
       ports: tuple[Port, ...] | None = None) -> Instance:
    return Instance(address, ports if ports is not None else (Port("", port),),
                    Origin(OriginKind.CONSUL, node), ready=ready, node_name=node, tags=tags)


def service(name: str, *instances: Instance, ns: str = "consul") -> Service:
    return Service(ServiceKey(ns, name), ServiceType.HEADLESS, instances=instances)


K8S_POD = Instance("10.28.5.15", (Port("http", 80),), Origin(OriginKind.KUBERNETES, "east"))
CATALOG = Catalog(MappingProxyType({s.key: s for s in [
    service("billing", vm("192.0.2.21", "vm-1", "v1", "Primary"), vm("192.0.2.22", "vm-2", "v2"),
            vm("2001:db8::24", "vm-4", "v2"), vm("192.0.2.23", "vm-3", "v1", ready=False)),
    # The same Consul service seen under another namespace (another cluster's bridge).
    service("billing", vm("192.0.2.25", "k8s-sync-west", "k8s"), ns="shop"),
    service("payments", vm("192.0.2.31", "vm-5", ready=False)),
    service("dotted", vm("192.0.2.41", "vm-6", "v1.2")),
    service("named", vm("192.0.2.51", "vm-7", ports=(Port("http", 80), Port("grpc", 9090)))),
    Service(ServiceKey("default", "web"), ServiceType.HEADLESS, instances=(K8S_POD,)),
]}), ready=True, generation=11)
ANSWERER = ConsulAnswerer(CATALOG, ConsulOptions("consul"))


def ask(name: str, qtype: int = QType.A, answerer: ConsulAnswerer = ANSWERER) -> Response:
    response = answerer.answer(name, qtype)
    assert isinstance(response, Response), f"{name} should be ours"
    return response


def addresses(response: Response) -> list[str]:
    return sorted(r.data.address for r in response.answer if r.rtype in (QType.A, QType.AAAA))


def assert_soa(response: Response, zone: str = "consul.") -> None:
    assert len(response.authority) == 1
    soa = response.authority[0]
    assert isinstance(soa.data, SOA) and text(soa.name) == zone
    assert (soa.ttl, soa.data.minimum, soa.data.refresh, soa.data.retry, soa.data.expire) == \
        (0, 0, 3600, 600, 86400), "Consul's SOA defaults: negative answers are not cached"
    assert text(soa.data.mname) == "ns." + zone and text(soa.data.rname) == "hostmaster." + zone


def test_a_answers_healthy_consul_instances_with_ttl_0_61():
    response = ask("billing.service.consul.")
    assert response.rcode is Rcode.NOERROR and response.authoritative
    assert addresses(response) == ["192.0.2.21", "192.0.2.22", "192.0.2.25"], \
        "healthy instances of every namespace; never the critical 192.0.2.23"
    assert {r.ttl for r in response.answer} == {0}
    assert response.shuffle, "served in random order"
    assert addresses(ask("billing.service.consul.", QType.AAAA)) == ["2001:db8::24"]


def test_kubernetes_origin_instances_are_not_consul_answers_61():
    assert ask("web.service.consul.").rcode is Rcode.NXDOMAIN


def test_no_healthy_instance_is_nxdomain_with_soa_62():
    for name in ("payments.service.consul.", "nosuch.service.consul.", "consul-x.consul."):
        response = ask(name)
        assert response.rcode is Rcode.NXDOMAIN and not response.answer
        assert_soa(response)


def test_missing_type_is_nodata():
    response = ask("v1.billing.service.consul.", QType.AAAA)
    assert response.rcode is Rcode.NOERROR and not response.answer
    assert_soa(response)
    assert ask("billing.service.consul.", QType.MX).rcode is Rcode.NOERROR


def test_tag_filters_case_insensitively_63():
    assert addresses(ask("v1.billing.service.consul.")) == ["192.0.2.21"]
    assert addresses(ask("PRIMARY.billing.service.consul.")) == ["192.0.2.21"]
    assert addresses(ask("v2.billing.service.consul.", QType.AAAA)) == ["2001:db8::24"]
    assert ask("v3.billing.service.consul.").rcode is Rcode.NXDOMAIN


def test_a_tag_with_dots_spans_labels_63():
    assert addresses(ask("v1.2.dotted.service.consul.")) == ["192.0.2.41"]


def test_rfc2782_names_64():
    tagged = ask("_billing._v2.service.consul.", QType.SRV)
    assert sorted(r.data.target[0] for r in tagged.answer) == [
        "20010db8000000000000000000000024", "c0000216"]
    untagged = ask("_billing._tcp.service.consul.", QType.SRV)
    assert len(untagged.answer) == 4, "_tcp means no tag filter"
    short = ask("_billing._tcp.consul.", QType.SRV)
    assert len(short.answer) == 4, "`.service` may be left out for SRV"
    assert ask("_billing._tcp.dc1.consul.", QType.SRV).answer
    assert addresses(ask("_billing._v2.service.consul.")) == ["192.0.2.22"], \
        "with `.service` any qtype is a service lookup"
    bare = ask("_billing._tcp.consul.")
    assert bare.rcode is Rcode.NOERROR and not bare.answer, "the name exists: NODATA"


def test_srv_layout_with_addr_targets_and_glue_65():
    response = ask("Primary.Billing.Service.CONSUL.", QType.SRV)
    assert [(r.data.priority, r.data.weight, r.data.port, text(r.data.target))
            for r in response.answer] == [(1, 1, 8080, "c0000215.addr.dc1.CONSUL.")], \
        "Consul's SRV: priority 1, weight 1, the domain as the client spelled it"
    assert [(text(r.name), r.data.address) for r in response.additional] == [
        ("c0000215.addr.dc1.CONSUL.", "192.0.2.21")]
    assert all(not isinstance(r.data, SRV) for r in ask("billing.service.consul.").answer), \
        "SRV only when asked for"


def test_srv_target_addr_names_resolve_65():
    for name in ("c0000215.addr.consul.", "c0000215.addr.dc1.consul.",
                 "c0000215.addr.dc1.dc.consul."):
        assert addresses(ask(name)) == ["192.0.2.21"], name
    v6 = addr_label(ipaddress.ip_address("2001:db8::24"))
    assert addresses(ask(f"{v6}.addr.dc1.consul.", QType.AAAA)) == ["2001:db8::24"]
    assert ask("c0000217.addr.dc1.consul.").rcode is Rcode.NXDOMAIN, "not an address we serve"


def test_every_named_port_gets_an_srv():
    response = ask("named.service.consul.", QType.SRV)
    assert sorted(r.data.port for r in response.answer) == [80, 9090]
    assert len(response.additional) == 1


def test_datacenter_forms():
    for name in ("billing.service.dc1.consul.", "billing.service.dc1.dc.consul."):
        assert len(ask(name).answer) == 3, name
    assert ask("billing.service.dc2.consul.").rcode is Rcode.NXDOMAIN, "not our datacenter"
    other = ConsulAnswerer(CATALOG, ConsulOptions("consul", datacenter="East"))
    response = ask("billing.service.consul.", QType.SRV, answerer=other)
    assert text(response.answer[0].data.target).endswith(".addr.east.consul.")


def test_a_record_limit_caps_a_and_any_not_srv_66():
    limited = ConsulAnswerer(CATALOG, ConsulOptions("consul", a_record_limit=2))
    a = ask("billing.service.consul.", answerer=limited)
    assert len(a.answer) == 3 and a.answer_limit == 2, "all kept; the encoder picks 2"
    assert ask("billing.service.consul.", QType.ANY, answerer=limited).answer_limit == 2
    assert ask("billing.service.consul.", QType.SRV, answerer=limited).answer_limit == 0
    assert ask("v1.billing.service.consul.", answerer=limited).answer_limit == 0, \
        "no limit needed below it"


def test_any_answers_both_families():
    assert addresses(ask("v2.billing.service.consul.", QType.ANY)) == ["192.0.2.22",
                                                                      "2001:db8::24"]


def test_apex_soa_ns_and_soa_on_any_name():
    soa = ask("consul.", QType.SOA)
    assert len(soa.answer) == 1 and isinstance(soa.answer[0].data, SOA)
    assert ask("billing.service.consul.", QType.SOA).answer == soa.answer, \
        "Consul answers SOA on any name of its domain"
    assert ask("nosuch.consul.", QType.SOA).rcode is Rcode.NOERROR
    ns = ask("consul.", QType.NS)
    assert [text(r.data.target) for r in ns.answer] == ["ns.consul."]
    with_ns = ConsulAnswerer(CATALOG, ConsulOptions("consul"), ns_addresses=["10.0.0.53"])
    assert [r.data.address for r in ask("consul.", QType.NS, with_ns).additional] == ["10.0.0.53"]
    assert addresses(ask("ns.consul.", answerer=with_ns)) == ["10.0.0.53"]


def test_empty_non_terminals_are_nodata():
    for name in ("service.consul.", "addr.dc1.consul.", "_tcp.consul.", "dc1.consul."):
        response = ask(name)
        assert response.rcode is Rcode.NOERROR and not response.answer, name


def test_zone_transfers_refused():
    assert ask("consul.", QType.AXFR).rcode is Rcode.REFUSED


def test_unsynced_catalog_is_servfail_for_missing_names():
    unsynced = ConsulAnswerer(Catalog(CATALOG.services, ready=False), ConsulOptions("consul"))
    assert ask("nosuch.service.consul.", answerer=unsynced).rcode is Rcode.SERVFAIL
    assert addresses(ask("v1.billing.service.consul.", answerer=unsynced)) == ["192.0.2.21"]


def test_names_outside_the_domain_are_not_ours():
    assert ANSWERER.answer("billing.service.consul.example.", QType.A) is NOT_OURS
    assert ANSWERER.answer("consulx.", QType.A) is NOT_OURS


def test_ttl_and_domain_from_options():
    other = ConsulAnswerer(CATALOG, ConsulOptions("Consul.Example.", ttl=15))
    response = ask("billing.service.consul.example.", answerer=other)
    assert {r.ttl for r in response.answer} == {15}
    missing = ask("x.consul.example.", answerer=other)
    assert missing.authority[0].data.minimum == 15


def test_names_lists_every_existing_name():
    names = {text(n) for n in ANSWERER.names()}
    for present in ("consul.", "ns.consul.", "billing.service.consul.",
                    "primary.billing.service.consul.", "_billing._v2.service.consul.",
                    "_billing._tcp.consul.", "_billing._primary.dc1.dc.consul.",
                    "c0000215.addr.dc1.consul.", "service.consul.", "v1.2.dotted.service.consul."):
        assert present in names, present
    for absent in ("payments.service.consul.", "c0000217.addr.dc1.consul.",
                   "web.service.consul."):
        assert absent not in names, absent


@pytest.mark.parametrize("name", ["payments.service.consul.", "a.b.c.consul."])
def test_absent_names_depend_only_on_the_zone(name):
    """The table's contract: an unlisted name's answers depend only on qtype and zone."""
    response = ask(name)
    stand_in = ask("---.consul.")
    assert (response.rcode, response.authority) == (stand_in.rcode, stand_in.authority)
