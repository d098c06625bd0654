"""Consul health API: service entries, the ?passing filter, and check listings.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR.
"""

from __future__ import annotations

import pytest

from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


def instance(consul: ConsulTarget, name: str, sid: str, *statuses: str, node_status: str | None = None) -> str:
    """Register one instance on its own node with service checks (and maybe a node check)."""
    node = consul.unique("node")
    checks = [{"CheckID": f"{sid}-{i}", "Name": f"c{i}", "ServiceID": sid, "Status": s} for i, s in enumerate(statuses)]
    if node_status is not None:
        checks.append({"CheckID": "node-health", "Name": "node", "Status": node_status})
    consul.register({"Node": node, "Address": "10.1.0.1", "Service": {"Service": name, "ID": sid}, "Checks": checks})
    return node


def test_service_entry_shape(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    node = instance(consul, name, "web-1", "passing", node_status="passing")
    index, entries = consul.client().health.service(name)
    [entry] = entries
    assert list(entry) == ["Node", "Service", "Checks"]
    assert entry["Node"]["Node"] == node
    assert list(entry["Node"]) == [
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta", "CreateIndex", "ModifyIndex",
    ]  # fmt: skip
    service = entry["Service"]
    assert service["ID"] == "web-1"
    assert service["Service"] == name
    assert service["Tags"] == []
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    # Node-level checks come first, then the instance's own.
    assert [c["CheckID"] for c in entry["Checks"]] == ["node-health", "web-1-0"]
    check = entry["Checks"][1]
    assert list(check) == [
        "Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName", "ServiceTags", "Type",
        "Interval", "Timeout", "ExposedPort", "Definition", "CreateIndex", "ModifyIndex",
    ]  # fmt: skip
    assert check["ServiceTags"] == []
    assert check["Definition"] == {}
    assert int(index) >= 1


def test_passing_filter_drops_any_non_passing_check(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    instance(consul, name, "ok", "passing")
    instance(consul, name, "warn", "passing", "warning")
    instance(consul, name, "crit", "critical")
    instance(consul, name, "bad-node", "passing", node_status="critical")
    instance(consul, name, "no-checks")
    _, entries = consul.client().health.service(name, passing=True)
    assert sorted(e["Service"]["ID"] for e in entries) == ["no-checks", "ok"]


@pytest.mark.parametrize("value", ["", "1", "true", "T", "TRUE"])
def test_passing_true_spellings(consul: ConsulTarget, value: str) -> None:
    name = consul.unique("web")
    instance(consul, name, "crit", "critical")
    query = "passing" if value == "" else f"passing={value}"
    assert consul.http("GET", f"/v1/health/service/{name}?{query}").json() == []


def test_passing_false_means_no_filter(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    instance(consul, name, "crit", "critical")
    assert len(consul.http("GET", f"/v1/health/service/{name}?passing=false").json()) == 1


def test_invalid_passing_value_is_400(consul: ConsulTarget) -> None:
    response = consul.http("GET", f"/v1/health/service/{consul.unique('web')}?passing=yes")
    assert (response.status, response.text) == (400, "Invalid value for ?passing")


def test_tag_filter_on_health(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    consul.register(
        {"Node": consul.unique("n"), "Address": "10.0.0.1", "Service": {"Service": name, "ID": "a", "Tags": ["Blue"]}}
    )
    consul.register(
        {"Node": consul.unique("n"), "Address": "10.0.0.2", "Service": {"Service": name, "ID": "b", "Tags": ["green"]}}
    )
    _, entries = consul.client().health.service(name, tag="blue")
    assert [e["Service"]["ID"] for e in entries] == ["a"]


def test_unknown_service_is_empty_list(consul: ConsulTarget) -> None:
    response = consul.http("GET", f"/v1/health/service/{consul.unique('nothing')}")
    assert (response.status, response.json()) == (200, [])
    assert response.index >= 1


def test_checks_node_and_state_listings(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    node = instance(consul, name, "web-1", "warning", node_status="passing")
    client = consul.client()
    _, service_checks = client.health.checks(name)
    assert [c["CheckID"] for c in service_checks] == ["web-1-0"]
    _, node_checks = client.health.node(node)
    assert sorted(c["CheckID"] for c in node_checks) == ["node-health", "web-1-0"]
    _, warnings = client.health.state("warning")
    assert ("web-1-0", node) in {(c["CheckID"], c["Node"]) for c in warnings}
    _, everything = client.health.state("any")
    assert {"web-1-0", "node-health"} <= {c["CheckID"] for c in everything if c["Node"] == node}


def test_agent_node_has_a_passing_serf_health_check(consul: ConsulTarget) -> None:
    checks = consul.http("GET", f"/v1/health/node/{consul.agent_node}").json()
    serf = [c for c in checks if c["CheckID"] == "serfHealth"]
    assert serf and serf[0]["Status"] == "passing"
    assert serf[0]["Name"] == "Serf Health Status"


def test_check_status_change_moves_the_service_index(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    node = consul.unique("n")
    body = {
        "Node": node,
        "Address": "10.0.0.1",
        "Service": {"Service": name},
        "Check": {"CheckID": "ready", "Name": "ready", "ServiceID": name, "Status": "critical"},
    }
    consul.register(body)
    before = consul.http("GET", f"/v1/health/service/{name}?passing")
    assert before.json() == []
    consul.register({**body, "Check": {**body["Check"], "Status": "passing"}})
    after = consul.http("GET", f"/v1/health/service/{name}?passing")
    assert after.index > before.index
    assert [e["Service"]["ID"] for e in after.json()] == [name]


def test_missing_segments_are_400(consul: ConsulTarget) -> None:
    assert consul.http("GET", "/v1/health/service/").text == "Missing service name"
    assert consul.http("GET", "/v1/health/checks/").text == "Missing service name"
    assert consul.http("GET", "/v1/health/node/").text == "Missing node name"
    assert consul.http("GET", "/v1/health/state/").text == "Missing check state"
