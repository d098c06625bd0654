"""Interoperability with `dig` (Debian's bind9-dnsutils): the README's examples, as users type them.

The catalog is the demo's (examples/demo/): the headless Service php-apache-svc with two
ready pods, and billing registered in Consul on two virtual machines. The server answers
the Consul domain, pod records (insecure) and forwards the rest to a test upstream.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
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
from bridge.dns.server import DnsServer
from tests.integration.dns_upstream import UpstreamServer

DIG = shutil.which("dig") or "/usr/bin/dig"
HTTP, HTTPS = Port("http", 80), Port("https", 443)
K8S = Origin(OriginKind.KUBERNETES, "east")


def vm(address: str, node: str) -> Instance:
    return Instance(address, (Port("", 8080),), Origin(OriginKind.CONSUL, node), node_name=node,
                    tags=("v1",))


DEMO = Catalog(MappingProxyType({s.key: s for s in [
    Service(ServiceKey("default", "php-apache-svc"), ServiceType.HEADLESS, ports=(HTTP, HTTPS),
            instances=(Instance("10.28.5.15", (HTTP, HTTPS), K8S),
                       Instance("10.28.3.13", (HTTP, HTTPS), K8S))),
    Service(ServiceKey("consul", "billing"), ServiceType.HEADLESS, ports=(Port("", 8080),),
            instances=(vm("192.0.2.21", "vm-billing-1"), vm("192.0.2.22", "vm-billing-2"))),
]}), ready=True, generation=1)


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with UpstreamServer({"www.example.test.": ["300 A 192.0.2.80"]}) as upstream:
        settings = DnsSettings(listen="[::]:0", resolv_conf="", pods="insecure",
                               consul_domain="consul", upstreams=(upstream.address,))
        with DnsServer(settings) as srv:
            srv.publish(DEMO)
            yield srv


def dig(srv: DnsServer, *args: str, at: str = "127.0.0.1") -> str:
    port = srv.addresses[0][1]
    done = subprocess.run([DIG, f"@{at}", "-p", str(port), "+time=2", "+tries=1", *args],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, f"dig failed: {done.stdout}{done.stderr}"
    return done.stdout


def section(output: str, name: str = "ANSWER") -> list[list[str]]:
    """One section of dig's output, as whitespace-split fields."""
    rows, inside = [], False
    for line in output.splitlines():
        if line.startswith(f";; {name} SECTION"):
            inside = True
        elif inside and (not line.strip() or line.startswith(";;")):
            inside = False
        elif inside:
            rows.append(line.split())
    return rows


def flags(output: str) -> set[str]:
    return set(output.split("flags:")[1].split(";")[0].split())


def test_service_a(server):
    out = dig(server, "php-apache-svc.default.svc.cluster.local")
    assert "status: NOERROR" in out and {"qr", "aa", "rd", "ra"} <= flags(out)
    assert sorted((r[1], r[3], r[4]) for r in section(out)) == [
        ("30", "A", "10.28.3.13"), ("30", "A", "10.28.5.15")]


def test_consul_service_under_the_cluster_zone(server):
    out = dig(server, "billing.consul.svc.cluster.local")
    assert sorted(r[4] for r in section(out)) == ["192.0.2.21", "192.0.2.22"]


def test_srv_with_glue(server):
    out = dig(server, "_http._tcp.php-apache-svc.default.svc.cluster.local", "SRV")
    assert sorted(r[4:] for r in section(out)) == [
        ["0", "50", "80", "10-28-3-13.php-apache-svc.default.svc.cluster.local."],
        ["0", "50", "80", "10-28-5-15.php-apache-svc.default.svc.cluster.local."]]
    assert sorted(r[4] for r in section(out, "ADDITIONAL")) == ["10.28.3.13", "10.28.5.15"]


def test_consul_domain(server):
    out = dig(server, "billing.service.consul")
    assert sorted((r[1], r[4]) for r in section(out)) == [("0", "192.0.2.21"), ("0", "192.0.2.22")]
    srv = dig(server, "_billing._v1.service.consul", "SRV")
    assert sorted(r[4:] for r in section(srv)) == [["1", "1", "8080", "c0000215.addr.dc1.consul."],
                                                   ["1", "1", "8080", "c0000216.addr.dc1.consul."]]


def test_reverse_and_pod_names(server):
    assert section(dig(server, "-x", "10.28.5.15"))[0][4] == \
        "10-28-5-15.php-apache-svc.default.svc.cluster.local."
    assert section(dig(server, "10-28-5-15.default.pod.cluster.local"))[0][4] == "10.28.5.15"


def test_negative_answers(server):
    out = dig(server, "nosuch.default.svc.cluster.local")
    assert "status: NXDOMAIN" in out and "aa" in flags(out)
    assert section(out, "AUTHORITY")[0][3] == "SOA"
    assert "status: NOERROR" in dig(server, "php-apache-svc.default.svc.cluster.local", "AAAA")


def test_forwarded_name(server):
    out = dig(server, "www.example.test")
    assert "status: NOERROR" in out and "aa" not in flags(out)
    assert [r[4] for r in section(out)] == ["192.0.2.80"]


def test_tcp_ipv6_and_no_edns(server):
    for args in (("+tcp",), ("+noedns",), ("+tcp", "+noedns")):
        out = dig(server, *args, "php-apache-svc.default.svc.cluster.local", at="::1")
        assert len(section(out)) == 2, args
