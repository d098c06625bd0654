"""What the cluster DNS answers (bridge.dns.answer), rule by rule, from a hand-built catalog.

Numbers in test names are the rules of docs/dns-conformance.md.
Pure: no sockets, no wire format (table and server tests cover those).
"""

from __future__ import annotations

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
from bridge.config import DnsSettings
from bridge.dns.answer import Answerer, answer
from bridge.dns.query import text
from bridge.dns.records import (
    NOT_OURS,
    SOA,
    QType,
    Rcode,
    Record,
    Response,
)

K8S = Origin(OriginKind.KUBERNETES, "east")
HTTP, HTTPS = Port("http", 80), Port("https", 443)


def pod(address: str, *ports: Port, ready: bool = True, hostname: str = "") -> Instance:
    return Instance(address, ports, K8S, ready=ready, hostname=hostname)


def service(name: str, kind: ServiceType, *, ns: str = "default", ports=(), ips=(),
            pods=(), external: str = "", publish_not_ready: bool = False) -> Service:
    return Service(ServiceKey(ns, name), kind, ports=tuple(ports), cluster_ips=tuple(ips),
                   external_name=external, instances=tuple(pods),
                   publish_not_ready=publish_not_ready)


HEADLESS, CLUSTER, EXTERNAL = (ServiceType.HEADLESS, ServiceType.CLUSTER_IP,
                               ServiceType.EXTERNAL_NAME)

SERVICES = [
    # The example from the brief: two ready pods, one not-ready pod that must never show.
    service("php-apache-svc", HEADLESS, ports=[HTTP, HTTPS], pods=[
        pod("10.28.5.15", HTTP, HTTPS), pod("10.28.3.13", HTTP, HTTPS),
        pod("10.28.9.9", HTTP, HTTPS, ready=False)]),
    service("web", HEADLESS, ports=[HTTP], pods=[
        pod("10.1.0.10", HTTP, hostname="web-0"), pod("10.1.0.11", HTTP, hostname="web-1"),
        pod("10.1.0.12", HTTP, hostname="dup-name"), pod("10.1.0.13", HTTP, hostname="dup-name"),
        pod("fd00::1", HTTP), pod("5678:abcd::", HTTP)]),
    service("kubernetes", CLUSTER, ports=[HTTPS], ips=["10.96.0.1"],
            pods=[pod("192.168.1.10", Port("https", 6443), hostname="apiserver-0")]),
    service("dns-tcp", CLUSTER, ports=[Port("", 53)], ips=["10.96.0.10"]),
    service("svc6", CLUSTER, ports=[HTTP], ips=["fd00:10::1"]),
    service("dual", CLUSTER, ports=[HTTP], ips=["10.96.0.20", "fd00:10::20"]),
    service("empty", CLUSTER, ports=[HTTP], ips=["10.96.0.30"]),
    service("hdls-empty", HEADLESS, ports=[HTTP], pods=[pod("10.2.0.1", HTTP, ready=False)]),
    service("hdls-pnr", HEADLESS, ports=[HTTP], publish_not_ready=True,
            pods=[pod("10.2.0.5", HTTP, ready=False)]),
    service("noports", HEADLESS, pods=[pod("10.2.0.20")]),
    service("udp-svc", CLUSTER, ports=[Port("dns", 53, "UDP")], ips=["10.96.0.53"]),
    service("ext", EXTERNAL, external="www.example.com"),
    service("ext-in", EXTERNAL, external="kubernetes.default.svc.cluster.local"),
    service("ext-chain", EXTERNAL, external="ext-in.default.svc.cluster.local."),
    service("ext-missing", EXTERNAL, external="nosuch.default.svc.cluster.local"),
    service("ext-loop", EXTERNAL, external="ext-loop.default.svc.cluster.local"),
    service("ext-ip", EXTERNAL, external="192.0.2.1"),
    service("api", CLUSTER, ns="prod", ports=[HTTP], ips=["10.96.1.1"]),
]
CATALOG = Catalog(MappingProxyType({s.key: s for s in SERVICES}), ready=True, generation=42)
SETTINGS = DnsSettings(listen="127.0.0.1:0", zone="cluster.local", ttl=30)
ANSWERER = Answerer(CATALOG, SETTINGS.zone, SETTINGS.ttl, ns_addresses=["10.0.0.53"])
Z = ".default.svc.cluster.local."


