"""The two sync options that change which address a Service is registered at, end to end:
`sync.external_name` (an ExternalName Service at its external name) and
`sync.register_cluster_ip` (a ClusterIP Service at its cluster IP, not its endpoints)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import World, converged, pod, service

NODE = "k8s-sync-test"


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.apply([
        service("db", type="ExternalName", externalName="db.example.com", ports=[{"name": "pg", "port": 5432}]),
        service("web", selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
        pod("web-1", "10.5.0.1", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}]),
        pod("web-2", "10.5.0.2", labels={"app": "web"}, ports=[{"name": "http", "containerPort": 8080}]),
    ])
    yield w
    w.close()


def registered(world: World, name: str) -> list[dict[str, Any]]:
    return sorted((r for r in world.registrations(NODE).values() if r["Service"] == name),
                  key=lambda r: r["Address"])


def synced(world: World, **flags: Any) -> None:
    """Run the bridge with `flags` until Consul holds what it wants, then stop it."""
    app = world.start_bridge(**flags)
    converged(app)
    world.stop_bridge(app)


def test_external_name_registers_the_external_name_as_the_address(world):
    synced(world)
    assert registered(world, "db") == [], "without sync.external_name an ExternalName Service is not synced"
    synced(world, sync__external_name=True)
    [db] = registered(world, "db")
    assert (db["Address"], db["Port"]) == ("db.example.com", 5432), db
    assert db["Meta"]["external-k8s-name"] == "db" and db["_checks"] == {}, "no endpoints: no readiness check"
    assert [(r["Address"], r["Port"]) for r in registered(world, "web")] == [("10.5.0.1", 8080), ("10.5.0.2", 8080)]


def test_register_cluster_ip_registers_the_cluster_ip_instead_of_the_endpoints(world):
    cluster_ip = world.kube.store.get("services", "default", "web")["spec"]["clusterIP"]
    assert cluster_ip and cluster_ip != "None", "the API server allocated a cluster IP"
    synced(world)
    assert [r["Address"] for r in registered(world, "web")] == ["10.5.0.1", "10.5.0.2"]
    synced(world, sync__register_cluster_ip=True)
    [web] = registered(world, "web")
    assert (web["Address"], web["Port"]) == (cluster_ip, 80), "the cluster IP, at the Service port"
    assert registered(world, "db") == [], "the other options keep their defaults"
