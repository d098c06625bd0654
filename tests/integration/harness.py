"""Shared set-up for tests that run the whole bridge against the two test servers.

`World` is a Kubernetes API test server plus a Consul test server on real loopback sockets;
`start_bridge()` runs an `App` against them with the settings a test names. Helpers read
Consul over plain HTTP, the way an operator would, and poll with deadlines.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from bridge import config
from bridge.app import App
from bridge.testing.consul import ConsulServer
from bridge.testing.kube import KubeAPIServer
from tests.conftest import eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"


class World:
    """The two test servers, started, with helpers to read them. A World built with another
    World's Consul is a second cluster sharing it (and leaves stopping it to its owner)."""

    def __init__(self, tmp_path: Path, consul: ConsulServer | None = None) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.kube = KubeAPIServer(host="127.0.0.1", port=0)
        self._owns_consul = consul is None
        self.consul = consul or ConsulServer(host="127.0.0.1", port=0, jitter=False)
        self.kube.start()
        if self._owns_consul:
            self.consul.start()
        self.kubeconfig = tmp_path / "kubeconfig"
        self.kube.write_kubeconfig(self.kubeconfig)
        self.apps: list[App] = []

    def close(self) -> None:
        for app in self.apps:
            app.stop()
        self.kube.stop()
        if self._owns_consul:
            self.consul.stop()

    def apply(self, objects: Iterable[dict[str, Any]]) -> None:
        for obj in objects:
            self.kube.apply(obj)

    def consul_get(self, path: str) -> Any:
        with urllib.request.urlopen(self.consul.url + path, timeout=5) as response:
            return json.load(response)

    def consul_index(self, path: str = "/v1/catalog/services") -> int:
        with urllib.request.urlopen(self.consul.url + path, timeout=5) as response:
            return int(response.headers["X-Consul-Index"])

    def registrations(self, node: str) -> dict[str, dict[str, Any]]:
        """Services on `node` by ID, each with its checks' statuses under "_checks"."""
        view = self.consul_get(f"/v1/catalog/node/{node}")
        if not view:
            return {}
        checks = self.consul_get(f"/v1/health/node/{node}")
        out = {}
        for sid, svc in (view.get("Services") or {}).items():
            svc = dict(svc)
            svc["_checks"] = {c["CheckID"]: c["Status"] for c in checks if c["ServiceID"] == sid}
            out[sid] = svc
        return out

    def start_bridge(self, cluster_id: str = "test", **flags: Any) -> App:
        values = {
            "kubernetes.kubeconfig": str(self.kubeconfig),
            "consul.address": self.consul.url,
            "cluster_id": cluster_id,
            "dns.listen": "127.0.0.1:0",
            "http.listen": "127.0.0.1:0",
            "sync.quiet_period": 0.01,
            "sync.max_delay": 0.1,
        }
        values.update({key.replace("__", "."): value for key, value in flags.items()})
        app = App(config.build(environ={}, flags=values))
        app.start()
        self.apps.append(app)
        return app

    def stop_bridge(self, app: App) -> None:
        app.stop()
        self.apps.remove(app)


def converged(app: App, timeout: float = 15) -> None:
    """Waits until the bridge is ready, Consul holds what it should and no change is pending."""
    assert app.wait_ready(timeout), app.waiting_for()
    eventually(lambda: app.reconciler.converged, timeout, "sync converged")


def a_records(app: App, name: str) -> set[str]:
    host, port = app.dns.addresses[0]
    response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), host, port=port, timeout=5)
    if response.rcode() != dns.rcode.NOERROR or not response.answer:
        return set()
    return {r.address for r in response.answer[0]}


# Builders for the objects a test applies. Pods carry the status a kubelet would report.

def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(name: str, ns: str = "default", *, type: str = "ClusterIP", headless: bool = False,
            selector: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
            annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type, "ports": ports if ports is not None else [{"name": "http", "port": 80}]}
    if selector is not None:
        body["selector"] = selector
    if headless:
        body["clusterIP"] = "None"
    body.update(spec)
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def pod(name: str, ip: str, ns: str = "default", *, labels: dict[str, str] | None = None,
        ready: bool = True, node: str = "", ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x", "ports": ports or []}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": spec,
            "status": {"podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def endpoint_slice(service_name: str, ns: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """A hand-written slice, as the owner of a selector-less Service writes one."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service_name}-manual", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}
