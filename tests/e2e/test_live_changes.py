"""End to end across processes: `bridge fake-k8s`, `bridge fake-consul` and `bridge run`, each a
subprocess; Pods and EndpointSlices changed through the official `kubernetes` client; the
answers read with the real `dig`, as an operator would check them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.conftest import eventually
from tests.e2e.proc import Proc

DIG = shutil.which("dig") or "/usr/bin/dig"
NS = "default"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The three processes, started; the DNS port and an ApiClient from the written kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    with Proc("fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig", str(kubeconfig)) as k8s, \
            Proc("fake-consul", "--listen", "127.0.0.1:0") as consul:
        k8s.expect("kubeconfig written")
        k8s.expect(r"fake-k8s listening on http://127\.0\.0\.1:\d+")
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        with Proc("run", "--kubeconfig", str(kubeconfig), "--consul-addr", consul_url,
                  "--dns-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0") as bridge:
            dns_port = int(bridge.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
            api = config.new_client_from_config(str(kubeconfig))
            try:
                yield {"dns_port": dns_port, "api": api, "bridge": bridge}
            finally:
                api.close()
            assert bridge.stop() == 0, bridge.stderr[-2000:]
        assert consul.stop() == 0 and k8s.stop() == 0


def dig(port: int, name: str) -> set[str]:
    """The A records `dig +short` prints for `name` from the bridge."""
    result = subprocess.run(
        [DIG, "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=2", name, "A"],
        capture_output=True, text=True, timeout=10, check=False,
    )
    assert result.returncode == 0, f"dig failed: {result.stdout} {result.stderr}"
    return set(result.stdout.split())


def pod_body(name: str, app: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "web", "image": "registry.example/web:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]}}


def set_status(core: client.CoreV1Api, name: str, ip: str, ready: bool) -> None:
    """What a kubelet reports for a running Pod: its IP and whether it is Ready."""
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    core.patch_namespaced_pod_status(name, NS, {"status": status})


def answers(port: int, name: str, want: set[str]) -> None:
    """Until dig answers exactly `want` for `name` (each change takes a watch event, a table
    update and a publish: well under a second, 20 s for a loaded machine)."""

    def check() -> bool:
        got = dig(port, name)
        assert got == want, f"dig answered {sorted(got)}, want {sorted(want)}"
        return True

    eventually(check, 20, f"dig {name}")


def test_pod_changes_through_the_official_client_change_what_dig_answers(stack):
    core = client.CoreV1Api(stack["api"])
    port, name = stack["dns_port"], f"web.{NS}.svc.cluster.local"
    core.create_namespaced_service(NS, {
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}})
    for pod, ip in (("web-0", "10.20.0.10"), ("web-1", "10.20.0.11")):
        core.create_namespaced_pod(NS, pod_body(pod, "web"))
        set_status(core, pod, ip, ready=True)
    answers(port, name, {"10.20.0.10", "10.20.0.11"})

    set_status(core, "web-1", "10.20.0.11", ready=False)
    answers(port, name, {"10.20.0.10"})

    core.create_namespaced_pod(NS, pod_body("web-2", "web"))
    set_status(core, "web-2", "10.20.0.12", ready=True)
    answers(port, name, {"10.20.0.10", "10.20.0.12"})

    core.delete_namespaced_pod("web-0", NS)
    answers(port, name, {"10.20.0.12"})


def test_endpoint_slice_changes_through_the_official_client_change_what_dig_answers(stack):
    core = client.CoreV1Api(stack["api"])
    discovery = client.DiscoveryV1Api(stack["api"])
    port, name = stack["dns_port"], f"db.{NS}.svc.cluster.local"
    # A Service without a selector: its owner writes the EndpointSlice by hand.
    core.create_namespaced_service(NS, {
        "metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}})

    def endpoints(*ips: str) -> dict[str, Any]:
        return {"addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
                "metadata": {"name": "db-manual", "labels": {"kubernetes.io/service-name": "db"}},
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}

    discovery.create_namespaced_endpoint_slice(NS, endpoints("192.0.2.1", "192.0.2.2"))
    answers(port, name, {"192.0.2.1", "192.0.2.2"})

    discovery.replace_namespaced_endpoint_slice("db-manual", NS, endpoints("192.0.2.3"))
    answers(port, name, {"192.0.2.3"})

    discovery.delete_namespaced_endpoint_slice("db-manual", NS)
    answers(port, name, set())
