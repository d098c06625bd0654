"""The central bridge of deploy/central, run as its pod would run, against a secured API server.

`kubectl kustomize deploy/central` is rendered; its RBAC objects (Namespace, ServiceAccount,
ClusterRole, ClusterRoleBinding, and any Role and RoleBinding) are loaded into
`bridge fake-k8s --tls`, which writes the ServiceAccount bridge/bridge's token volume as the
kubelet would. The bridge runs the Deployment's exact args and environment and the
ConfigMap's settings (only addresses and paths rewritten) with the kubelet's
KUBERNETES_SERVICE_HOST/PORT and no kubeconfig, so it authenticates with that token and RBAC
decides every call. Consul is `bridge fake-consul`; everything runs as subprocesses.

The story: a VM service in Consul is materialised as a headless Service (create); a headless
Service created with the official client (admin kubeconfig) reaches Consul; the token is
rotated with no grace and every watch dropped, so the bridge must send the new token; then
changes land in Consul and in Kubernetes (update) and the VM service goes (delete). With the
whole ClusterRole the story completes with nothing refused. With any one verb removed, the
bridge logs the API server's 403 naming it and `/readyz` answers 503 with that line: every
grant is needed.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.conftest import eventually
from tests.e2e import container
from tests.e2e.proc import Proc
from tests.e2e.test_shutdown import http
from tests.unit.test_deploy_manifests import granted, one, render

RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
CART = {"10.2.0.11", "10.2.0.12"}
CART_MORE = "10.2.0.13"
VMS = {"vm-1": "192.0.2.31", "vm-2": "192.0.2.32"}
STEP = 30  # seconds each step of the story may take: generous, the machine is shared


@pytest.fixture(scope="module")
def central() -> list[dict[str, Any]]:
    return render("central")


def without(objects: list[dict[str, Any]], grant: tuple[str, str, str] | None) -> list[dict[str, Any]]:
    """The RBAC objects, with `grant` (apiGroup, resource, verb) taken out of every rule."""
    out = []
    for obj in objects:
        if obj["kind"] not in RBAC_KINDS:
            continue
        obj = json.loads(json.dumps(obj))
        if grant is not None and obj["kind"] in ("ClusterRole", "Role"):
            group, resource, verb = grant
            rules = []
            for rule in obj.get("rules", []):
                if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
                    rest = [v for v in rule["verbs"] if v != verb]
                    assert len(rule["apiGroups"]) == len(rule["resources"]) == 1, \
                        f"split this rule to remove one grant: {rule}"
                    rule = {**rule, "verbs": rest}
                if rule["verbs"]:
                    rules.append(rule)
            obj["rules"] = rules
        out.append(obj)
    return out


class Refused(Exception):
    """The bridge logged the refusal a test waits for."""


@dataclass
class Cluster:
    """The two test servers, the bridge, and the ways a test reaches them."""

    tmp: Path
    kube: Proc
    kube_url: str
    consul_url: str
    account_dir: Path
    api: k8s.ApiClient
    bridge: Proc | None = None
    http_url: str = ""

    def admin(self, action: str, body: dict[str, Any]) -> Any:
        """POST to the API test server's /_admin (HTTPS, verified with its CA)."""
        return self._admin(urllib.request.Request(
            f"{self.kube_url}/_admin/{action}", method="POST", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}))

    def admin_get(self, action: str) -> Any:
        return self._admin(urllib.request.Request(f"{self.kube_url}/_admin/{action}"))

    def _admin(self, request: urllib.request.Request) -> Any:
        context = ssl.create_default_context(cafile=str(self.account_dir / "ca.crt"))
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return json.load(response)

    def log(self) -> list[str]:
        """The bridge's log messages (its settings log JSON lines)."""
        assert self.bridge is not None
        messages = []
        for line in self.bridge.stderr.splitlines():
            try:
                messages.append(str(json.loads(line)["message"]))
            except (ValueError, KeyError, TypeError):
                messages.append(line)
        return messages

    def refusals(self) -> list[str]:
        return [m for m in self.log() if m.startswith("kubernetes refused")]

    def readyz(self) -> tuple[int, str]:
        try:
            return 200, http("GET", self.http_url + "/readyz")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def consul_addresses(self, name: str) -> set[str]:
        return {e["Service"]["Address"] for e in http("GET", f"{self.consul_url}/v1/health/service/{name}")}

    def consul_register(self, node: str, address: str, port: int = 8080) -> None:
        http("PUT", self.consul_url + "/v1/catalog/register", vm(node, address, port))

    def consul_deregister(self, node: str) -> None:
        http("PUT", self.consul_url + "/v1/catalog/deregister", {"Node": node})


