"""Kubernetes -> Consul sync: diff-based, safe, and resilient, against the two test servers."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.conftest import eventually
from tests.integration.harness import World, converged, namespace, pod, service

PODS = {"10.1.0.1", "10.1.0.2"}


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.apply([service("web", ports=[{"name": "http", "port": 80, "targetPort": 8080}],
                     selector={"app": "web"}, headless=True),
             pod("web-1", "10.1.0.1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}]),
             pod("web-2", "10.1.0.2", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])])
    yield w
    w.close()


def addresses(world: World, cluster: str = "test", name: str = "web") -> set[str]:
    return {r["Address"] for r in world.registrations(f"k8s-sync-{cluster}").values() if r["Service"] == name}


def txn_bodies(world: World) -> list[list[dict]]:
    return [json.loads(r.body) for r in world.consul.requests.find(method="PUT", path="/v1/txn")]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_created_then_deleted_service_leaves_nothing(world):
    """consul-k8s case 1 (createDelete), on a ClusterIP Service."""
    app = world.start_bridge()
    converged(app)
    assert addresses(world) == PODS
    world.kube.store.delete("services", "default", "web")
    eventually(lambda: addresses(world) == set(), what="registrations removed with the Service")


def test_sync_annotation_turned_false_deregisters(world):
    """consul-k8s case 9 (changeSyncToFalse)."""
    app = world.start_bridge()
    converged(app)
    svc = world.kube.store.get("services", "default", "web")
    svc["metadata"].setdefault("annotations", {})["consul.hashicorp.com/service-sync"] = "false"
    world.kube.apply(svc)
    eventually(lambda: addresses(world) == set(), what="opted-out Service deregistered")


def test_restart_with_nothing_changed_writes_nothing(world):
    app = world.start_bridge()
    converged(app)
    world.stop_bridge(app)
    index = world.consul_index()
    txns = len(txn_bodies(world))
    again = world.start_bridge()
    converged(again)
    assert len(txn_bodies(world)) == txns, "a restart must not send a single transaction"
    assert world.consul_index() == index, "the Consul index moved: something was written"


def test_periodic_resync_repairs_drift_and_writes_nothing_otherwise(world):
    app = world.start_bridge(sync__resync_period=1)
    converged(app)
    regs = world.registrations("k8s-sync-test")
    victim, changed = sorted(regs)
    index_before = world.consul_index()
    # Idle resyncs write nothing.
    eventually(lambda: counter("bridge_reconcile_passes_total", reason="resync") >= 2, what="two resyncs")
    assert world.consul_index() == index_before, "an idle resync wrote to Consul"
    # Someone deletes one of ours and edits another behind our back.

    _consul_put(world, "/v1/catalog/deregister", {"Node": "k8s-sync-test", "ServiceID": victim})
    tampered = dict(regs[changed])
    _consul_put(world, "/v1/catalog/register", {
        "Node": "k8s-sync-test", "Address": "127.0.0.1", "SkipNodeUpdate": True,
        "Service": {"ID": changed, "Service": "web", "Address": tampered["Address"], "Port": 9999,
                    "Tags": tampered["Tags"], "Meta": tampered["Meta"]}})

    def repaired() -> bool:
        now = world.registrations("k8s-sync-test")
        return set(now) == set(regs) and now[changed]["Port"] == 8080
    eventually(repaired, timeout=10, what="drift repaired within a resync")


def _consul_put(world: World, path: str, body: dict) -> None:
    request = urllib.request.Request(world.consul.url + path, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_relist_after_410_deletes_nothing(world):
    app = world.start_bridge()
    converged(app)
    index = world.consul_index()
    relists = counter("bridge_kube_relists_total", resource="endpointslices")
    # The API server goes away; meanwhile history moves on and is compacted, so the
    # bridge's watch position is too old when it comes back: 410, then a relist.
    world.kube.begin_outage()
    world.apply([namespace("unrelated")])
    world.kube.compact()
    world.kube.end_outage()
    eventually(lambda: counter("bridge_kube_relists_total", resource="endpointslices") > relists,
               what="a relist after 410")
    converged(app)
    assert addresses(world) == PODS
    assert world.consul_index() == index, "the relist caused writes"


def test_consul_outage_keeps_the_desired_state_and_applies_it_on_recovery(world):
    app = world.start_bridge()
    converged(app)
    errors, txns = counter("bridge_consul_write_errors_total"), counter("bridge_consul_txn_total")
    world.consul.faults.outage()
    world.apply([pod("web-3", "10.1.0.3", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])])
    world.kube.store.delete("pods", "default", "web-1")
    eventually(lambda: counter("bridge_consul_write_errors_total") > errors
               or counter("bridge_consul_txn_total") > txns, what="a write attempted while Consul is down")
    world.consul.faults.recover()
    eventually(lambda: addresses(world) == {"10.1.0.2", "10.1.0.3"}, timeout=30, what="applied on recovery")
    regs = world.registrations("k8s-sync-test")
    assert len(regs) == 2, f"nothing duplicated: {sorted(regs)}"


def test_same_service_name_in_two_namespaces(world):
    world.apply([namespace("shop"),
                 service("web", "shop", selector={"app": "web"}, headless=True,
                         ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
                 pod("web-9", "10.2.0.9", "shop", labels={"app": "web"},
                     ports=[{"name": "http", "containerPort": 8080}])])
    app = world.start_bridge()
    converged(app)
    regs = [r for r in world.registrations("k8s-sync-test").values() if r["Service"] == "web"]
    assert {(r["Meta"]["external-k8s-ns"], r["Address"]) for r in regs} == {
        ("default", "10.1.0.1"), ("default", "10.1.0.2"), ("shop", "10.2.0.9")}
    world.stop_bridge(app)
    suffixed = world.start_bridge(sync__add_namespace_suffix=True)
    converged(suffixed)
    names = {r["Service"] for r in world.registrations("k8s-sync-test").values()}
    assert names == {"web-default", "web-shop"}, f"the old names are replaced, got {names}"


def test_two_bridges_on_one_consul_leave_each_other_alone(world, tmp_path):
    east = world.start_bridge("east")
    converged(east)
    other = World(tmp_path / "west", consul=world.consul)  # a second cluster, the same Consul
    try:
        other.apply([service("web", selector={"app": "web"}, headless=True,
                             ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
                     pod("web-1", "10.9.0.1", labels={"app": "web"},
                         ports=[{"name": "http", "containerPort": 8080}])])
        west = other.start_bridge("west")
        converged(west)
        assert addresses(world, "east") == PODS and addresses(world, "west") == {"10.9.0.1"}
        world.kube.store.delete("pods", "default", "web-1")
        eventually(lambda: addresses(world, "east") == {"10.1.0.2"}, what="east's own change")
        other.kube.store.delete("services", "default", "web")
        eventually(lambda: addresses(world, "west") == set(), what="west's own change")
        converged(east)
        assert addresses(world, "east") == {"10.1.0.2"}, "west's delete touched east's entries"
        entries = world.consul_get("/v1/catalog/service/web")
        assert {e["Node"] for e in entries} == {"k8s-sync-east"}
    finally:
        other.close()


def test_upsert_only_never_deletes(world):
    app = world.start_bridge(sync__upsert_only=True)
    converged(app)
    world.kube.store.delete("pods", "default", "web-1")
    world.apply([pod("web-3", "10.1.0.3", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])])
    eventually(lambda: addresses(world) == PODS | {"10.1.0.3"}, what="the new pod added, the old one kept")
    converged(app)
    assert addresses(world) == PODS | {"10.1.0.3"}


def test_dry_run_writes_nothing(world, caplog):
    caplog.set_level("INFO", logger="bridge.reconcile.loop")
    app = world.start_bridge(sync__dry_run=True)
    assert app.wait_ready(15)
    eventually(lambda: "dry-run: would register" in caplog.text, what="the plan logged")
    assert txn_bodies(world) == [], "dry-run sent a transaction"
    assert addresses(world) == set()


def test_transactions_hold_at_most_64_operations(world):
    world.apply([service("big", selector={"app": "big"}, headless=True,
                         ports=[{"name": "http", "port": 80}])])
    world.apply([pod(f"big-{i}", f"10.3.{i // 200}.{i % 200 + 1}", labels={"app": "big"},
                     ports=[{"name": "http", "containerPort": 80}]) for i in range(100)])
    app = world.start_bridge()
    converged(app)
    assert len(addresses(world, name="big")) == 100
    sizes = [len(body) for body in txn_bodies(world)]
    assert max(sizes) <= 64 and len(sizes) >= 4, f"txn sizes {sizes}"


def test_a_bad_service_is_skipped_and_the_rest_goes_on(world):
    bad = service("bad", annotations={"consul.hashicorp.com/service-name": "x" * 256},
                  selector={"app": "web"})
    world.apply([bad])
    before = counter("bridge_sync_skipped_total")
    app = world.start_bridge()
    converged(app)
    assert addresses(world) == PODS
    assert counter("bridge_sync_skipped_total") > before, "the skip must be counted"


def test_kubernetes_429_retry_after_is_honoured(world, caplog):
    caplog.set_level("WARNING", logger="bridge.kube.watch")
    world.kube.fail_next(2, 429, retry_after=1, path_prefix="/apis/discovery.k8s.io")
    app = world.start_bridge()
    converged(app, timeout=20)
    assert addresses(world) == PODS
    slices = [r for r in world.kube.requests if r.path.startswith("/apis/discovery.k8s.io")]
    assert [r.status for r in slices][:3] == [429, 429, 200], [(r.path, r.status) for r in slices]
    # The wait the watch chose after each 429 (the backoff alone starts at 0.2 s at most).
    delays = [float(m) for m in re.findall(r"endpointslices: .*429.*; retrying in ([\d.]+)s", caplog.text)]
    assert len(delays) == 2 and min(delays) >= 1.0, f"Retry-After: 1 is a floor: {delays}\n{caplog.text}"


def test_lag_and_write_counters_are_kept(world):
    app = world.start_bridge()
    converged(app)
    lag_count = counter("bridge_sync_lag_seconds_count")
    writes = counter("bridge_consul_writes_total", op="create")
    world.apply([pod("web-4", "10.1.0.4", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])])
    eventually(lambda: "10.1.0.4" in addresses(world), what="new pod registered")
    eventually(lambda: counter("bridge_sync_lag_seconds_count") > lag_count, what="lag observed")
    assert counter("bridge_consul_writes_total", op="create") == writes + 1
