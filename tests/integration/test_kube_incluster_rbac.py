"""The central ClusterRole is exactly what the bridge uses: the bridge runs with the central
settings (deploy/central, as the pod builds them) against the Kubernetes API test server,
Consul services come, change and go so it materialises, updates and removes objects, and
every request the server logged is mapped to the RBAC (apiGroup, resource, verb) that
authorises it (k8s.io/apiserver pkg/endpoints/request/requestinfo.go: GET on a collection
is list, with ?watch=true watch, on one object get; POST create; PUT update; PATCH patch;
DELETE delete). Every request must be granted, and every grant must have been used."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.app import App
from tests.conftest import eventually
from tests.integration.harness import World, converged, namespace
from tests.integration.test_consul_to_k8s import deregister, k8s_addresses, register_vm
from tests.unit.test_deploy_manifests import granted, one, render, running

PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)"
                  r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$")


def rbac_request(method: str, path: str, watch: bool) -> tuple[str, str, str]:
    match = PATH.match(path)
    assert match, f"unexpected API path {path}"
    named = match.group("name") is not None
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection"}.get(method)
    if method == "GET":
        verb = "watch" if watch else ("get" if named else "list")
    assert verb, f"unexpected method {method} {path}"
    return match.group("group") or "", match.group("resource"), verb


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world")
    w.apply([namespace("consul")])
    yield w
    w.close()


def test_the_central_role_grants_exactly_what_the_bridge_uses(world, tmp_path):
    objects = render("central")
    app_settings = running(objects, one(objects, "Deployment", "bridge"), tmp_path, **{
        # Where this test's servers are; everything else as deployed.
        "kubernetes.kubeconfig": str(world.kubeconfig), "consul.address": world.consul.url,
        "dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
    }).settings
    assert app_settings.sync.to_k8s, "the central layout materialises Consul services"
    app = App(app_settings)
    app.start()
    world.apps.append(app)
    store = world.kube.store

    register_vm(world, "vm-1", "192.0.2.31")
    converged(app)
    eventually(lambda: store.get("services", "consul", "billing"), what="billing materialised")
    register_vm(world, "vm-2", "192.0.2.32")  # a second instance: the EndpointSlice updated
    eventually(lambda: len(k8s_addresses(world, "consul", "billing")) == 2, what="vm-2 added")
    for vm, address in (("vm-1", "192.0.2.31"), ("vm-2", "192.0.2.32")):
        register_vm(world, vm, address, Port=9090)  # a new port: the Service updated
    eventually(lambda: [p["port"] for p in store.get("services", "consul", "billing")["spec"]["ports"]]
               == [9090], what="billing's port updated")
    deregister(world, "vm-1")
    deregister(world, "vm-2")

    def removed() -> bool:
        try:
            store.get("services", "consul", "billing")
        except Exception:
            return True
        return False

    eventually(removed, what="billing removed")
    used = {rbac_request(r.method, r.path, r.watch) for r in world.kube.requests}
    grants = granted(objects)
    assert used - grants == set(), f"the bridge needs permissions the ClusterRole lacks: {used - grants}"
    assert grants - used == set(), f"the ClusterRole grants what the bridge never used: {grants - used}"