def ask(name: str, qtype: int = QType.A, answerer: Answerer = ANSWERER) -> Response:
    response = answerer.answer(name, qtype)
    assert response is not NOT_OURS, f"{name} should be ours"
    assert isinstance(response, Response)
    return response


def show(records: tuple[Record, ...]) -> list[str]:
    """Records as 'owner ttl TYPE data' lines, names exactly as spelled."""
    out = []
    for r in records:
        data = r.data
        fields = [getattr(data, f) for f in data.__dataclass_fields__]
        rendered = " ".join(text(f) if isinstance(f, tuple) and f and isinstance(f[0], str)
                            and data.rtype != QType.TXT else str(f) for f in fields)
        out.append(f"{text(r.name)} {r.ttl} {r.rtype.name} {rendered}")
    return out


def addresses(response: Response) -> list[str]:
    return [r.data.address for r in response.answer if r.rtype in (QType.A, QType.AAAA)]


def assert_nxdomain(response: Response, why: str = "") -> None:
    assert response.rcode is Rcode.NXDOMAIN, f"expected NXDOMAIN {why}: {response}"
    assert not response.answer
    assert_soa_authority(response)


def assert_nodata(response: Response, why: str = "") -> None:
    assert response.rcode is Rcode.NOERROR and not response.answer, \
        f"expected NODATA {why}: {response}"
    assert_soa_authority(response)


def assert_soa_authority(response: Response, zone: str = "cluster.local.") -> None:
    """45: exactly one SOA, owner = zone, TTL min(T, 300), minimum T, AA set."""
    assert response.authoritative, "negative answers must have AA"
    assert len(response.authority) == 1, f"one SOA expected: {response.authority}"
    soa = response.authority[0]
    assert isinstance(soa.data, SOA), soa
    assert text(soa.name) == zone
    assert soa.ttl == min(SETTINGS.ttl, 300)
    assert soa.data.minimum == SETTINGS.ttl, "negative TTL = SOA minimum = configured TTL"


# --- schema version, apex --------------------------------------------------------------------

def test_dns_version_txt_1():
    response = ask("dns-version.cluster.local.", QType.TXT)
    assert show(response.answer) == ["dns-version.cluster.local. 28800 TXT ('1.1.0',)"]
    assert_nodata(ask("dns-version.cluster.local.", QType.A), "for A on dns-version")


