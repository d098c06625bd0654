"""The central RBAC is enough for the leader election, and the election needs it, with the
rules enforced: the bridge runs in-cluster with the central settings (deploy/central, as
the pod builds them), as its service account, against the Kubernetes API test server with
authentication and RBAC (`tls=True`) loaded with deploy/central's ServiceAccount, Roles and
bindings. With them it takes the Lease in its own namespace, names the cluster by
kube-system's uid and writes; without the Lease Role it cannot lead, writes nothing and
/readyz says why, while DNS is served all the same."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bridge.app import App
from bridge.testing.consul import ConsulServer
from bridge.testing.kube import KubeAPIServer
from tests.conftest import eventually
from tests.integration.harness import namespace, pod, service
from tests.unit.test_deploy_manifests import one, render, running

RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
WEB = [service("web", headless=True, selector={"app": "web"}),
       pod("web-1", "10.1.0.1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 80}])]


@pytest.fixture
def servers() -> Iterator[tuple[KubeAPIServer, ConsulServer]]:
    kube = KubeAPIServer(host="127.0.0.1", port=0, tls=True)
    kube.start()
    consul = ConsulServer(host="127.0.0.1", port=0, jitter=False)
    consul.start()
    yield kube, consul
    consul.stop()
    kube.stop()


def start_central(kube: KubeAPIServer, consul: ConsulServer, tmp_path: Path, kinds: set[str]) -> App:
    """The central layout's objects of `kinds` applied, then its bridge started in-cluster."""
    objects = render("central")
    for obj in objects:
        if obj["kind"] in kinds:
            kube.apply(obj)
    for obj in (namespace("consul"), *WEB):
        kube.apply(obj)
    account = kube.write_service_account(tmp_path / "serviceaccount", "bridge", "bridge")
    settings = running(objects, one(objects, "Deployment", "bridge"), tmp_path, **{
        # Where this test's servers are; everything else as deployed.
        "kubernetes.api_server": kube.url, "kubernetes.service_account_dir": str(account),
        "consul.address": consul.url, "dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
    }).settings
    assert settings.kubernetes.in_cluster and not settings.kubernetes.kubeconfig
    app = App(settings)
    app.start()
    return app


def readyz(app: App) -> str:
    """The status line and warnings of /readyz, whatever its code."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http.address[1]}/readyz", timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()


def consul_json(consul: ConsulServer, path: str) -> Any:
    with urllib.request.urlopen(consul.url + path, timeout=5) as response:
        return json.load(response)


def passes_so_far() -> float:
    return sum(REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": reason}) or 0
               for reason in ("change", "resync"))


def test_the_central_rbac_lets_the_bridge_lead_from_its_own_namespace(servers, tmp_path):
    kube, consul = servers
    app = start_central(kube, consul, tmp_path, RBAC_KINDS)
    try:
        eventually(app.ha.leadership.may_write, what="the bridge leading and its claim held")
        lease = kube.store.get("leases", "bridge", "bridge-default")
        assert lease["spec"]["holderIdentity"] == app.ha.leadership.elector.identity
        [claim] = consul_json(consul, "/v1/kv/bridge/clusters/default")
        uid = kube.store.get("namespaces", "", "kube-system")["metadata"]["uid"]
        value = json.loads(base64.b64decode(claim["Value"]))
        assert value["cluster_uid"] == uid and value["lease"] == "bridge/bridge-default"
        eventually(lambda: consul_json(consul, "/v1/catalog/service/web"), what="web written to Consul")
        refused = [f"{r.method} {r.path}" for r in kube.requests if r.status == 403]
        assert refused == [], f"the central RBAC refused the bridge: {refused}"
        assert readyz(app) == "ready\n"
    finally:
        app.stop()
    released = kube.store.get("leases", "bridge", "bridge-default")
    assert released["spec"]["holderIdentity"] == "", "the Lease is given up on the way out (update)"


def test_without_the_lease_role_the_bridge_cannot_lead_writes_nothing_and_says_why(servers, tmp_path):
    kube, consul = servers
    app = start_central(kube, consul, tmp_path, RBAC_KINDS - {"Role", "RoleBinding"})
    try:
        def ready_with_the_reason() -> str:
            text = readyz(app)
            return text if text.startswith("ready\n") and "leader election" in text else ""

        text = eventually(ready_with_the_reason, what="ready (DNS is served), /readyz naming the refused election")
        assert 'cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "bridge"' \
            in text, text
        assert not app.ha.leadership.may_write()
        passes = passes_so_far()
        app.trigger.poke()  # a pass over the listed world, which it would write if it could
        eventually(lambda: passes_so_far() > passes, what="a reconcile pass")
        assert consul_json(consul, "/v1/catalog/service/web") == [], "nothing is written without the Lease"
    finally:
        app.stop()
