"""The walking skeleton through its real seams: Kubernetes API -> bridge -> Consul and DNS.

Both test servers run in-process on real sockets; the bridge talks to them with the
official Kubernetes client and py-consul, exactly as in production.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from bridge import config
from bridge.app import App
from bridge.testing.consul import ConsulServer
from bridge.testing.kube import KubeAPIServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
PODS = {"10.28.3.13", "10.28.5.15"}


def eventually(check: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    """Polls `check` until it returns a truthy value or raises no AssertionError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what} {last or ''}")


@pytest.fixture()
def world(tmp_path) -> Iterator[dict[str, Any]]:
    kube = KubeAPIServer(host="127.0.0.1", port=0)
    consul = ConsulServer(host="127.0.0.1", port=0, jitter=False)
    kube.start()
    consul.start()
    kube.load_manifests(EXAMPLES / "kubernetes.yaml")
    consul.load(EXAMPLES / "consul.yaml")
    kubeconfig = tmp_path / "kubeconfig"
    kube.write_kubeconfig(kubeconfig)
    yield {"kube": kube, "consul": consul, "kubeconfig": kubeconfig}
    kube.stop()
    consul.stop()


def make_app(world: dict[str, Any], cluster_id: str = "test") -> App:
    settings = config.build(environ={}, flags={
        "kubernetes.kubeconfig": str(world["kubeconfig"]),
        "consul.address": world["consul"].url,
        "cluster_id": cluster_id,
        "dns.listen": "127.0.0.1:0",
        "http.listen": "127.0.0.1:0",
        "sync.quiet_period": 0.01,
        "sync.max_delay": 0.1,
    })
    app = App(settings)
    app.start()
    return app


def consul_get(world: dict[str, Any], path: str) -> Any:
    with urllib.request.urlopen(world["consul"].url + path, timeout=5) as response:
        return json.load(response)


def a_records(app: App, name: str) -> set[str]:
    host, port = app.dns.addresses[0]
    response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), host, port=port,
                             timeout=5)
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return set()
    return {r.address for r in response.answer[0]}


def mirrored(world: dict[str, Any]) -> set[str]:
    return {e["ServiceAddress"] for e in consul_get(world, "/v1/catalog/service/php-apache-svc")}


def test_kubernetes_endpoints_reach_consul_and_dns(world):
    app = make_app(world)
    try:
        assert app.wait_ready(15), app.waiting_for()
        eventually(lambda: mirrored(world) == PODS, what="pods mirrored into Consul")
        assert a_records(app, "php-apache-svc.default.svc.cluster.local.") == PODS
        assert a_records(app, "billing.consul.svc.cluster.local.") == {"192.0.2.21",
                                                                       "192.0.2.22"}
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http.address[1]}/readyz",
                                    timeout=5) as response:
            assert response.status == 200
    finally:
        app.stop()


def test_pod_change_flows_through_to_consul_and_dns(world):
    app = make_app(world)
    try:
        assert app.wait_ready(15), app.waiting_for()
        eventually(lambda: mirrored(world) == PODS, what="initial mirror")
        world["kube"].apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "php-apache-third", "namespace": "default",
                         "labels": {"app": "php-apache"}},
            "spec": {"containers": [{"name": "c", "image": "x",
                                     "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"podIP": "10.28.7.7", "podIPs": [{"ip": "10.28.7.7"}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
        expected = PODS | {"10.28.7.7"}
        eventually(lambda: mirrored(world) == expected, what="third pod in Consul")
        eventually(lambda: a_records(app, "php-apache-svc.default.svc.cluster.local.")
                   == expected, what="third pod in DNS")
    finally:
        app.stop()


def test_restart_with_unchanged_world_writes_nothing(world):
    app = make_app(world)
    try:
        assert app.wait_ready(15)
        eventually(lambda: mirrored(world) == PODS, what="initial mirror")
        before = consul_get(world, "/v1/catalog/service/php-apache-svc")
    finally:
        app.stop()
    second = make_app(world)
    try:
        assert second.wait_ready(15)
        eventually(lambda: second.reconciler.last_plan is not None, what="a sync pass")
        plan = second.reconciler.last_plan
        assert plan is not None and plan.empty, f"restart planned writes: {plan}"
        after = consul_get(world, "/v1/catalog/service/php-apache-svc")
        assert [e["ModifyIndex"] for e in after] == [e["ModifyIndex"] for e in before]
    finally:
        second.stop()


def test_neighbour_registrations_are_never_touched(world):
    neighbour = {
        "Node": "k8s-sync-other", "Address": "127.0.0.1",
        "Service": {"ID": "php-apache-svc-neighbour", "Service": "php-apache-svc",
                    "Address": "10.99.0.1", "Port": 80, "Tags": ["k8s"],
                    "Meta": {"bridge-owner": "other", "external-k8s-ns": "default"}},
    }
    world["consul"].load([neighbour])
    app = make_app(world)
    try:
        assert app.wait_ready(15)
        eventually(lambda: mirrored(world) == PODS | {"10.99.0.1"}, what="ours beside theirs")
        # The neighbour's instance is another cluster's: DNS unites it with ours.
        eventually(lambda: a_records(app, "php-apache-svc.default.svc.cluster.local.")
                   == PODS | {"10.99.0.1"}, what="merged answer")
        world["kube"].store.delete("pods", "default", "php-apache-7d8f9c6b5-abcde")
        eventually(lambda: mirrored(world) == {"10.28.3.13", "10.99.0.1"},
                   what="our deleted pod gone, the neighbour's kept")
    finally:
        app.stop()


def test_nothing_is_pulled_back_from_our_own_registrations(world):
    app = make_app(world)
    try:
        assert app.wait_ready(15)
        eventually(lambda: mirrored(world) == PODS, what="initial mirror")
        snapshot = app.consul.snapshot()
        for service in snapshot.services.values():
            for instance in service.instances:
                assert instance.address not in PODS, f"{service.key} pulled back {instance}"
    finally:
        app.stop()
