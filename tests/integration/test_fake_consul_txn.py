"""Consul /v1/txn: atomic catalog (Node/Service/Check) and KV transactions.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR.
"""

from __future__ import annotations

import base64

from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


def node_set(name: str, address: str = "10.2.0.1") -> dict:
    return {"Node": {"Verb": "set", "Node": {"Node": name, "Address": address, "Meta": {"external-source": "k8s"}}}}


def service_op(verb: str, node: str, **service: object) -> dict:
    return {"Service": {"Verb": verb, "Node": node, "Service": service}}


def test_node_and_service_set_in_one_transaction(consul: ConsulTarget) -> None:
    node, name = consul.unique("sync"), consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    ops = [
        node_set(node),
        service_op("set", node, ID=f"{name}-1", Service=name, Port=80, Tags=["k8s"], Meta={"m": "1"}),
        # A check for a service created in the same transaction must name the service
        # (recent Consul authorizes it by ServiceName because the service is not stored yet).
        {"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": "ready", "Name": "ready",
                                            "ServiceID": f"{name}-1", "ServiceName": name, "Status": "passing"}}},
    ]  # fmt: skip
    response = consul.http("PUT", "/v1/txn", ops)
    assert response.status == 200, response.text
    body = response.json()
    assert body["Errors"] is None
    assert [list(r) for r in body["Results"]] == [["Node"], ["Service"], ["Check"]]
    assert body["Results"][0]["Node"]["Node"] == node
    service = body["Results"][1]["Service"]
    assert service["ID"] == f"{name}-1"
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    assert service["CreateIndex"] == service["ModifyIndex"] > 0
    assert body["Results"][2]["Check"]["ServiceName"] == name

    [entry] = consul.http("GET", f"/v1/health/service/{name}?passing").json()
    assert entry["Node"]["Meta"] == {"external-source": "k8s"}
    assert entry["Service"]["Tags"] == ["k8s"]


def test_py_consul_txn_put(consul: ConsulTarget) -> None:
    key = consul.unique("txn/key")
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{key}"))
    value = base64.b64encode(b"hello").decode()
    result = consul.client().txn.put([{"KV": {"Verb": "set", "Key": key, "Value": value}}])
    assert result["Errors"] is None
    assert result["Results"][0]["KV"]["Key"] == key
    assert result["Results"][0]["KV"]["Value"] is None  # values are only echoed for "get"
    assert consul.client().kv.get(key)[1]["Value"] == b"hello"


def test_any_failure_rolls_back_everything_with_409(consul: ConsulTarget) -> None:
    node, name = consul.unique("sync"), consul.unique("web")
    ops = [
        node_set(node),
        service_op("set", node, ID="ok", Service=name),
        service_op("set", consul.unique("no-such-node"), ID="bad", Service=name),
    ]
    response = consul.http("PUT", "/v1/txn", ops)
    assert response.status == 409
    assert response.json() == {"Results": None, "Errors": [{"OpIndex": 2, "What": "Missing node registration"}]}
    assert node not in {n["Node"] for n in consul.http("GET", "/v1/catalog/nodes").json()}
    assert consul.http("GET", f"/v1/catalog/service/{name}").json() == []


def test_service_delete_needs_the_service_name_too(consul: ConsulTarget) -> None:
    node, name = consul.unique("sync"), consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    assert consul.http("PUT", "/v1/txn", [node_set(node), service_op("set", node, ID="a", Service=name)]).status == 200

    only_id = consul.http("PUT", "/v1/txn", [service_op("delete", node, ID="a")])
    assert only_id.status == 409
    assert only_id.json()["Errors"] == [
        {"OpIndex": 0, "What": "Must provide service name (Service.Service) when service ID is provided"}
    ]

    deleted = consul.http("PUT", "/v1/txn", [service_op("delete", node, ID="a", Service=name)])
    assert deleted.status == 200
    assert deleted.json() == {"Results": [], "Errors": None}  # deletes produce no result entries
    assert consul.http("GET", f"/v1/catalog/service/{name}").json() == []


def test_cas_verbs_use_modify_index(consul: ConsulTarget) -> None:
    node, name = consul.unique("sync"), consul.unique("web")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    created = consul.http(
        "PUT", "/v1/txn", [node_set(node), service_op("cas", node, ID="a", Service=name, ModifyIndex=0)]
    )
    assert created.status == 200, created.text
    index = created.json()["Results"][1]["Service"]["ModifyIndex"]

    stale = consul.http(
        "PUT", "/v1/txn", [service_op("cas", node, ID="a", Service=name, Port=2, ModifyIndex=index - 1)]
    )
    assert stale.status == 409
    assert stale.json()["Errors"][0]["What"] == f'failed to set service "a" on node "{node}", index is stale'

    fresh = consul.http("PUT", "/v1/txn", [service_op("cas", node, ID="a", Service=name, Port=2, ModifyIndex=index)])
    assert fresh.status == 200
    assert fresh.json()["Results"][0]["Service"]["Port"] == 2


