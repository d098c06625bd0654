"""Consul -> merged catalog -> DNS and Kubernetes; several clusters sharing one Consul."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.conftest import eventually
from tests.integration.harness import World, a_records, converged, namespace, pod, service

VMS = {"192.0.2.31", "192.0.2.32"}


def register_vm(world: World, node: str, address: str, name: str = "billing", status: str = "passing",
                **service_fields: Any) -> None:
    body = {"Node": node, "Address": address,
            "Service": {"ID": f"{name}-{node}", "Service": name, "Port": 8080, **service_fields},
            "Check": {"CheckID": f"{name}-{node}-http", "Name": "http", "ServiceID": f"{name}-{node}",
                      "Status": status}}
    request = urllib.request.Request(world.consul.url + "/v1/catalog/register", data=json.dumps(body).encode(),
                                     method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def deregister(world: World, node: str) -> None:
    request = urllib.request.Request(world.consul.url + "/v1/catalog/deregister",
                                     data=json.dumps({"Node": node}).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.apply([namespace("consul")])
    register_vm(w, "vm-1", "192.0.2.31")
    register_vm(w, "vm-2", "192.0.2.32")
    yield w
    w.close()


def k8s_addresses(world: World, ns: str, name: str) -> set[str]:
    items = world.kube.store.list("endpointslices", ns, label_selector=f"kubernetes.io/service-name={name}")["items"]
    return {a for s in items for e in (s.get("endpoints") or []) if (e.get("conditions") or {}).get("ready", True)
            for a in e["addresses"]}


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_vm_service_resolves_and_is_materialised_as_headless_service(world):
    app = world.start_bridge(sync__to_k8s=True)
    converged(app)
    assert a_records(app, "billing.consul.svc.cluster.local.") == VMS
    svc = world.kube.store.get("services", "consul", "billing")
    assert svc["spec"]["clusterIP"] == "None" and not svc["spec"].get("selector"), svc["spec"]
    assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "bridge"
    assert svc["metadata"]["annotations"]["consul.hashicorp.com/service-sync"] == "false"
    assert k8s_addresses(world, "consul", "billing") == VMS
    # Nothing we materialised is pushed back to Consul.
    assert not [e for e in world.consul_get("/v1/catalog/service/billing") if e["Node"].startswith("k8s-sync")]


def test_named_ports_from_port_meta(world):
    register_vm(world, "vm-3", "192.0.2.33", name="api", Meta={"port-http": "8080", "port-grpc": "9090"})
    app = world.start_bridge(sync__to_k8s=True)
    converged(app)
    ports = {(p["name"], p["port"]) for p in world.kube.store.get("services", "consul", "api")["spec"]["ports"]}
    assert ports == {("grpc", 9090), ("http", 8080)}, ports


def test_health_flips_remove_and_restore_an_instance(world):
    app = world.start_bridge(sync__to_k8s=True)
    converged(app)
    register_vm(world, "vm-1", "192.0.2.31", status="critical")
    eventually(lambda: a_records(app, "billing.consul.svc.cluster.local.") == {"192.0.2.32"}, what="DNS drops it")
    eventually(lambda: k8s_addresses(world, "consul", "billing") == {"192.0.2.32"}, what="slice drops it")
    register_vm(world, "vm-1", "192.0.2.31", status="passing")
    eventually(lambda: a_records(app, "billing.consul.svc.cluster.local.") == VMS, what="DNS has it back")
    eventually(lambda: k8s_addresses(world, "consul", "billing") == VMS, what="slice has it back")


def test_warning_counts_as_healthy_only_when_admitted(world):
    register_vm(world, "vm-1", "192.0.2.31", status="warning")
    strict = world.start_bridge()
    converged(strict)
    assert a_records(strict, "billing.consul.svc.cluster.local.") == {"192.0.2.32"}
    world.stop_bridge(strict)
    lenient = world.start_bridge(sync__admit_warning=True)
    converged(lenient)
    assert a_records(lenient, "billing.consul.svc.cluster.local.") == VMS


def test_names_are_sanitised_and_collisions_resolved_the_same_way(world):
    register_vm(world, "vm-4", "192.0.2.41", name="Billing_API")
    register_vm(world, "vm-5", "192.0.2.42", name="billing-api")
    before = counter("bridge_consul_name_collisions_total")
    app = world.start_bridge()
    converged(app)
    # "Billing_API" sorts first, so it keeps the plain label; the other gets a digest suffix.
    assert a_records(app, "billing-api.consul.svc.cluster.local.") == {"192.0.2.41"}
    labels = [key.name for key in app.publisher.published.services if key.name.startswith("billing-api-")]
    assert len(labels) == 1, labels
    assert a_records(app, f"{labels[0]}.consul.svc.cluster.local.") == {"192.0.2.42"}
    assert counter("bridge_consul_name_collisions_total") > before
    # A second bridge computes the same mapping.
    again = world.start_bridge("again")
    converged(again)
    assert a_records(again, f"{labels[0]}.consul.svc.cluster.local.") == {"192.0.2.42"}


def test_namespace_from_consul_meta(world):
    register_vm(world, "vm-6", "192.0.2.61", name="ledger", Meta={"k8s-namespace": "payments"})
    app = world.start_bridge()
    converged(app)
    assert a_records(app, "ledger.payments.svc.cluster.local.") == {"192.0.2.61"}


def test_no_echo_once_converged(world):
    world.apply([service("web", selector={"app": "web"}, headless=True, ports=[{"name": "http", "port": 80}]),
                 pod("web-1", "10.1.0.1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 80}])])
    app = world.start_bridge(sync__to_k8s=True, sync__resync_period=1)
    converged(app)
    index = world.consul_index()
    rv = world.kube.store.list("services")["metadata"]["resourceVersion"]
    passes = REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "resync"}) or 0
    eventually(lambda: (REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "resync"}) or 0)
               >= passes + 2, what="two full resyncs")
    assert world.consul_index() == index, "the Consul index moved while idle"
    assert world.kube.store.list("services")["metadata"]["resourceVersion"] == rv, "Kubernetes was written while idle"


def test_our_objects_are_repaired_and_foreign_ones_left_alone(world):
    # Someone else's selector-less headless Service under the name the bridge would use.
    world.apply([service("billing", "consul", headless=True, ports=[{"name": "x", "port": 1}])])
    register_vm(world, "vm-7", "192.0.2.71", name="ledger")
    app = world.start_bridge(sync__to_k8s=True)
    converged(app)
    theirs = world.kube.store.get("services", "consul", "billing")
    labels = theirs["metadata"].get("labels") or {}
    assert "app.kubernetes.io/managed-by" not in labels, "a foreign Service was taken over"
    assert a_records(app, "billing.consul.svc.cluster.local.") == VMS, "DNS still answers the Consul instances"
    ours = world.kube.store.get("services", "consul", "ledger")
    ours["metadata"]["annotations"]["consul.hashicorp.com/service-sync"] = "true"
    world.kube.apply(ours)
    eventually(lambda: world.kube.store.get("services", "consul", "ledger")["metadata"]["annotations"]
               ["consul.hashicorp.com/service-sync"] == "false", what="manual edit reverted")
    world.kube.store.delete("endpointslices", "consul", k8s_slice_name(world, "ledger"))
    eventually(lambda: k8s_addresses(world, "consul", "ledger") == {"192.0.2.71"}, what="deleted slice recreated")
    deregister(world, "vm-7")
    eventually(lambda: world.kube.store.find("services", "consul", "ledger") is None,
               what="ours deleted when the Consul service is gone")


def k8s_slice_name(world: World, name: str) -> str:
    items = world.kube.store.list("endpointslices", "consul", label_selector=f"kubernetes.io/service-name={name}")
    return items["items"][0]["metadata"]["name"]


def test_two_clusters_resolve_each_others_headless_services(world, tmp_path):
    world.apply([service("orders", selector={"app": "orders"}, headless=True, ports=[{"name": "http", "port": 80}]),
                 pod("orders-1", "10.1.0.1", labels={"app": "orders"}, ports=[{"name": "http", "containerPort": 80}])])
    west = World(tmp_path / "west", consul=world.consul)
    try:
        west.apply([service("payments", selector={"app": "pay"}, headless=True, ports=[{"name": "http", "port": 80}]),
                    pod("pay-1", "10.2.0.1", labels={"app": "pay"}, ports=[{"name": "http", "containerPort": 80}]),
                    service("orders", selector={"app": "orders"}, headless=True, ports=[{"name": "http", "port": 80}]),
                    pod("orders-w", "10.2.0.9", labels={"app": "orders"},
                        ports=[{"name": "http", "containerPort": 80}])])
        east_app = world.start_bridge("east")
        west_app = west.start_bridge("west")
        converged(east_app)
        converged(west_app)
        eventually(lambda: a_records(east_app, "payments.default.svc.cluster.local.") == {"10.2.0.1"},
                   what="east resolves west's Service")
        # Same namespace and name in both clusters: merged.
        eventually(lambda: a_records(west_app, "orders.default.svc.cluster.local.") == {"10.1.0.1", "10.2.0.9"},
                   what="west answers both clusters' orders")
        eventually(lambda: a_records(east_app, "orders.default.svc.cluster.local.") == {"10.1.0.1", "10.2.0.9"},
                   what="east answers both clusters' orders")
        converged(east_app)
        converged(west_app)
        index = world.consul_index()
        passes = REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "change"}) or 0
        # An unrelated change (a Service opted out of the sync) wakes the loop once.
        world.apply([service("quiet", annotations={"consul.hashicorp.com/service-sync": "false"})])
        eventually(lambda: (REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "change"}) or 0)
                   > passes, what="a pass")
        converged(east_app)
        converged(west_app)
        assert world.consul_index() == index, "converged bridges kept writing"
    finally:
        west.close()


def test_consul_outage_keeps_answers_and_catches_up_after(world):
    app = world.start_bridge()
    converged(app)
    world.consul.faults.outage()
    assert a_records(app, "billing.consul.svc.cluster.local.") == VMS, "answers kept during the outage"
    # A change made while the bridge cannot reach Consul (written into the server's state).
    world.consul.load([{"Node": "vm-9", "Address": "192.0.2.39",
                        "Service": {"ID": "billing-vm-9", "Service": "billing", "Port": 8080}}])
    assert a_records(app, "billing.consul.svc.cluster.local.") == VMS
    world.consul.faults.recover()
    eventually(lambda: a_records(app, "billing.consul.svc.cluster.local.") == VMS | {"192.0.2.39"},
               what="the change made during the outage shows after recovery")


def test_consul_index_reset_is_survived(world):
    # A blocking query holding an index from before the reset returns only when its wait
    # ends (then with the lower index, which resets ours): a short wait keeps this quick.
    app = world.start_bridge(consul__wait=2)
    converged(app)
    world.consul.faults.reset_index(1)
    register_vm(world, "vm-8", "192.0.2.38")
    eventually(lambda: a_records(app, "billing.consul.svc.cluster.local.") == VMS | {"192.0.2.38"},
               what="a change after the index went backwards")
