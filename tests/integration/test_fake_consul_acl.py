"""ACL enforcement as Consul does it (fake only: tokens come from the fake's token table).

Unknown tokens are 403 `ACL not found`; writes without permission are 403 `Permission
denied: ...`; reads are filtered, and say so with X-Consul-Results-Filtered-By-ACLs when
the client sent a token.
"""

from __future__ import annotations

import consul as pyconsul
import pytest

from bridge.testing.consul import ConsulServer
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

MASTER = "root-token"


server = conftest_consul.fake_server(acl_master_token=MASTER)
target = conftest_consul.target


def seed(target: ConsulTarget, *names: str) -> None:
    for name in names or ("web", "db"):
        response = target.http(
            "PUT",
            "/v1/catalog/register",
            {"Node": f"node-{name}", "Address": "10.0.0.1", "Service": {"Service": name}},
            headers={"X-Consul-Token": MASTER},
        )
        assert response.status == 200, response.text


def test_default_policy_header_is_deny(target: ConsulTarget) -> None:
    assert target.http("GET", "/v1/catalog/services").header("X-Consul-Default-ACL-Policy") == "deny"


def test_unknown_token_is_403_acl_not_found(target: ConsulTarget) -> None:
    response = target.http("GET", "/v1/catalog/services", headers={"X-Consul-Token": "nope"})
    assert (response.status, response.text) == (403, "ACL not found")
    with pytest.raises(pyconsul.ACLPermissionDenied, match="ACL not found"):
        target.client(token="nope").catalog.services()


def test_token_sources_query_header_and_bearer(server: ConsulServer, target: ConsulTarget) -> None:
    seed(target)
    for query, headers in (
        (f"?token={MASTER}", {}),
        ("", {"X-Consul-Token": MASTER}),
        ("", {"Authorization": f"Bearer {MASTER}"}),
        ("", {"Authorization": f"bearer {MASTER}"}),
    ):
        services = target.http("GET", f"/v1/catalog/services{query}", headers=headers).json()
        assert {"web", "db"} <= set(services)


def test_write_without_permission_names_accessor_and_permission(server: ConsulServer, target: ConsulTarget) -> None:
    token = server.acl.create_token({"node_prefix": {"": "write"}, "service_prefix": {"db": "write"}})
    response = target.http(
        "PUT",
        "/v1/catalog/register",
        {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web"}},
        headers={"X-Consul-Token": token.secret_id},
    )
    assert response.status == 403
    assert response.text == (
        f"Permission denied: token with AccessorID '{token.accessor_id}' lacks permission 'service:write' on \"web\""
    )
    allowed = target.http(
        "PUT",
        "/v1/catalog/register",
        {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "db-primary"}},
        headers={"X-Consul-Token": token.secret_id},
    )
    assert allowed.status == 200


def test_reads_are_filtered_with_header_when_a_token_was_sent(server: ConsulServer, target: ConsulTarget) -> None:
    seed(target)
    reader = server.acl.create_token({"service_prefix": {"web": "read"}, "node_prefix": {"": "read"}})
    response = target.http("GET", "/v1/catalog/services", headers={"X-Consul-Token": reader.secret_id})
    assert response.status == 200
    assert set(response.json()) == {"web"}
    assert response.header("X-Consul-Results-Filtered-By-ACLs") == "true"
    db = target.http("GET", "/v1/health/service/db", headers={"X-Consul-Token": reader.secret_id})
    assert (db.status, db.json()) == (200, [])
    assert db.header("X-Consul-Results-Filtered-By-ACLs") == "true"


def test_anonymous_reads_are_filtered_without_the_header(server: ConsulServer, target: ConsulTarget) -> None:
    seed(target)
    response = target.http("GET", "/v1/catalog/services")
    assert response.json() == {}
    assert response.header("X-Consul-Results-Filtered-By-ACLs") is None


def test_exact_rule_beats_prefix_and_longest_prefix_wins(server: ConsulServer, target: ConsulTarget) -> None:
    seed(target, "web", "west", "db")
    token = server.acl.create_token(
        {"service_prefix": {"": "read", "we": "deny"}, "service": {"web": "read"}, "node_prefix": {"": "read"}}
    )
    services = target.http("GET", "/v1/catalog/services", headers={"X-Consul-Token": token.secret_id}).json()
    assert {"web", "db"} <= set(services)
    assert "west" not in services


def test_kv_permissions(server: ConsulServer, target: ConsulTarget) -> None:
    token = server.acl.create_token({"key_prefix": {"locks/": "write", "": "read"}})
    headers = {"X-Consul-Token": token.secret_id}
    assert target.http("PUT", "/v1/kv/locks/leader", "me", headers=headers).json() is True
    denied = target.http("PUT", "/v1/kv/config/x", "v", headers=headers)
    assert denied.status == 403
    assert "lacks permission 'key:write' on \"config/x\"" in denied.text


def test_txn_permission_errors_are_reported_per_operation(server: ConsulServer, target: ConsulTarget) -> None:
    token = server.acl.create_token({"node_prefix": {"": "write"}})
    ops = [
        {"Node": {"Verb": "set", "Node": {"Node": "n", "Address": "10.0.0.1"}}},
        {"Service": {"Verb": "set", "Node": "n", "Service": {"Service": "web"}}},
    ]
    response = target.http("PUT", "/v1/txn", ops, headers={"X-Consul-Token": token.secret_id})
    assert response.status == 409
    [error] = response.json()["Errors"]
    assert error["OpIndex"] == 1
    assert error["What"].startswith("Permission denied: token with AccessorID")


def test_management_token_can_do_everything(target: ConsulTarget) -> None:
    client = target.client(token=MASTER)
    assert client.catalog.register("n", "10.0.0.1", service={"Service": "anything"})
    assert client.agent.service.register("local")
    assert "local" in client.agent.services()