def test_get_of_a_missing_service_is_an_error(consul: ConsulTarget) -> None:
    node = consul.unique("sync")
    response = consul.http("PUT", "/v1/txn", [service_op("get", node, ID="x")])
    assert response.status == 409
    assert response.json()["Errors"] == [{"OpIndex": 0, "What": f'service "x" on node "{node}" doesn\'t exist'}]


def test_unknown_verb_is_reported_per_operation(consul: ConsulTarget) -> None:
    node = consul.unique("sync")
    response = consul.http("PUT", "/v1/txn", [service_op("upsert", node, ID="x", Service="x")])
    assert response.status == 409
    assert response.json()["Errors"][0]["OpIndex"] == 0


def test_more_than_128_operations_is_413(consul: ConsulTarget) -> None:
    ops = [{"KV": {"Verb": "get", "Key": f"k{i}"}} for i in range(129)]
    response = consul.http("PUT", "/v1/txn", ops)
    assert (response.status, response.text) == (413, "Transaction contains too many operations (129 > 128)")


def test_exactly_128_operations_is_accepted(consul: ConsulTarget) -> None:
    node = consul.unique("sync")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    ops = [node_set(node)] + [service_op("set", node, ID=f"s{i}", Service="bulk-" + node) for i in range(127)]
    response = consul.http("PUT", "/v1/txn", ops)
    assert response.status == 200, response.text
    assert len(consul.http("GET", f"/v1/catalog/service/bulk-{node}").json()) == 127


def test_malformed_body_is_400_failed_to_parse(consul: ConsulTarget) -> None:
    response = consul.http("PUT", "/v1/txn", '{"KV":')
    assert response.status == 400
    assert response.text.startswith("Failed to parse body: ")


def test_read_only_transaction(consul: ConsulTarget) -> None:
    key = consul.unique("txn/read")
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{key}"))
    consul.http("PUT", f"/v1/kv/{key}", "v")
    response = consul.http("PUT", "/v1/txn", [{"KV": {"Verb": "get", "Key": key}}])
    assert response.status == 200
    body = response.json()
    assert body["Errors"] is None
    assert base64.b64decode(body["Results"][0]["KV"]["Value"]) == b"v"
    assert response.header("X-Consul-KnownLeader") == "true"


def test_get_verbs_and_deletes_for_nodes_and_checks(consul: ConsulTarget) -> None:
    node = consul.unique("sync")
    consul.cleanups.append(lambda: consul.http("PUT", "/v1/catalog/deregister", {"Node": node}))
    check = {"Node": node, "CheckID": "node-ok", "Name": "node-ok", "Status": "passing"}
    created = consul.http("PUT", "/v1/txn", [node_set(node), {"Check": {"Verb": "set", "Check": check}}])
    assert created.status == 200, created.text
    got = consul.http(
        "PUT",
        "/v1/txn",
        [{"Node": {"Verb": "get", "Node": {"Node": node}}}, {"Check": {"Verb": "get", "Check": check}}],
    )
    assert got.status == 200
    results = got.json()["Results"]
    assert results[0]["Node"]["Address"] == "10.2.0.1"
    assert results[1]["Check"]["Status"] == "passing"
    removed = consul.http("PUT", "/v1/txn", [{"Check": {"Verb": "delete", "Check": check}}])
    assert removed.json() == {"Results": [], "Errors": None}
    assert consul.http("GET", f"/v1/health/node/{node}").json() == []


def test_kv_check_index_guards_a_write(consul: ConsulTarget) -> None:
    key = consul.unique("txn/guard")
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{key}?recurse"))
    consul.http("PUT", f"/v1/kv/{key}/a", "1")
    index = consul.http("GET", f"/v1/kv/{key}/a").json()[0]["ModifyIndex"]
    stale = consul.http(
        "PUT",
        "/v1/txn",
        [
            {"KV": {"Verb": "check-index", "Key": f"{key}/a", "Index": index + 1}},
            {"KV": {"Verb": "set", "Key": f"{key}/b", "Value": base64.b64encode(b"2").decode()}},
        ],
    )
    assert stale.status == 409
    assert stale.json()["Errors"] == [
        {
            "OpIndex": 0,
            "What": f'failed index check for key "{key}/a", current modify index {index} != {index + 1}',
        }
    ]
    assert consul.http("GET", f"/v1/kv/{key}/b").status == 404
