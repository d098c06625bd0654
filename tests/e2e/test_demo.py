"""`bridge demo` end to end: the headless-Service example answered over UDP and TCP."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import eventually
from tests.e2e.proc import Proc

PODS = {"10.28.3.13", "10.28.5.15"}
VMS = {"192.0.2.21", "192.0.2.22"}


@pytest.fixture(scope="module")
def demo():
    proc = Proc("demo", "--dns-listen", "127.0.0.1:0")
    try:
        kubeconfig = proc.expect(r"kubeconfig (\S+)$").group(1)
        consul_url = proc.expect(r"consul API \(test server\) at (http://\S+)").group(1)
        dns_port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
        proc.expect(r"^ready$")
        yield {"proc": proc, "dns_port": dns_port, "consul": consul_url, "kubeconfig": kubeconfig}
    finally:
        code = proc.stop()
        assert code == 0, f"demo exited {code} on SIGTERM"


def _a(port: int, name: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, dns.rdatatype.A)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=port, timeout=5)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_headless_service_answers_exactly_the_two_pods(demo, tcp):
    response = _a(demo["dns_port"], "php-apache-svc.default.svc.cluster.local.", tcp)
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())
    assert len(response.answer) == 1, response.to_text()
    rrset = response.answer[0]
    assert {r.address for r in rrset} == PODS, response.to_text()
    assert len(rrset) == 2, "exactly two A records"
    assert rrset.ttl == 30, f"TTL {rrset.ttl}, expected 30"


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_consul_registered_service_resolves_under_cluster_local(demo, tcp):
    response = _a(demo["dns_port"], "billing.consul.svc.cluster.local.", tcp)
    assert response.rcode() == dns.rcode.NOERROR, response.to_text()
    assert {r.address for r in response.answer[0]} == VMS, response.to_text()


def test_unknown_service_is_nxdomain(demo):
    response = _a(demo["dns_port"], "nope.default.svc.cluster.local.")
    assert response.rcode() == dns.rcode.NXDOMAIN, response.to_text()


def test_dig_shows_the_two_records(demo):
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(demo["dns_port"]), "+short",
         "php-apache-svc.default.svc.cluster.local"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    assert set(out.split()) == PODS, out


def test_consul_catalog_lists_the_mirrored_instances(demo):
    def mirrored() -> list[dict]:
        with urllib.request.urlopen(f"{demo['consul']}/v1/catalog/service/php-apache-svc",
                                    timeout=5) as response:
            entries = json.load(response)
        assert {e["ServiceAddress"] for e in entries} == PODS, entries
        return entries

    # Readiness is about DNS; the Consul write follows on its own schedule: poll for it.
    entries = eventually(mirrored, 30, "the demo's pods mirrored into Consul")
    for entry in entries:
        assert entry["Node"] == "k8s-sync-demo"
        assert entry["ServicePort"] == 80
        assert "k8s" in entry["ServiceTags"]
        assert entry["ServiceMeta"]["external-k8s-ns"] == "default"
        assert entry["ServiceMeta"]["bridge-owner"] == "demo"


def test_demo_exits_zero_on_sigint():
    proc = Proc("demo", "--dns-listen", "127.0.0.1:0")
    proc.expect(r"^ready$")
    assert proc.stop(signal.SIGINT) == 0


def test_consul_service_is_materialised_for_kubectl(demo):
    """The VM service appears in Kubernetes as a headless Service with an EndpointSlice."""
    def kubectl(*args: str) -> str:
        return subprocess.run(["kubectl", "--kubeconfig", demo["kubeconfig"], *args], capture_output=True,
                              text=True, timeout=30, check=True).stdout
    found = False
    for _ in range(100):
        out = kubectl("get", "endpointslices", "-n", "consul", "-l", "kubernetes.io/service-name=billing",
                      "-o", "json")
        slices = json.loads(out)["items"]
        if {a for s in slices for e in s["endpoints"] for a in e["addresses"]} == VMS:
            found = True
            break
        proc_alive = demo["proc"].p.poll() is None
        assert proc_alive, "demo died"
    assert found, f"EndpointSlices of consul/billing: {out}"
    svc = json.loads(kubectl("get", "service", "billing", "-n", "consul", "-o", "json"))
    assert svc["spec"]["clusterIP"] == "None"
