"""The sidecar of deploy/sidecar, run as its container would run, with no Kubernetes access.

A central bridge (`bridge run` against the Kubernetes API test server) first registers a
headless Service of its cluster in the Consul test server, which also holds a service of
two virtual machines; then the central bridge stops. The sidecar runs the container's exact
args and environment and the ConfigMap's settings (only addresses rewritten), with no
KUBERNETES_SERVICE_HOST, no kubeconfig and no service-account directory. It must answer the
Service under its cluster.local name from what the central bridge registered: the central
bridge and the sidecar have the same cluster id and node name, so these are registrations
"of its own", which a central bridge would leave out. Everything runs as subprocesses.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e import container
from tests.e2e.proc import Proc
from tests.e2e.test_shutdown import http
from tests.integration.dns_upstream import UpstreamServer
from tests.integration.harness import namespace, pod, service
from tests.unit.test_deploy_manifests import one, render, running

DIG = shutil.which("dig") or "/usr/bin/dig"
CART_PODS = {"cart-0": "10.1.0.11", "cart-1": "10.1.0.12"}
VMS = {"vm-billing-1": "192.0.2.21", "vm-billing-2": "192.0.2.22"}
OUTSIDE = "outside.example.test."
OUTSIDE_IP = "192.0.2.80"


def cluster_manifests(path: Path) -> Path:
    """Namespace shop with the headless Service cart and its two ready pods."""
    docs = [namespace("shop"),
            service("cart", "shop", headless=True, selector={"app": "cart"},
                    ports=[{"name": "http", "port": 80, "targetPort": 8080}])]
    docs += [pod(name, ip, "shop", labels={"app": "cart"},
                 ports=[{"name": "http", "containerPort": 8080}])
             for name, ip in CART_PODS.items()]
    path.write_text("---\n".join(json.dumps(doc) + "\n" for doc in docs))
    return path


def vm_registrations(path: Path) -> Path:
    """billing on two virtual machines, registered straight in Consul."""
    path.write_text(json.dumps([
        {"Node": node, "Address": ip,
         "Service": {"ID": f"billing-{node}", "Service": "billing", "Port": 8080},
         "Check": {"CheckID": f"billing-{node}", "Name": "http", "ServiceID": f"billing-{node}",
                   "Status": "passing"}}
        for node, ip in VMS.items()]))
    return path


@dataclass
class Registered:
    """The Consul test server, holding what a central bridge of cluster `cluster_id`
    registered for shop/cart, plus billing."""

    consul_url: str
    cluster_id: str


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    tmp = tmp_path_factory.mktemp("central")
    central_settings = running(render("central"), one(render("central"), "Deployment", "bridge"),
                               tmp).settings
    sidecar_settings = running(render("sidecar"), one(render("sidecar"), "Deployment"),
                               tmp).settings
    # What makes these registrations "its own" to the sidecar: the same owner marker and
    # node, so the filter a central bridge applies to what it wrote would drop them all.
    assert (sidecar_settings.cluster_id, sidecar_settings.node_name) == \
        (central_settings.cluster_id, central_settings.node_name)
    kubeconfig = tmp / "kubeconfig"
    kube = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig", str(kubeconfig),
                "--load", str(cluster_manifests(tmp / "cluster.json")))
    consul = Proc("fake-consul", "--listen", "127.0.0.1:0",
                  "--load", str(vm_registrations(tmp / "vms.json")))
    try:
        kube.expect("fake-k8s listening")
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        central = Proc("run", "--kubeconfig", str(kubeconfig), "--consul-addr", consul_url,
                       "--cluster-id", central_settings.cluster_id,
                       "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
        try:
            def cart_registered() -> bool:
                entries = http("GET", consul_url + "/v1/health/service/cart")
                return {e["Service"]["Address"] for e in entries} == set(CART_PODS.values())

            eventually(cart_registered, 30, "the central bridge registered shop/cart in Consul")
        finally:
            assert central.stop() == 0, central.stderr[-3000:]
        yield Registered(consul_url, central_settings.cluster_id)
    finally:
        kube.stop()
        consul.stop()


@dataclass
class Sidecar:
    proc: Proc
    dns_port: int
    http_url: str


def start_sidecar(consul_url: str, upstream: str, tmp_path: Path,
                  timing_env: dict[str, str] | None = None,
                  kubelet_env: dict[str, str] | None = None) -> Sidecar:
    objects = render("sidecar")
    proc = container.start(
        objects, one(objects, "Deployment"), tmp_path,
        settings={"dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
                  "dns.upstreams": [upstream]},
        env={"CONSUL_HTTP_ADDR": consul_url}, timing_env=timing_env, kubelet_env=kubelet_env)
    dns_port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
    http_url = "http://" + proc.expect(r"http listening on (\S+) ").group(1)
    return Sidecar(proc, dns_port, http_url)


def readyz(url: str) -> tuple[int, str]:
    try:
        return 200, http("GET", url + "/readyz")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def dig(port: int, *args: str) -> list[str]:
    done = subprocess.run([DIG, "@127.0.0.1", "-p", str(port), "+short", "+time=3", "+tries=1",
                           *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"dig {args} failed: {done.stdout}{done.stderr}"
    return done.stdout.split("\n")[:-1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("in_a_pod", [False, True], ids=["no-kubernetes-env", "kubelet-env"])
def test_the_sidecar_answers_its_clusters_services_and_consuls_without_kubernetes(
        registered, tmp_path, in_a_pod):
    """`kubelet-env`: as in a real pod, the kubelet names an API server (here a closed port)
    even though no token is mounted; the sidecar must not try it."""
    kubelet_env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                   "KUBERNETES_SERVICE_PORT": str(closed_port())} if in_a_pod else None
    since = len(http("GET", registered.consul_url + "/_admin/requests"))
    with UpstreamServer({OUTSIDE: [f"300 A {OUTSIDE_IP}"]}) as upstream:
        sidecar = start_sidecar(registered.consul_url, upstream.address, tmp_path,
                                kubelet_env=kubelet_env)
        try:
            eventually(lambda: readyz(sidecar.http_url) == (200, "ready\n"), 30,
                 f"the sidecar ready (last: {readyz(sidecar.http_url)})")

            assert set(dig(sidecar.dns_port, "cart.shop.svc.cluster.local", "A")) == \
                set(CART_PODS.values()), "the headless Service's pods, as the central bridge registered them"
            assert set(dig(sidecar.dns_port, "billing.consul.svc.cluster.local", "A")) == \
                set(VMS.values()), "the VM service, under sync.consul_namespace"
            assert set(dig(sidecar.dns_port, "billing.service.consul", "A")) == set(VMS.values()), \
                "the VM service, under dns.consul_domain"
            assert dig(sidecar.dns_port, OUTSIDE, "A") == [OUTSIDE_IP], "forwarded upstream"
            assert upstream.seen(OUTSIDE) >= 1, "the upstream was asked"
            assert upstream.seen("cart.shop.svc.cluster.local.") == 0, "answered, not forwarded"
        finally:
            assert sidecar.proc.stop() == 0, sidecar.proc.stderr[-3000:]

    log = sidecar.proc.stderr
    assert "kubernetes" not in log.lower(), f"the sidecar touched Kubernetes: {log[-3000:]}"
    sent = http("GET", registered.consul_url + f"/_admin/requests?since={since}")
    writes = [(r["method"], r["path"]) for r in sent if r["method"] != "GET"]
    assert sent and not writes, f"the sidecar writes nothing to Consul; it sent {writes}"


WAIT = 1  # consul.wait for the load test: each blocking query expires every second or so
REISSUES = 3  # expiries per query the idle window must hold


def test_an_idle_sidecar_only_reissues_blocking_queries_whose_wait_expired(registered, tmp_path):
    """Consul's load per sidecar at rest: one blocking query per watched path, sent again
    only after its wait expired without a change; nothing polls and nothing is written."""
    consul = registered.consul_url
    names = sorted(http("GET", consul + "/v1/catalog/services"))
    # The catalog, each service, and the clusters' claims (who is alive: bridge/ha/clusters.py).
    expected = {"/v1/catalog/services", "/v1/kv/bridge/clusters/",
                *(f"/v1/health/service/{name}" for name in names)}
    assert {"/v1/health/service/cart", "/v1/health/service/billing"} <= expected
    with UpstreamServer() as upstream:
        sidecar = start_sidecar(consul, upstream.address, tmp_path,
                                timing_env={"BRIDGE_CONSUL_WAIT": str(WAIT)})
        try:
            eventually(lambda: readyz(sidecar.http_url)[0] == 200, 30, "the sidecar ready")
            # From here on nothing changes in Consul: the sidecar is at rest.
            since = len(http("GET", consul + "/_admin/requests"))

            def idle_window() -> list[dict[str, Any]] | None:
                sent = http("GET", consul + f"/_admin/requests?since={since}")
                per_path = {path: sum(1 for r in sent if r["path"] == path) for path in expected}
                return sent if min(per_path.values()) >= REISSUES else None

            sent = eventually(idle_window, 30 * WAIT + 30,
                        f"every watched path re-issued {REISSUES} times")
        finally:
            assert sidecar.proc.stop() == 0, sidecar.proc.stderr[-3000:]

    unexpected = sorted({(r["method"], r["path"]) for r in sent
                         if r["method"] != "GET" or r["path"] not in expected})
    assert not unexpected, f"at rest the sidecar sends only its blocking queries: {unexpected}"
    for record in sent:
        query = record["query"]
        what = f"{record['path']}?{query}"
        assert record["status"] == 200, f"{what} answered {record['status']}"
        assert query.get("index") and query.get("wait") == [f"{WAIT}s"], \
            f"{what} is not a blocking query with the configured wait"
        # The server's own measure of the request: one that returned because something
        # changed, or that did not block, took about nothing. 0.9: its timer and its
        # stopwatch are different clocks.
        assert record["took"] >= 0.9 * WAIT, \
            f"{what} returned after {record['took']:.3f}s, before its {WAIT}s wait expired"
    for path in expected:
        indexes = {r["query"]["index"][0] for r in sent if r["path"] == path}
        assert len(indexes) == 1, f"{path}: the index moved at rest: {sorted(indexes)}"


def test_a_sidecar_waits_for_consul_alone_and_says_so(tmp_path):
    """With Consul unreachable, /readyz names what is missing: nothing of Kubernetes."""
    with UpstreamServer() as upstream:
        sidecar = start_sidecar(f"http://127.0.0.1:{closed_port()}", upstream.address, tmp_path)
        try:
            status, body = readyz(sidecar.http_url)
        finally:
            assert sidecar.proc.stop() == 0, sidecar.proc.stderr[-3000:]
    assert (status, body) == (503, "not ready, waiting for:\n- consul list\n- first catalog\n")