def test_soa_at_apex_41():
    response = ask("cluster.local.", QType.SOA)
    assert show(response.answer) == [
        "cluster.local. 30 SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        "42 7200 1800 86400 30"]
    assert response.authoritative


def test_soa_below_apex_is_nodata_even_for_missing_names_42():
    assert_nodata(ask("web" + Z, QType.SOA), "SOA on a service")
    assert_nodata(ask("nosuch" + Z, QType.SOA), "SOA on a missing name (CoreDNS quirk)")


def test_ns_at_apex_with_glue_43():
    response = ask("cluster.local.", QType.NS)
    assert show(response.answer) == ["cluster.local. 30 NS ns.dns.cluster.local."]
    assert show(response.additional) == ["ns.dns.cluster.local. 30 A 10.0.0.53"]


def test_apex_a_is_nodata_and_ns_dns_answers_our_address_44():
    assert_nodata(ask("cluster.local."), "A at the apex")
    assert_nodata(ask("cluster.local.", QType.AAAA), "AAAA at the apex")
    assert addresses(ask("ns.dns.cluster.local.")) == ["10.0.0.53"]
    assert_nodata(ask("ns.dns.cluster.local.", QType.AAAA))


def test_dns_label_is_an_empty_non_terminal_not_nxdomain():
    """Deliberate: NXDOMAIN would deny ns.dns.<zone> to RFC 8020 resolvers."""
    assert_nodata(ask("dns.cluster.local."))


# --- ClusterIP services ------------------------------------------------------------------------

def test_clusterip_a_is_the_cluster_ip_with_configured_ttl_2():
    response = ask("kubernetes" + Z)
    assert show(response.answer) == ["kubernetes.default.svc.cluster.local. 30 A 10.96.0.1"]
    assert response.authoritative and response.rcode is Rcode.NOERROR


def test_ipv6_clusterip_aaaa_3():
    assert addresses(ask("svc6" + Z, QType.AAAA)) == ["fd00:10::1"]


def test_dual_stack_a_and_aaaa_keep_to_their_family_4():
    assert addresses(ask("dual" + Z, QType.A)) == ["10.96.0.20"]
    assert addresses(ask("dual" + Z, QType.AAAA)) == ["fd00:10::20"]


def test_other_family_is_nodata_not_nxdomain_5():
    assert_nodata(ask("kubernetes" + Z, QType.AAAA), "AAAA of an IPv4-only ClusterIP")
    assert_nodata(ask("svc6" + Z, QType.A), "A of an IPv6-only ClusterIP")


def test_clusterip_without_endpoints_still_answers_6():
    assert addresses(ask("empty" + Z)) == ["10.96.0.30"]


def test_clusterip_srv_targets_the_service_with_glue_8():
    response = ask("_https._tcp.kubernetes" + Z, QType.SRV)
    assert show(response.answer) == [
        "_https._tcp.kubernetes.default.svc.cluster.local. 30 SRV "
        "0 100 443 kubernetes.default.svc.cluster.local."]
    assert show(response.additional) == ["kubernetes.default.svc.cluster.local. 30 A 10.96.0.1"]


def test_port_and_protocol_match_case_insensitively_9():
    response = ask("_HTTPS._TCP.kubernetes" + Z, QType.SRV)
    assert [r.data.port for r in response.answer] == [443]
    assert [r.data.port for r in ask("_dns._udp.udp-svc" + Z, QType.SRV).answer] == [53]


def test_unknown_or_unnamed_port_is_nxdomain_10():
    assert_nxdomain(ask("_http._tcp.kubernetes" + Z, QType.SRV), "for a port it lacks")
    assert_nxdomain(ask("_https._udp.kubernetes" + Z, QType.SRV), "for the wrong protocol")
    assert_nxdomain(ask("_._tcp.dns-tcp" + Z, QType.SRV), "for an unnamed port")


def test_bare_name_srv_on_clusterip_11_12():
    response = ask("dual" + Z, QType.SRV)
    # Two cluster IPs, one port: two candidates, one SRV after de-duplication, weight 50.
    assert show(response.answer) == [
        "dual.default.svc.cluster.local. 30 SRV 0 50 80 dual.default.svc.cluster.local."]
    assert show(response.additional) == [
        "dual.default.svc.cluster.local. 30 A 10.96.0.20",
        "dual.default.svc.cluster.local. 30 AAAA fd00:10::20"]
    # Unnamed ports appear on the bare name (CoreDNS), never under _port._proto.
    assert [r.data.port for r in ask("dns-tcp" + Z, QType.SRV).answer] == [53]


def test_endpoint_names_resolve_for_clusterip_services_too_20():
    assert addresses(ask("apiserver-0.kubernetes" + Z)) == ["192.168.1.10"]


# --- headless services -------------------------------------------------------------------------

def test_headless_a_is_exactly_the_ready_addresses_13_23():
    response = ask("php-apache-svc" + Z)
    assert addresses(response) == ["10.28.5.15", "10.28.3.13"], \
        "exactly the two ready pods, never the not-ready 10.28.9.9"
    assert {r.ttl for r in response.answer} == {30}
    assert response.authoritative


def test_headless_aaaa_only_ipv6_addresses_13():
    assert addresses(ask("web" + Z, QType.AAAA)) == ["fd00::1", "5678:abcd::"]
    assert "fd00::1" not in addresses(ask("web" + Z, QType.A))


def test_headless_without_ready_endpoints_is_nxdomain_14():
    for qtype in (QType.A, QType.AAAA, QType.SRV, QType.TXT):
        assert_nxdomain(ask("hdls-empty" + Z, qtype), f"for {qtype.name}")
    assert_nxdomain(ask("_http._tcp.hdls-empty" + Z, QType.SRV))


def test_headless_ipv4_only_aaaa_is_nodata_15():
    assert_nodata(ask("php-apache-svc" + Z, QType.AAAA))


def test_hostname_with_two_addresses_returns_both_16():
    assert addresses(ask("dup-name.web" + Z)) == ["10.1.0.12", "10.1.0.13"]


def test_endpoint_without_hostname_is_its_dashed_ipv4_17():
    assert addresses(ask("10-28-5-15.php-apache-svc" + Z)) == ["10.28.5.15"]
    assert_nodata(ask("10-28-5-15.php-apache-svc" + Z, QType.AAAA))


def test_endpoint_without_hostname_is_its_dashed_ipv6_18():
    assert addresses(ask("fd00--1.web" + Z, QType.AAAA)) == ["fd00::1"]
    # A trailing '-' gets a '0' (CoreDNS endpointHostname).
    assert addresses(ask("5678-abcd--0.web" + Z, QType.AAAA)) == ["5678:abcd::"]


def test_unknown_endpoint_is_nxdomain_19_59():
    assert_nxdomain(ask("bogusendpoint.web" + Z))
    assert_nxdomain(ask("foo.bar.default.svc.cluster.local."), "foo.bar.<ns> without bar")


def test_headless_srv_one_per_endpoint_and_port_with_glue_21():
    response = ask("_http._tcp.web" + Z, QType.SRV)
    # Six candidates (weight floor(100/6) = 16), five distinct targets.
    assert show(response.answer) == [
        f"_http._tcp.web{Z} 30 SRV 0 16 80 {target}.web{Z}"
        for target in ("web-0", "web-1", "dup-name", "fd00--1", "5678-abcd--0")]
    assert show(response.additional) == [
        f"web-0.web{Z} 30 A 10.1.0.10", f"web-1.web{Z} 30 A 10.1.0.11",
        f"dup-name.web{Z} 30 A 10.1.0.12", f"dup-name.web{Z} 30 A 10.1.0.13",
        f"fd00--1.web{Z} 30 AAAA fd00::1", f"5678-abcd--0.web{Z} 30 AAAA 5678:abcd::"]


def test_php_apache_srv_targets_dashed_endpoint_names_21():
    response = ask("_https._tcp.php-apache-svc" + Z, QType.SRV)
    assert show(response.answer) == [
        f"_https._tcp.php-apache-svc{Z} 30 SRV 0 50 443 10-28-5-15.php-apache-svc{Z}",
        f"_https._tcp.php-apache-svc{Z} 30 SRV 0 50 443 10-28-3-13.php-apache-svc{Z}"]
    assert [r.data.address for r in response.additional] == ["10.28.5.15", "10.28.3.13"]


def test_headless_without_ports_answers_a_but_no_srv_22():
    assert addresses(ask("noports" + Z)) == ["10.2.0.20"]
    assert_nodata(ask("noports" + Z, QType.SRV))


def test_not_ready_endpoints_are_excluded_everywhere_23():
    assert_nxdomain(ask("10-28-9-9.php-apache-svc" + Z), "for a not-ready endpoint name")
    srv = ask("_http._tcp.php-apache-svc" + Z, QType.SRV)
    assert all("10-28-9-9" not in line for line in show(srv.answer + srv.additional))
    assert ANSWERER.answer("9.9.28.10.in-addr.arpa.", QType.PTR) is NOT_OURS


def test_publish_not_ready_publishes_every_endpoint_24():
    assert addresses(ask("hdls-pnr" + Z)) == ["10.2.0.5"]
    assert addresses(ask("10-2-0-5.hdls-pnr" + Z)) == ["10.2.0.5"]


def test_protocol_label_is_an_empty_non_terminal():
    """Deliberate: `_tcp.<svc>` has SRV names below it, so NODATA rather than NXDOMAIN."""
    assert_nodata(ask("_tcp.web" + Z, QType.SRV))
    assert_nxdomain(ask("_udp.web" + Z, QType.SRV), "no UDP port: nothing below")


def test_port_names_carry_srv_only():
    """Deliberate: CoreDNS also answers A on `_port._proto` names; we keep them SRV-only."""
    assert_nodata(ask("_http._tcp.web" + Z, QType.A))


# --- ExternalName --------------------------------------------------------------------------------

def test_externalname_cname_26():
    response = ask("ext" + Z, QType.CNAME)
    assert show(response.answer) == [f"ext{Z} 30 CNAME www.example.com."]


def test_externalname_a_is_cname_then_target_27():
    outside = ask("ext" + Z)
    assert show(outside.answer) == [f"ext{Z} 30 CNAME www.example.com."]
    assert outside.chase == ("www", "example", "com"), "left for the upstream resolver"
    inside = ask("ext-in" + Z)
    assert show(inside.answer) == [
        f"ext-in{Z} 30 CNAME kubernetes{Z}", f"kubernetes{Z} 30 A 10.96.0.1"]
    chained = ask("ext-chain" + Z)
    assert show(chained.answer) == [
        f"ext-chain{Z} 30 CNAME ext-in{Z}", f"ext-in{Z} 30 CNAME kubernetes{Z}",
        f"kubernetes{Z} 30 A 10.96.0.1"]


def test_externalname_chain_to_a_missing_name_is_nxdomain_rfc6604():
    response = ask("ext-missing" + Z)
    assert response.rcode is Rcode.NXDOMAIN
    assert show(response.answer) == [f"ext-missing{Z} 30 CNAME nosuch{Z}"]
    assert_soa_authority(response)


def test_externalname_chain_to_nodata_and_loops():
    response = ask("ext-in" + Z, QType.AAAA)
    assert response.rcode is Rcode.NOERROR
    assert show(response.answer) == [f"ext-in{Z} 30 CNAME kubernetes{Z}"]
    assert_soa_authority(response)
    loop = ask("ext-loop" + Z)
    assert show(loop.answer) == [f"ext-loop{Z} 30 CNAME ext-loop{Z}"], "a loop ends the chain"


def test_names_below_externalname_are_nxdomain_and_srv_nodata_29():
    assert_nxdomain(ask("endpoint.ext" + Z))
    assert_nxdomain(ask("_http._tcp.ext" + Z, QType.SRV))
    assert_nodata(ask("ext" + Z, QType.SRV))
    assert_nodata(ask("ext" + Z, QType.MX))


def test_externalname_with_ip_literal_does_not_exist():
    assert_nxdomain(ask("ext-ip" + Z), "CoreDNS emits no CNAME for an IP literal")


# --- reverse ---------------------------------------------------------------------------------------

def test_ptr_for_cluster_ip_30():
    response = ask("1.0.96.10.in-addr.arpa.", QType.PTR)
    assert show(response.answer) == [f"1.0.96.10.in-addr.arpa. 30 PTR kubernetes{Z}"]


def test_ptr_for_endpoint_ip_31():
    response = ask("15.5.28.10.in-addr.arpa.", QType.PTR)
    assert show(response.answer) == [
        f"15.5.28.10.in-addr.arpa. 30 PTR 10-28-5-15.php-apache-svc{Z}"]
    assert show(ask("10.0.1.10.in-addr.arpa.", QType.PTR).answer) == [
        f"10.0.1.10.in-addr.arpa. 30 PTR web-0.web{Z}"]


def test_ptr_for_ipv6_endpoint_32():
    name = "1." + "0." * 27 + "0.0.d.f.ip6.arpa."
    assert show(ask(name, QType.PTR).answer) == [f"{name} 30 PTR fd00--1.web{Z}"]


def test_ptr_other_types_are_nodata_with_reverse_soa():
    response = ask("15.5.28.10.in-addr.arpa.", QType.A)
    assert response.rcode is Rcode.NOERROR and not response.answer
    assert_soa_authority(response, zone="in-addr.arpa.")


def test_ptr_for_unknown_ip_falls_through_33():
    assert ANSWERER.answer("4.3.2.1.in-addr.arpa.", QType.PTR) is NOT_OURS
    assert ANSWERER.answer("x.in-addr.arpa.", QType.PTR) is NOT_OURS


# --- existence rules ---------------------------------------------------------------------------------

def test_missing_service_in_existing_namespace_is_nxdomain_34():
    assert_nxdomain(ask("svc0" + Z))


def test_missing_namespace_is_nxdomain_35():
    assert_nxdomain(ask("svc0.svc-nons.svc.cluster.local."))
    assert_nxdomain(ask("svc-nons.svc.cluster.local."), "namespace with no services")


def test_namespace_and_roots_are_nodata_36():
    for name in ("default.svc.cluster.local.", "prod.svc.cluster.local.",
                 "svc.cluster.local.", "pod.cluster.local."):
        assert_nodata(ask(name), f"for {name}")
        assert_nodata(ask(name, QType.NS), f"for NS {name}")


def test_names_outside_the_grammar_are_nxdomain_37_38():
    assert_nxdomain(ask("foo.cluster.local."))
    assert_nxdomain(ask("a.b.c.web" + Z))


def test_txt_nodata_on_existing_and_nxdomain_on_missing_39():
    assert_nodata(ask("web" + Z, QType.TXT))
    assert_nxdomain(ask("nosuch" + Z, QType.TXT))


@pytest.mark.parametrize("qtype", [QType.MX, QType.ANY, QType.HTTPS, 13, 257, 65280])
def test_other_qtypes_nodata_or_nxdomain_40(qtype):
    assert_nodata(ask("web" + Z, qtype))
    assert_nodata(ask("web-0.web" + Z, qtype))
    assert_nxdomain(ask("nosuch" + Z, qtype))


def test_owner_names_repeat_the_question_spelling_46():
    response = ask("PhP-ApAcHe-SvC.DeFault.svc.cLuStEr.LoCaL.")
    assert {text(r.name) for r in response.answer} == {"PhP-ApAcHe-SvC.DeFault.svc.cLuStEr.LoCaL."}
    assert addresses(response) == ["10.28.5.15", "10.28.3.13"]


def test_zone_spelling_in_soa_and_srv_targets_47():
    nxd = ask("NoSuch.default.svc.cLuStEr.LoCaL.")
    assert show(nxd.authority) == [
        "cLuStEr.LoCaL. 30 SOA ns.dns.cLuStEr.LoCaL. hostmaster.cLuStEr.LoCaL. "
        "42 7200 1800 86400 30"]
    web = ask("_HtTp._TcP.WeB.default.svc.cLuStEr.LoCaL.", QType.SRV)
    assert show(web.answer)[0].endswith("web-0.web.default.svc.cLuStEr.LoCaL."), \
        "catalog names in lower case, the zone as the client spelled it"
    assert text(web.additional[0].name) == "web-0.web.default.svc.cLuStEr.LoCaL."


def test_wildcards_are_not_expanded_48():
    assert_nxdomain(ask("*.default.svc.cluster.local."))
    assert_nxdomain(ask("*.*.svc.cluster.local."))
    assert_nxdomain(ask("any.default.svc.cluster.local."))


def test_pod_records_are_not_served_49():
    assert_nxdomain(ask("10-240-0-1.default.pod.cluster.local."))
    assert_nxdomain(ask("default.pod.cluster.local."))


def test_zone_transfers_are_refused_52():
    for qtype in (QType.AXFR, QType.IXFR):
        response = ask("cluster.local.", qtype)
        assert response.rcode is Rcode.REFUSED and not response.authoritative
        assert ask("web" + Z, qtype).rcode is Rcode.REFUSED


def test_before_first_sync_missing_names_are_servfail_53():
    unsynced = Answerer(Catalog(CATALOG.services, ready=False), "cluster.local", 30)
    response = ask("nosuch" + Z, answerer=unsynced)
    assert response.rcode is Rcode.SERVFAIL
    assert_soa_authority(response)
    assert ask("svc0.svc-nons.svc.cluster.local.", answerer=unsynced).rcode is Rcode.SERVFAIL
    # What is already known is answered: only a would-be NXDOMAIN turns into SERVFAIL.
    assert addresses(ask("kubernetes" + Z, answerer=unsynced)) == ["10.96.0.1"]
    empty = Answerer(Catalog(), "cluster.local", 30)
    assert ask("php-apache-svc" + Z, answerer=empty).rcode is Rcode.SERVFAIL


def test_names_outside_the_zone_are_not_ours_57():
    assert ANSWERER.answer("www.example.com.", QType.A) is NOT_OURS
    assert ANSWERER.answer("web.default.svc.cluster.example.", QType.A) is NOT_OURS


@pytest.mark.parametrize("name", [
    "php-apache-svc.default.svc.cluster.local.default.svc.cluster.local.",
    "php-apache-svc.default.svc.cluster.local.svc.cluster.local.",
    "php-apache-svc.default.svc.cluster.local.cluster.local.",
    "api.stripe.com.default.svc.cluster.local.",
    "api.stripe.com.svc.cluster.local.",
    "api.stripe.com.cluster.local.",
])
def test_search_path_expansions_are_nxdomain_58(name):
    for qtype in (QType.A, QType.AAAA):
        assert_nxdomain(ask(name, qtype), f"for {name} {qtype.name}")


def test_ttl_comes_from_settings():
    answerer = Answerer(CATALOG, "cluster.local", 7)
    assert {r.ttl for r in ask("web" + Z, answerer=answerer).answer} == {7}
    soa = ask("nosuch" + Z, answerer=answerer).authority[0]
    assert (soa.ttl, soa.data.minimum) == (7, 7)
    long = Answerer(CATALOG, "cluster.local", 3600)
    soa = ask("nosuch" + Z, answerer=long).authority[0]
    assert (soa.ttl, soa.data.minimum) == (300, 3600), "SOA TTL is capped at 300"


def test_other_zone():
    answerer = Answerer(CATALOG, "k8s.example.", 30)
    assert addresses(ask("kubernetes.default.svc.k8s.example.", answerer=answerer)) == [
        "10.96.0.1"]
    assert answerer.answer("kubernetes" + Z, QType.A) is NOT_OURS


def test_module_level_answer_uses_settings():
    response = answer(CATALOG, "kubernetes" + Z, QType.A, SETTINGS)
    assert isinstance(response, Response)
    assert addresses(response) == ["10.96.0.1"]


def test_names_lists_every_existing_name_and_nothing_missing():
    names = {text(n) for n in ANSWERER.names()}
    for present in ("cluster.local.", "dns-version.cluster.local.", "ns.dns.cluster.local.",
                    "default.svc.cluster.local.", "php-apache-svc" + Z,
                    "10-28-5-15.php-apache-svc" + Z, "_tcp.php-apache-svc" + Z,
                    "_https._tcp.php-apache-svc" + Z, "ext" + Z, "15.5.28.10.in-addr.arpa.",
                    "1.0.96.10.in-addr.arpa.", "apiserver-0.kubernetes" + Z):
        assert present in names, f"{present} missing from names()"
    for absent in ("hdls-empty" + Z, "10-28-9-9.php-apache-svc" + Z, "ext-ip" + Z,
                   "9.9.28.10.in-addr.arpa."):
        assert absent not in names, f"{absent} must not exist"
    for name in names:
        answers = ANSWERER.answers(name)
        assert answers is not NOT_OURS
        assert answers.default.rcode is Rcode.NOERROR, f"listed {name} must exist"


def test_invalid_catalog_data_is_skipped_not_fatal():
    broken = Catalog(MappingProxyType({s.key: s for s in [
        service("bad", HEADLESS, ports=[HTTP], pods=[pod("not-an-ip", HTTP),
                                                     pod("10.9.9.9", HTTP, hostname="a.b")]),
        service("bad-ip", CLUSTER, ips=["None"], pods=[pod("10.9.9.8")]),
    ]}), ready=True)
    answerer = Answerer(broken, "cluster.local", 30)
    assert addresses(ask("bad" + Z, answerer=answerer)) == ["10.9.9.9"]
    assert addresses(ask("10-9-9-9.bad" + Z, answerer=answerer)) == ["10.9.9.9"], \
        "a hostname that is not a DNS label falls back to the dashed address"
    assert addresses(ask("bad-ip" + Z, answerer=answerer)) == ["10.9.9.8"], \
        "no usable cluster IP: answered from the endpoints"


# --- pod records and ignore_empty_service ------------------------------------------------------

def test_pods_insecure_answers_the_address_in_the_name_50():
    insecure = Answerer(CATALOG, "cluster.local", 30, pods="insecure")
    assert insecure.dynamic_pods and not ANSWERER.dynamic_pods
    assert addresses(ask("10-240-0-1.default.pod.cluster.local.", answerer=insecure)) == [
        "10.240.0.1"]
    assert_nodata(ask("10-240-0-1.default.pod.cluster.local.", QType.AAAA, answerer=insecure))
    assert addresses(ask("fd00--1.prod.pod.cluster.local.", QType.AAAA, answerer=insecure)) == [
        "fd00::1"]
    assert_nodata(ask("default.pod.cluster.local.", answerer=insecure), "for <ns>.pod")
    assert_nxdomain(ask("blah.default.pod.cluster.local.", answerer=insecure), "not an IP")
    assert_nxdomain(ask("10-240-0-1.nons.pod.cluster.local.", answerer=insecure), "no such ns")
    assert_nxdomain(ask("nons.pod.cluster.local.", answerer=insecure))
    assert_nxdomain(ask("010-1-2-3.default.pod.cluster.local.", answerer=insecure),
                    "leading zeros are not an address")
    assert ("default", "pod", "cluster", "local") in set(insecure.names())


def test_pods_verified_answers_only_known_pods_51():
    verified = Answerer(CATALOG, "cluster.local", 30, pods="verified")
    assert addresses(ask("10-28-5-15.default.pod.cluster.local.", answerer=verified)) == [
        "10.28.5.15"]
    assert addresses(ask("10-28-9-9.default.pod.cluster.local.", answerer=verified)) == [
        "10.28.9.9"], "a pod that is not ready still exists"
    assert_nxdomain(ask("10-240-0-1.default.pod.cluster.local.", answerer=verified))
    assert_nxdomain(ask("10-28-5-15.prod.pod.cluster.local.", answerer=verified),
                    "the pod is in another namespace")


def test_unknown_pods_mode_is_rejected():
    with pytest.raises(ValueError, match="pods"):
        Answerer(CATALOG, "cluster.local", 30, pods="sometimes")


def test_ignore_empty_service_hides_clusterip_without_endpoints_7():
    ignoring = Answerer(CATALOG, "cluster.local", 30, ignore_empty_service=True)
    assert_nxdomain(ask("empty" + Z, answerer=ignoring))
    assert_nxdomain(ask("_http._tcp.empty" + Z, QType.SRV, answerer=ignoring))
    assert ignoring.answer("30.0.96.10.in-addr.arpa.", QType.PTR) is NOT_OURS
    assert addresses(ask("kubernetes" + Z, answerer=ignoring)) == ["10.96.0.1"], \
        "a ClusterIP service with a ready endpoint stays"
    assert show(ask("ext" + Z, QType.CNAME, answerer=ignoring).answer) == [
        f"ext{Z} 30 CNAME www.example.com."], "ExternalName services are unaffected"
    assert_nodata(ask("default.svc.cluster.local.", answerer=ignoring))