def vm(node: str, address: str, port: int = 8080) -> dict[str, Any]:
    return {"Node": node, "Address": address,
            "Service": {"ID": f"billing-{node}", "Service": "billing", "Port": port},
            "Check": {"CheckID": f"billing-{node}", "Name": "http", "ServiceID": f"billing-{node}",
                      "Status": "passing"}}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[list[dict[str, Any]]], Cluster]]:
    """Starts the two test servers with the given RBAC objects loaded."""
    procs: list[Proc] = []
    clusters: list[Cluster] = []

    def start(rbac: list[dict[str, Any]]) -> Cluster:
        account_dir = tmp_path / "serviceaccount"
        (tmp_path / "rbac.yaml").write_text(yaml.safe_dump_all(rbac))
        # Where sync.to_k8s materialises Consul services (deploy/central/settings.yaml says
        # it must exist), and the namespace of the test's own Service.
        (tmp_path / "namespaces.yaml").write_text(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            for name in ("consul", "shop")]))
        kube = Proc("fake-k8s", "--tls", "--listen", "127.0.0.1:0",
                    "--load", str(tmp_path / "rbac.yaml"), "--load", str(tmp_path / "namespaces.yaml"),
                    "--write-kubeconfig", str(tmp_path / "admin.kubeconfig"),
                    "--write-serviceaccount", str(account_dir), "--serviceaccount", "bridge/bridge")
        procs.append(kube)
        consul = Proc("fake-consul", "--listen", "127.0.0.1:0")
        procs.append(consul)
        kube_url = kube.expect(r"fake-k8s listening on (https://\S+)").group(1)
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        cluster = Cluster(tmp_path, kube, kube_url, consul_url, account_dir,
                          k8s_config.new_client_from_config(str(tmp_path / "admin.kubeconfig")))
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        if cluster.bridge is not None:
            cluster.bridge.stop()
        cluster.api.close()
    for proc in procs:
        proc.stop()


def start_bridge(cluster: Cluster, central: list[dict[str, Any]]) -> None:
    port = cluster.kube_url.rsplit(":", 1)[1]
    cluster.bridge = container.start(
        central, one(central, "Deployment", "bridge"), cluster.tmp / "bridge",
        settings={"dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
                  "kubernetes.service_account_dir": str(cluster.account_dir)},
        env={"CONSUL_HTTP_ADDR": cluster.consul_url},
        kubelet_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port})
    cluster.http_url = "http://" + cluster.bridge.expect(r"http listening on (\S+) ").group(1)


def waiter(cluster: Cluster, refused: str | None) -> Callable[[Callable[[], Any], str], None]:
    """`wait(check, what)`: `eventually(check)` within STEP seconds. With `refused` (a
    refusal's start, e.g. "kubernetes refused list services"), raises Refused as soon as
    the bridge has logged it; any other refusal fails the test at once."""

    def wait(check: Callable[[], Any], what: str) -> None:
        def done() -> Any:
            seen = cluster.refusals()
            if refused is not None and any(r.startswith(refused) for r in seen):
                raise Refused
            if seen:
                pytest.fail(f"refused while waiting for {what}: {seen}")
            return check()

        eventually(done, STEP, what)

    return wait


def materialised(cluster: Cluster, name: str) -> dict[str, Any] | None:
    try:
        service = k8s.CoreV1Api(cluster.api).read_namespaced_service(name, "consul")
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return cluster.api.sanitize_for_serialization(service)


def materialised_addresses(cluster: Cluster, name: str) -> set[str]:
    slices = k8s.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        "consul", label_selector=f"kubernetes.io/service-name={name}")
    return {a for s in slices.items for e in s.endpoints or [] for a in e.addresses}


