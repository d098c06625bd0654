"""The walking skeleton through its real seams: Kubernetes API -> bridge -> Consul and DNS.

Both test servers run in-process on real sockets; the bridge talks to them with the
official Kubernetes client and py-consul, exactly as in production.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.integration.harness import EXAMPLES, World, a_records, converged, pod

PODS = {"10.28.3.13", "10.28.5.15"}
PHP = "php-apache-svc.default.svc.cluster.local."


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.kube.load_manifests(EXAMPLES / "kubernetes.yaml")
    w.consul.load(EXAMPLES / "consul.yaml")
    yield w
    w.close()


def mirrored(world: World) -> set[str]:
    return {e["ServiceAddress"] for e in world.consul_get("/v1/catalog/service/php-apache-svc")}


def test_kubernetes_endpoints_reach_consul_and_dns(world):
    app = world.start_bridge()
    assert app.wait_ready(15), app.waiting_for()
    eventually(lambda: mirrored(world) == PODS, what="pods mirrored into Consul")
    assert a_records(app, PHP) == PODS
    assert a_records(app, "billing.consul.svc.cluster.local.") == {"192.0.2.21", "192.0.2.22"}
    with urllib.request.urlopen(f"http://127.0.0.1:{app.http.address[1]}/readyz", timeout=5) as response:
        assert response.status == 200


def test_pod_change_flows_through_to_consul_and_dns(world):
    app = world.start_bridge()
    converged(app)
    assert mirrored(world) == PODS
    world.apply([pod("php-apache-third", "10.28.7.7", labels={"app": "php-apache"},
                     ports=[{"name": "http", "containerPort": 80}])])
    expected = PODS | {"10.28.7.7"}
    eventually(lambda: mirrored(world) == expected, what="third pod in Consul")
    eventually(lambda: a_records(app, PHP) == expected, what="third pod in DNS")


def test_neighbour_registrations_are_never_touched(world):
    world.consul.load([{
        "Node": "k8s-sync-other", "Address": "127.0.0.1",
        "Service": {"ID": "php-apache-svc-neighbour", "Service": "php-apache-svc", "Address": "10.99.0.1",
                    "Port": 80, "Tags": ["k8s"], "Meta": {"bridge-owner": "other", "external-k8s-ns": "default"}},
    }])
    app = world.start_bridge()
    converged(app)
    assert mirrored(world) == PODS | {"10.99.0.1"}
    # The neighbour's instance is another cluster's: DNS unites it with ours.
    eventually(lambda: a_records(app, PHP) == PODS | {"10.99.0.1"}, what="merged answer")
    world.kube.store.delete("pods", "default", "php-apache-7d8f9c6b5-abcde")
    eventually(lambda: mirrored(world) == {"10.28.3.13", "10.99.0.1"},
               what="our deleted pod gone, the neighbour's kept")


def test_nothing_is_pulled_back_from_our_own_registrations(world):
    app = world.start_bridge()
    converged(app)
    assert mirrored(world) == PODS
    assert app.consul is not None
    assert "php-apache-svc" not in app.consul.watched, "a service only we register needs no watcher"
    assert "billing" in app.consul.watched
    for service in app.consul.snapshot().services.values():
        for instance in service.instances:
            assert instance.address not in PODS, f"{service.key} pulled back {instance}"
