"""Consul agent API: local service registration (synced to the catalog) and /agent/self.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR. Catalog
visibility is polled because a real agent syncs its local state asynchronously.
"""

from __future__ import annotations

import consul as pyconsul

from tests.conftest import eventually
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


def test_register_with_py_consul_shows_in_agent_and_catalog(consul: ConsulTarget) -> None:
    client = consul.client()
    name = consul.unique("web")
    sid = f"{name}-1"
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{sid}"))
    assert client.agent.service.register(name, service_id=sid, port=8080, tags=["v1"], meta={"k": "v"})

    service = client.agent.services()[sid]
    assert service["Service"] == name
    assert service["Tags"] == ["v1"]
    assert service["Meta"] == {"k": "v"}
    assert service["Port"] == 8080
    assert service["Address"] == ""
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    assert service["EnableTagOverride"] is False

    entries = eventually(lambda: client.catalog.service(name)[1])
    assert entries[0]["Node"] == consul.agent_node
    assert entries[0]["ServiceID"] == sid


def test_register_answers_200_with_empty_body(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    response = consul.http("PUT", "/v1/agent/service/register", {"Name": name})
    assert (response.status, response.body) == (200, b"")


def test_register_accepts_lowercase_and_snake_case_keys(consul: ConsulTarget) -> None:
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}-x"))
    body = {
        "name": name,
        "id": f"{name}-x",
        "tags": ["t"],
        "enable_tag_override": True,
        "tagged_addresses": {"lan": {"address": "10.0.0.9", "port": 9}},
    }
    assert consul.http("PUT", "/v1/agent/service/register", body).status == 200
    service = consul.http("GET", "/v1/agent/services").json()[f"{name}-x"]
    assert service["EnableTagOverride"] is True
    assert service["TaggedAddresses"] == {"lan": {"Address": "10.0.0.9", "Port": 9}}


def test_service_check_starts_critical_and_is_named_after_the_service(consul: ConsulTarget) -> None:
    client = consul.client()
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    client.agent.service.register(name, check=pyconsul.Check.ttl("30s"))
    checks = eventually(lambda: client.health.checks(name)[1])
    [check] = checks
    assert check["CheckID"] == f"service:{name}"
    assert check["Name"] == f"Service '{name}' check"
    assert check["Status"] == "critical"
    assert check["Type"] == "ttl"
    assert client.health.service(name, passing=True)[1] == []


def test_missing_name_is_400(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/agent/service/register", {"ID": "x"})
    assert (response.status, response.text) == (400, "Missing service name")


def test_malformed_body_is_400(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/agent/service/register", "[")
    assert response.status == 400
    assert response.text.startswith("Request decode failed: ")


def test_invalid_check_is_400(consul: ConsulTarget) -> None:
    body = {"Name": consul.unique("web"), "Check": {"HTTP": "http://127.0.0.1:1/"}}
    response = consul.http("PUT", "/v1/agent/service/register", body)
    assert response.status == 400
    assert response.text.startswith("Invalid check: ")


def test_deregister_removes_from_agent_and_catalog(consul: ConsulTarget) -> None:
    client = consul.client()
    name = consul.unique("web")
    client.agent.service.register(name)
    eventually(lambda: client.catalog.service(name)[1])
    assert client.agent.service.deregister(name)
    assert name not in client.agent.services()
    eventually(lambda: client.catalog.service(name)[1] == [])


def test_deregister_unknown_id_is_404(consul: ConsulTarget) -> None:
    sid = consul.unique("nope")
    response = consul.http("PUT", f"/v1/agent/service/deregister/{sid}")
    assert response.status == 404
    assert response.text == f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.'


def test_agent_write_endpoints_require_put(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/agent/service/register")
    assert (response.status, response.text) == (405, "method GET not allowed")
    assert response.header("Allow") == "OPTIONS,PUT"


def test_agent_self_describes_the_agent(consul: ConsulTarget) -> None:
    self_info = consul.client().agent.self()
    config = self_info["Config"]
    assert config["NodeName"]
    assert config["Datacenter"]
    assert "Member" in self_info
    nodes = {n["Node"] for n in consul.http("GET", "/v1/catalog/nodes").json()}
    assert config["NodeName"] in nodes


def test_ttl_check_updates_flow_into_health(consul: ConsulTarget) -> None:
    client = consul.client()
    name = consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", f"/v1/agent/service/deregister/{name}"))
    client.agent.service.register(name, check=pyconsul.Check.ttl("60s"))
    check_id = f"service:{name}"
    assert client.agent.check.ttl_pass(check_id, notes="all good")
    entries = eventually(lambda: client.health.service(name, passing=True)[1])
    [check] = [c for c in entries[0]["Checks"] if c["CheckID"] == check_id]
    assert check["Output"] == "all good"
    assert client.agent.check.ttl_warn(check_id)
    eventually(lambda: client.health.service(name, passing=True)[1] == [])
    assert client.agent.checks()[check_id]["Status"] == "warning"


def test_check_update_of_unknown_check_is_404(consul: ConsulTarget) -> None:
    response = consul.http("PUT", f"/v1/agent/check/pass/{consul.unique('nope')}")
    assert response.status == 404
    assert response.text.startswith("Unknown check ID")