def cart_slice(addresses: set[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "cart-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "cart"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in sorted(addresses)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def story(cluster: Cluster, wait: Callable[[Callable[[], Any], str], None]) -> None:
    """Everything the central bridge does with its permissions, step by step."""
    core, discovery = k8s.CoreV1Api(cluster.api), k8s.DiscoveryV1Api(cluster.api)
    wait(lambda: cluster.readyz()[0] == 200, "the bridge ready")
    wait(lambda: materialised_addresses(cluster, "billing") == {VMS["vm-1"]},
         "billing materialised (create services, endpointslices)")

    core.create_namespaced_service("shop", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    discovery.create_namespaced_endpoint_slice("shop", cart_slice(CART))
    wait(lambda: cluster.consul_addresses("cart") == CART, "cart registered in Consul")

    # The kubelet rotates the token; the old one is refused from now on. Watches opened
    # with it are dropped, so every request from here on carries the new one.
    assert cluster.admin("rotate-token", {"graceSeconds": 0}) == {"rotated": 1}
    cluster.admin("drop-watches", {})
    discovery.replace_namespaced_endpoint_slice("cart-1", "shop", cart_slice(CART | {CART_MORE}))
    wait(lambda: cluster.consul_addresses("cart") == CART | {CART_MORE},
         "a change after the rotation reached Consul")

    cluster.consul_register("vm-2", VMS["vm-2"])
    wait(lambda: materialised_addresses(cluster, "billing") == set(VMS.values()),
         "vm-2 added to the materialised slice (update endpointslices)")
    for node, address in VMS.items():
        cluster.consul_register(node, address, port=9090)
    wait(lambda: [p["port"] for p in (materialised(cluster, "billing") or {}).get("spec", {})
                  .get("ports", [])] == [9090], "the materialised port changed (update services)")
    for node in VMS:
        cluster.consul_deregister(node)
    wait(lambda: materialised(cluster, "billing") is None and
         not materialised_addresses(cluster, "billing"), "billing removed (delete)")


def test_the_central_pod_syncs_with_its_service_account_across_a_token_rotation(servers, central):
    cluster = servers(without(central, None))
    cluster.consul_register("vm-1", VMS["vm-1"])
    start_bridge(cluster, central)
    story(cluster, waiter(cluster, None))

    assert cluster.readyz() == (200, "ready\n")
    assert "kubernetes: service account token reread (rotated)" in cluster.log(), \
        "the bridge read the rotated token"
    records = cluster.admin_get("requests")["items"]
    mine = [r for r in records if r["user"] == "system:serviceaccount:bridge:bridge"]
    assert mine, "the bridge authenticated as its service account"
    failed = [(r["method"], r["path"], r["status"]) for r in records
              if r["status"] in (401, 403)]
    assert not failed, f"requests refused with the whole ClusterRole: {failed}"


@pytest.mark.parametrize("grant", sorted(granted(render("central"))),
                         ids=lambda g: "/".join((g[0] or "core", g[1], g[2])))
def test_without_any_one_grant_the_bridge_names_the_refusal_and_is_not_ready(servers, central, grant):
    group, resource, verb = grant
    cluster = servers(without(central, grant))
    cluster.consul_register("vm-1", VMS["vm-1"])
    start_bridge(cluster, central)
    refusal = f"kubernetes refused {verb} {resource} in "
    if resource == "leases":
        # The leader election's own refusals (an update comes with the first renewal, a
        # retry period after the Lease is made): the replica still answers DNS, so
        # /readyz stays 200 and warns that this replica cannot lead.
        line = eventually(lambda: next((r for r in cluster.refusals() if r.startswith(refusal)), None),
                          timeout=30, what=f"the refused {verb} {resource} logged")
        assert "HTTP 403" in line and "forbidden" in line, line
        def ready_with_a_warning() -> bool:
            status, body = cluster.readyz()
            assert status == 200, f"/readyz answered {status} with {verb} {resource} refused: {body}"
            assert "warning: leader election" in body and "forbidden" in body, \
                f"/readyz does not say why the election fails: {body}"
            return True

        eventually(ready_with_a_warning, what="ready, with a warning naming the refused election")
        return
    with pytest.raises(Refused):
        story(cluster, waiter(cluster, refusal))
        pytest.fail(f"the bridge did everything without {verb} {group}/{resource}: "
                    "the ClusterRole grants more than it needs")
    line = next(r for r in cluster.refusals() if r.startswith(refusal))
    assert "HTTP 403" in line and "forbidden" in line, line
    status, body = cluster.readyz()
    assert status == 503, f"/readyz answered {status} with {verb} {resource} refused: {body}"
    assert f"- {line}\n" in body, f"/readyz does not name the refusal {line!r}: {body}"
