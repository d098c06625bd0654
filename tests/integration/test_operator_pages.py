"""The operator's pages of a running bridge (in process, on real sockets): what they say about
namespaces DNS leaves out and Consul checks that fail, both DNS set-ups (worker processes,
and answering in the main process), and that no credential ever appears on them."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest

from bridge.app import App
from tests.conftest import eventually
from tests.integration.harness import World, converged, namespace, pod, service

TOKEN = "3f1c2a9e-secret-token-7b7d"


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def get(app: App, path: str, **query: str) -> tuple[int, str]:
    host, port = app.http.address
    url = f"http://{host}:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def explained(app: App, name: str) -> dict[str, Any]:
    return json.loads(get(app, "/explain", name=name)[1])


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "workers"])
def test_pages_explain_filtered_namespaces_and_failing_checks_and_show_no_token(world, workers):
    world.apply([namespace("shop"), namespace("kube-ops"),
                 service("web", "shop", headless=True, selector={"app": "web"}),
                 pod("web-1", "10.1.0.1", "shop", labels={"app": "web"}),
                 service("agent", "kube-ops", headless=True, selector={"app": "agent"}),
                 pod("agent-1", "10.1.0.9", "kube-ops", labels={"app": "agent"})])
    for node, address, status in (("vm-1", "192.0.2.1", "passing"), ("vm-2", "192.0.2.2", "critical")):
        world.consul.load([{
            "Node": node, "Address": address,
            "Service": {"ID": f"pay-{node}", "Service": "pay", "Port": 9000},
            "Check": {"CheckID": f"pay-{node}", "Name": "pay alive", "ServiceID": f"pay-{node}",
                      "Status": status}}])
    app = world.start_bridge(**{"dns.workers": workers, "consul.token": TOKEN,
                                "dns.deny_namespaces": ["kube-*"]})
    converged(app)

    def pay() -> dict[str, Any]:
        data = explained(app, "pay")
        assert len(data["instances"]) == 1 and len(data["left_out"]) == 1, data
        return data

    data = eventually(pay, 15, "pay explained with one VM left out")
    assert data["instances"][0]["origin"]["node"] == "vm-1", data
    [left] = data["left_out"]
    assert left["origin"]["node"] == "vm-2" and "pay alive (critical)" in left["reason"], left

    data = explained(app, "agent.kube-ops.svc.cluster.local")
    assert data["known"] is False and data["dns"]["responses"]["A"]["rcode"] == "NXDOMAIN", data
    assert any("dns.deny_namespaces=['kube-*']" in line for line in data["why_not"]), data["why_not"]

    data = explained(app, "web.shop.svc.cluster.local")
    assert [i["address"] for i in data["instances"]] == ["10.1.0.1"], data
    assert data["registrations"]["state"] == "in sync", data["registrations"]

    pages = [get(app, "/status"), get(app, "/status", q="pay"), get(app, "/status/explain", name="shop/web"),
             get(app, "/explain", name="consul/pay"), get(app, "/metrics")]
    for code, body in pages:
        assert code == 200
        assert TOKEN not in body, "a credential on an operator page"
    assert "pay" in pages[1][1] and "1 matching" in pages[1][1]
