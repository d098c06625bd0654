"""Consul catalog API: registration, deregistration and catalog reads.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


def external_node(consul: ConsulTarget, *, service: dict | None = None, **extra: object) -> dict:
    """A catalog registration for a synthetic node, in the lowercase keys clients send."""
    body: dict = {"node": consul.unique("ext"), "address": "10.0.0.1", **extra}
    if service is not None:
        body["service"] = service
    return body


# -- register -------------------------------------------------------------------------


def test_register_via_py_consul_then_read_back_with_exact_field_names(consul: ConsulTarget) -> None:
    client = consul.client()
    node, name = consul.unique("k8s-sync"), consul.unique("web")
    consul.cleanups.append(lambda: client.catalog.deregister(node))

    assert client.catalog.register(
        node, "127.0.0.1", service={"Service": name, "ID": f"{name}-1", "Port": 8080, "Tags": ["k8s"]}
    )

    _, entries = client.catalog.service(name)
    assert len(entries) == 1
    entry = entries[0]
    assert list(entry) == [
        "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "NodeMeta", "ServiceKind", "ServiceID",
        "ServiceName", "ServiceTags", "ServiceAddress", "ServiceWeights", "ServiceMeta", "ServicePort",
        "ServiceSocketPath", "ServiceEnableTagOverride", "ServiceProxy", "ServiceConnect", "ServiceLocality",
        "CreateIndex", "ModifyIndex",
    ]  # fmt: skip
    assert entry["Node"] == node
    assert entry["Address"] == "127.0.0.1"
    assert entry["ServiceID"] == f"{name}-1"
    assert entry["ServiceName"] == name
    assert entry["ServiceTags"] == ["k8s"]
    assert entry["ServiceAddress"] == ""  # empty means "use the node Address"
    assert entry["ServicePort"] == 8080
    assert entry["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert entry["ServiceMeta"] == {}
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0


def test_register_returns_json_true(consul: ConsulTarget) -> None:
    body = external_node(consul)
    response = consul.http("PUT", "/v1/catalog/register", body)
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": body["node"]}))
    assert response.status == 200
    assert response.json() is True
    assert response.header("Content-Type") == "application/json"


def test_service_id_defaults_to_name_and_tags_default_to_empty_list(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"service": name, "port": 1})
    consul.register(body)
    [entry] = consul.http("GET", f"/v1/catalog/service/{name}").json()
    assert entry["ServiceID"] == name
    assert entry["ServiceTags"] == []


def test_unknown_keys_such_as_write_request_are_ignored(consul: ConsulTarget) -> None:
    body = external_node(consul, WriteRequest={"Token": ""}, SomethingNew=1)
    consul.register(body)
    nodes = consul.http("GET", "/v1/catalog/nodes").json()
    assert body["node"] in {n["Node"] for n in nodes}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Address": "10.0.0.1"}, "Must provide node"),
        ({"Node": "n-no-address"}, "Must provide address if SkipNodeUpdate is not set"),
        (
            {"Node": "n-x", "Address": "10.0.0.1", "Service": {"ID": "only-id"}},
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            {"Node": "n-x", "Address": "10.0.0.1", "Service": {"Service": "s", "Address": "0.0.0.0"}},
            "Invalid service address",
        ),
        ({"Node": "n-x", "Address": "10.0.0.1", "ID": "not-a-uuid"}, "Bad node ID: uuid string is wrong length"),
    ],
)
def test_register_validation_errors_are_500_plain_text(consul: ConsulTarget, body: dict, message: str) -> None:
    response = consul.http("PUT", "/v1/catalog/register", body)
    assert response.status == 500
    assert response.text == message
    assert response.header("Content-Type") == "text/plain; charset=utf-8"


def test_malformed_body_is_400_request_decode_failed(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/catalog/register", "{not json")
    assert response.status == 400
    assert response.text.startswith("Request decode failed: ")

    wrong_type = consul.http("PUT", "/v1/catalog/register", {"Node": "n", "Address": "a", "Service": {"Port": "80"}})
    assert wrong_type.status == 400
    assert wrong_type.text.startswith("Request decode failed: json: cannot unmarshal string into Go struct field")


def test_skip_node_update_keeps_existing_node_fields(consul: ConsulTarget) -> None:
    body = external_node(consul, NodeMeta={"external-source": "kubernetes"})
    consul.register(body)
    name = consul.unique("svc")
    consul.register({"Node": body["node"], "SkipNodeUpdate": True, "Service": {"Service": name}})
    node = consul.http("GET", f"/v1/catalog/node/{body['node']}").json()["Node"]
    assert node["Address"] == "10.0.0.1"
    assert node["Meta"] == {"external-source": "kubernetes"}


def test_check_defaults_node_and_id_from_name_and_status_to_critical(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name, "ID": name}, check={"Name": "ready", "ServiceID": name})
    consul.register(body)
    [check] = consul.http("GET", f"/v1/health/checks/{name}").json()
    assert check["Node"] == body["node"]
    assert check["CheckID"] == "ready"
    assert check["Status"] == "critical"
    assert check["ServiceName"] == name


def test_check_for_an_unknown_service_is_rejected(consul: ConsulTarget) -> None:
    body = external_node(consul, check={"CheckID": "c1", "Name": "c1", "ServiceID": "nope"})
    response = consul.http("PUT", "/v1/catalog/register", body)
    assert response.status == 500
    assert response.text == "Unknown service ID 'nope' for check ID 'c1'"


# -- indexes --------------------------------------------------------------------------


def test_identical_reregistration_changes_no_index(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name, "Port": 80, "Tags": ["a"], "Meta": {"k": "v"}})
    consul.register(body)
    before_service = consul.http("GET", f"/v1/catalog/service/{name}")
    before_services = consul.http("GET", "/v1/catalog/services")
    before_nodes = consul.http("GET", "/v1/catalog/nodes")

    consul.register(body)

    after_service = consul.http("GET", f"/v1/catalog/service/{name}")
    assert after_service.index == before_service.index
    assert after_service.json()[0]["ModifyIndex"] == before_service.json()[0]["ModifyIndex"]
    assert consul.http("GET", "/v1/catalog/services").index == before_services.index
    assert consul.http("GET", "/v1/catalog/nodes").index == before_nodes.index


def test_changed_registration_bumps_modify_index_but_keeps_create_index(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name, "Port": 80})
    consul.register(body)
    [first] = consul.http("GET", f"/v1/catalog/service/{name}").json()
    consul.register({**body, "service": {"Service": name, "Port": 81}})
    after = consul.http("GET", f"/v1/catalog/service/{name}")
    [second] = after.json()
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]
    assert after.index == second["ModifyIndex"]


def test_per_service_index_is_not_moved_by_other_services(consul: ConsulTarget) -> None:
    web, db = consul.unique("web"), consul.unique("db")
    consul.register(external_node(consul, service={"Service": web}))
    web_index = consul.http("GET", f"/v1/catalog/service/{web}").index
    consul.register(external_node(consul, service={"Service": db}))
    assert consul.http("GET", f"/v1/catalog/service/{web}").index == web_index
    assert consul.http("GET", "/v1/catalog/services").index > web_index


def test_missing_service_reports_the_last_extinction_index(consul: ConsulTarget) -> None:
    gone = consul.unique("gone")
    body = external_node(consul, service={"Service": gone})
    consul.register(body)
    consul.http("PUT", "/v1/catalog/deregister", {"Node": body["node"], "ServiceID": gone})
    extinction = consul.http("GET", f"/v1/catalog/service/{gone}")
    assert extinction.json() == []
    never = consul.http("GET", f"/v1/catalog/service/{consul.unique('never')}")
    assert never.json() == []
    # Every missing service shares the index of the last time any service disappeared.
    assert never.index == extinction.index >= 1


# -- deregister -------------------------------------------------------------------------


def test_deregister_precedence_service_then_check_then_node(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(
        consul,
        service={"Service": name},
        checks=[{"CheckID": "svc-check", "Name": "s", "ServiceID": name}, {"CheckID": "node-check", "Name": "n"}],
    )
    consul.register(body)
    node = body["node"]

    assert consul.http("PUT", "/v1/catalog/deregister", {"Node": node, "ServiceID": name}).json() is True
    checks = {c["CheckID"] for c in consul.http("GET", f"/v1/health/node/{node}").json()}
    assert checks == {"node-check"}  # the service took its own check with it

    assert consul.http("PUT", "/v1/catalog/deregister", {"Node": node, "CheckID": "node-check"}).json() is True
    assert consul.http("GET", f"/v1/health/node/{node}").json() == []

    assert consul.http("PUT", "/v1/catalog/deregister", {"Node": node}).json() is True
    assert node not in {n["Node"] for n in consul.http("GET", "/v1/catalog/nodes").json()}


def test_deregister_is_idempotent_and_requires_node(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/catalog/deregister", {"Node": consul.unique("ghost"), "ServiceID": "x"})
    assert (response.status, response.json()) == (200, True)
    missing = consul.http("PUT", "/v1/catalog/deregister", {"ServiceID": "x"})
    assert (missing.status, missing.text) == (500, "Must provide node")


def test_py_consul_deregister(consul: ConsulTarget) -> None:
    client = consul.client()
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name})
    consul.register(body)
    assert client.catalog.deregister(body["node"], service_id=name)
    assert client.catalog.service(name)[1] == []


# -- reads --------------------------------------------------------------------------------


def test_catalog_services_rolls_up_unique_tags(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    consul.register(external_node(consul, service={"Service": name, "ID": "a", "Tags": ["x", "y"]}))
    consul.register(external_node(consul, service={"Service": name, "ID": "b", "Tags": ["y", "z"]}))
    index, services = consul.client().catalog.services()
    assert sorted(services[name]) == ["x", "y", "z"]
    assert int(index) >= 1


def test_tag_filter_is_repeatable_anded_and_case_insensitive(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    consul.register(external_node(consul, service={"Service": name, "ID": "a", "Tags": ["Primary", "v1"]}))
    consul.register(external_node(consul, service={"Service": name, "ID": "b", "Tags": ["v1"]}))
    both = consul.http("GET", f"/v1/catalog/service/{name}?tag=primary&tag=V1").json()
    assert [e["ServiceID"] for e in both] == ["a"]
    one = consul.client().catalog.service(name, tag="v1")[1]
    assert sorted(e["ServiceID"] for e in one) == ["a", "b"]


def test_node_meta_filter(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    consul.register(external_node(consul, service={"Service": name, "ID": "a"}, NodeMeta={"zone": "a"}))
    consul.register(external_node(consul, service={"Service": name, "ID": "b"}, NodeMeta={"zone": "b"}))
    entries = consul.http("GET", f"/v1/catalog/service/{name}?node-meta=zone:b").json()
    assert [e["ServiceID"] for e in entries] == ["b"]
    assert entries[0]["NodeMeta"] == {"zone": "b"}


def test_catalog_nodes_shape(consul: ConsulTarget) -> None:
    body = external_node(consul, TaggedAddresses={"lan": "10.0.0.1"}, NodeMeta={"a": "b"})
    consul.register(body)
    index, nodes = consul.client().catalog.nodes()
    assert int(index) >= 1
    [node] = [n for n in nodes if n["Node"] == body["node"]]
    assert list(node) == [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "Meta",
        "CreateIndex",
        "ModifyIndex",
    ]
    assert node["TaggedAddresses"] == {"lan": "10.0.0.1"}
    assert node["Meta"] == {"a": "b"}


def test_catalog_node_lists_services_by_id(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name, "ID": "one", "Port": 5})
    consul.register(body)
    _, data = consul.client().catalog.node(body["node"])
    assert data["Node"]["Node"] == body["node"]
    service = data["Services"]["one"]
    assert service["Service"] == name
    assert service["Port"] == 5
    assert service["Tags"] == []
    assert service["Weights"] == {"Passing": 1, "Warning": 1}


def test_catalog_node_unknown_is_null(consul: ConsulTarget) -> None:
    response = consul.http("GET", f"/v1/catalog/node/{consul.unique('ghost')}")
    assert response.status == 200
    assert response.json() is None
    assert response.index >= 1


def test_node_services_lists_agent_services(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(consul, service={"Service": name, "ID": "one"})
    consul.register(body)
    data = consul.http("GET", f"/v1/catalog/node-services/{body['node']}").json()
    assert data["Node"]["Node"] == body["node"]
    assert [s["ID"] for s in data["Services"]] == ["one"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/catalog/service/", "Missing service name"),
        ("/v1/catalog/node/", "Missing node name"),
        ("/v1/catalog/node-services/", "Missing node name"),
    ],
)
def test_missing_path_segment_is_400(consul: ConsulTarget, path: str, message: str) -> None:
    response = consul.http("GET", path)
    assert (response.status, response.text) == (400, message)


def test_node_services_of_an_unknown_node_is_null_node_and_services(consul: ConsulTarget) -> None:
    response = consul.http("GET", f"/v1/catalog/node-services/{consul.unique('ghost')}")
    assert (response.status, response.json()) == (200, {"Node": None, "Services": None})


def test_subtree_root_without_slash_redirects(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/service")
    assert response.status == 301
    assert response.header("Location") == "/v1/catalog/service/"


def test_filter_expressions(consul: ConsulTarget) -> None:
    node, web, db = consul.unique("k8s-sync"), consul.unique("web"), consul.unique("db")
    consul.register(
        {
            "Node": node,
            "Address": "127.0.0.1",
            "Service": {"Service": web, "Tags": ["k8s"], "Meta": {"external-source": "kubernetes"}},
        }
    )
    consul.register({"Node": node, "Address": "127.0.0.1", "SkipNodeUpdate": True, "Service": {"Service": db}})
    in_tags = quote('"k8s" in Tags')
    owned = consul.http("GET", f"/v1/catalog/node-services/{node}?filter={in_tags}")
    assert [s["Service"] for s in owned.json()["Services"]] == [web]
    meta_match = quote('ServiceMeta["external-source"] == kubernetes')
    assert len(consul.http("GET", f"/v1/catalog/service/{web}?filter={meta_match}").json()) == 1
    unknown = quote("NoSuchField == 1")
    bad = consul.http("GET", f"/v1/catalog/service/{web}?filter={unknown}")
    assert bad.status == 500
    assert bad.text.startswith("Failed to create boolean expression evaluator")


def test_check_definition_and_type(consul: ConsulTarget) -> None:
    name = consul.unique("svc")
    body = external_node(
        consul,
        service={"Service": name},
        check={
            "CheckID": "http",
            "Name": "http",
            "ServiceID": name,
            "Status": "passing",
            "Definition": {"HTTP": "http://10.0.0.1/health", "Interval": "10s", "Timeout": "1s"},
        },
    )
    consul.register(body)
    [check] = consul.http("GET", f"/v1/health/checks/{name}").json()
    assert check["Type"] == "http"
    assert check["Definition"]["HTTP"] == "http://10.0.0.1/health"
    assert check["Definition"]["Interval"] == "10s"
    assert check["Definition"]["Timeout"] == "1s"
