"""ACLs managed as on a real Consul: /v1/acl/policy and /v1/acl/token with the management token.

Rules are Consul's rule language (HCL or JSON); a token's policies are merged (deny wins over
write, list and read); an exact rule beats any prefix and the longest prefix wins. Error
texts are Consul's (acl/errors.go; agent/consul/acl_endpoint.go), as the cited rules say.
"""

from __future__ import annotations

import consul as pyconsul
import pytest

from bridge.testing.consul import ConsulServer
from bridge.testing.timers import ManualClock
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

MASTER = "9f5c3a8e-2f0a-4d0e-8c55-2e6b3f1d7a10"
ROOT = {"X-Consul-Token": MASTER}

server = conftest_consul.fake_server(acl_master_token=MASTER)
target = conftest_consul.target


def policy(target: ConsulTarget, name: str, rules: str) -> dict:
    response = target.http("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules}, headers=ROOT)
    assert response.status == 200, response.text
    return response.json()


def token(target: ConsulTarget, *policies: str, **extra) -> dict:
    body = {"Description": "test", "Policies": [{"Name": p} for p in policies], **extra}
    response = target.http("PUT", "/v1/acl/token", body, headers=ROOT)
    assert response.status == 200, response.text
    return response.json()


def register(target: ConsulTarget, node: str, service: str) -> None:
    response = target.http("PUT", "/v1/catalog/register",
                           {"Node": node, "Address": "10.0.0.1", "Service": {"Service": service}}, headers=ROOT)
    assert response.status == 200, response.text


def as_token(secret: str) -> dict[str, str]:
    return {"X-Consul-Token": secret}


def test_policy_create_read_update_list_delete(target: ConsulTarget) -> None:
    created = policy(target, "readers", 'service_prefix "" { policy = "read" }')
    assert created["Name"] == "readers" and created["Rules"] == 'service_prefix "" { policy = "read" }'
    assert created["CreateIndex"] == created["ModifyIndex"] > 0
    read = target.http("GET", f"/v1/acl/policy/{created['ID']}", headers=ROOT).json()
    assert read == created
    by_name = target.http("GET", "/v1/acl/policy/name/readers", headers=ROOT).json()
    assert by_name["ID"] == created["ID"]
    updated = target.http("PUT", f"/v1/acl/policy/{created['ID']}",
                          {"Name": "readers", "Rules": 'node_prefix "" { policy = "read" }'}, headers=ROOT).json()
    assert updated["ModifyIndex"] > created["ModifyIndex"] and updated["CreateIndex"] == created["CreateIndex"]
    names = {p["Name"] for p in target.http("GET", "/v1/acl/policies", headers=ROOT).json()}
    assert names == {"global-management", "readers"}
    assert "Rules" not in target.http("GET", "/v1/acl/policies", headers=ROOT).json()[0], "list entries are stubs"
    assert target.http("DELETE", f"/v1/acl/policy/{created['ID']}", headers=ROOT).json() is True
    gone = target.http("GET", f"/v1/acl/policy/{created['ID']}", headers=ROOT)
    assert (gone.status, gone.text) == (403, "ACL not found")


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"Rules": ""}, 500, "Invalid Policy: no Name is set"),
    ({"Name": "bad name"}, 500, "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"),
    ({"Name": "p", "Rules": 'service "" { policy = "list" }'}, 500, "Invalid service policy: ''"),
    ({"Name": "p", "Rules": 'servce "" { policy = "read" }'}, 500, "Failed to parse ACL rules: invalid key 'servce'"),
    ({"Name": "p", "Rules": 'service "" { policy = '}, 500, "Failed to parse ACL rules: "),
    ({"ID": "00000000-0000-0000-0000-000000000009", "Name": "p"}, 400,
     "Cannot specify the ID when creating a new policy"),
])
def test_invalid_policies_are_refused_with_consuls_text(target: ConsulTarget, body, status, text) -> None:
    response = target.http("PUT", "/v1/acl/policy", body, headers=ROOT)
    assert response.status == status and response.text.startswith(text), (response.status, response.text)


def test_duplicate_policy_name_is_refused(target: ConsulTarget) -> None:
    policy(target, "p", "")
    response = target.http("PUT", "/v1/acl/policy", {"Name": "p"}, headers=ROOT)
    assert (response.status, response.text) == (500, 'Invalid Policy: A Policy with Name "p" already exists')


def test_acl_endpoints_need_acl_permissions(target: ConsulTarget) -> None:
    policy(target, "reader", 'acl = "read"')
    reader = token(target, "reader")
    assert target.http("GET", "/v1/acl/policies", headers=as_token(reader["SecretID"])).status == 200
    denied = target.http("PUT", "/v1/acl/policy", {"Name": "x"}, headers=as_token(reader["SecretID"]))
    assert (denied.status, denied.text) == (403, "Permission denied")
    anonymous = target.http("GET", "/v1/acl/tokens")
    assert (anonymous.status, anonymous.text) == (403, "Permission denied")


def test_acl_endpoints_answer_401_with_acls_off() -> None:
    with conftest_consul.fake_consul() as plain:
        response = conftest_consul.fake_target(plain).http("GET", "/v1/acl/policies")
    assert (response.status, response.text) == (401, "ACL support disabled")


def test_token_create_read_self_list_update_delete(target: ConsulTarget) -> None:
    policy(target, "readers", 'service_prefix "" { policy = "read" }')
    created = token(target, "readers")
    assert created["Policies"] == [{"ID": created["Policies"][0]["ID"], "Name": "readers"}]
    assert created["Local"] is False and "AuthMethod" not in created
    read = target.http("GET", f"/v1/acl/token/{created['AccessorID']}", headers=ROOT).json()
    assert read["SecretID"] == created["SecretID"]
    me = target.http("GET", "/v1/acl/token/self", headers=as_token(created["SecretID"])).json()
    assert me["AccessorID"] == created["AccessorID"]
    listed = target.http("GET", "/v1/acl/tokens", headers=ROOT).json()
    assert created["AccessorID"] in {t["AccessorID"] for t in listed}
    updated = target.http("PUT", f"/v1/acl/token/{created['AccessorID']}",
                          {"Description": "now", "Policies": []}, headers=ROOT).json()
    assert (updated["Description"], updated["SecretID"], updated.get("Policies")) == ("now", created["SecretID"], None)
    assert target.http("DELETE", f"/v1/acl/token/{created['AccessorID']}", headers=ROOT).json() is True
    gone = target.http("GET", "/v1/acl/token/self", headers=as_token(created["SecretID"]))
    assert (gone.status, gone.text) == (403, "ACL not found")


def test_token_errors_are_consuls(target: ConsulTarget) -> None:
    missing = target.http("PUT", "/v1/acl/token", {"Policies": [{"Name": "nope"}]}, headers=ROOT)
    assert (missing.status, missing.text) == (500, 'No such ACL policy with name "nope"')
    own = target.http("GET", "/v1/acl/token/self", headers=ROOT).json()["AccessorID"]
    delete_own = target.http("DELETE", f"/v1/acl/token/{own}", headers=ROOT)
    assert (delete_own.status, delete_own.text) == (
        500, "Deletion of the request's authorization token is not permitted")
    bad = target.http("PUT", "/v1/acl/token", {"ServiceIdentities": [{"ServiceName": "Web App"}]}, headers=ROOT)
    assert bad.status == 500 and bad.text.startswith('Service identity "Web App" has an invalid name')


def test_write_denial_names_accessor_permission_and_resource(target: ConsulTarget) -> None:
    policy(target, "nodes", 'node_prefix "" { policy = "write" }\nservice "db" { policy = "write" }')
    t = token(target, "nodes")
    response = target.http("PUT", "/v1/catalog/register",
                           {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "web"}},
                           headers=as_token(t["SecretID"]))
    assert response.status == 403
    # acl/errors.go PermissionDeniedError.Error()
    assert response.text == (
        f"Permission denied: token with AccessorID '{t['AccessorID']}' lacks permission 'service:write' on \"web\"")


def test_anonymous_denial_says_the_anonymous_token_was_used(target: ConsulTarget) -> None:
    response = target.http("PUT", "/v1/kv/x", "v")
    assert response.status == 403
    assert response.text == ("Permission denied: anonymous token lacks permission 'key:write' on \"x\". "
                             "The anonymous token is used implicitly when a request does not specify a token.")


def test_exact_beats_prefix_and_longest_prefix_wins(target: ConsulTarget) -> None:
    for name in ("web", "west", "db", "dbx"):
        register(target, f"node-{name}", name)
    policy(target, "p", """
node_prefix "" { policy = "read" }
service_prefix "" { policy = "read" }
service_prefix "we" { policy = "deny" }
service "web" { policy = "read" }
service_prefix "db" { policy = "deny" }
service_prefix "dbx" { policy = "read" }
""")
    t = token(target, "p")
    response = target.http("GET", "/v1/catalog/services", headers=as_token(t["SecretID"]))
    assert set(response.json()) == {"consul", "web", "dbx"}
    assert response.header("X-Consul-Results-Filtered-By-ACLs") == "true"


def test_policies_merge_with_deny_first(target: ConsulTarget) -> None:
    register(target, "n1", "web")
    policy(target, "allow-web", 'service "web" { policy = "write" }\nnode_prefix "" { policy = "read" }')
    policy(target, "deny-web", 'service "web" { policy = "deny" }')
    t = token(target, "allow-web", "deny-web")
    health = target.http("GET", "/v1/health/service/web", headers=as_token(t["SecretID"]))
    assert (health.status, health.json()) == (200, [])
    assert health.header("X-Consul-Results-Filtered-By-ACLs") == "true"


def test_json_rules_work_like_hcl(target: ConsulTarget) -> None:
    register(target, "n1", "web")
    policy(target, "json", '{"service_prefix": {"": {"policy": "read"}}, "node_prefix": {"": {"policy": "read"}}}')
    t = token(target, "json")
    nodes = target.http("GET", "/v1/catalog/service/web", headers=as_token(t["SecretID"])).json()
    assert [n["Node"] for n in nodes] == ["n1"]


def test_key_and_session_rules(target: ConsulTarget) -> None:
    register(target, "k8s-sync-east", "web")
    policy(target, "claim", """
key "bridge/clusters/east" { policy = "write" }
key_prefix "bridge/clusters/" { policy = "read" }
session "k8s-sync-east" { policy = "write" }
""")
    t = token(target, "claim")
    client = target.client(token=t["SecretID"])
    assert client.kv.put("bridge/clusters/east", "me")
    with pytest.raises(pyconsul.ACLPermissionDenied, match="lacks permission 'key:write' on \"bridge/clusters/west\""):
        client.kv.put("bridge/clusters/west", "me")
    assert client.kv.get("bridge/clusters/", recurse=True)[1][0]["Key"] == "bridge/clusters/east"
    denied = target.http("PUT", "/v1/session/create", {"Node": "consul-agent"}, headers=as_token(t["SecretID"]))
    assert denied.status == 403 and "lacks permission 'session:write' on \"consul-agent\"" in denied.text


def test_operator_and_agent_rules(server: ConsulServer, target: ConsulTarget) -> None:
    policy(target, "ops", 'operator = "read"\nagent_prefix "" { policy = "read" }')
    t = token(target, "ops")
    assert target.http("GET", "/v1/agent/self", headers=as_token(t["SecretID"])).status == 200
    authz = server.acl.resolve(t["SecretID"])
    assert authz.allowed("operator", "", "read") and not authz.allowed("operator", "", "write")
    assert authz.denied("operator", "", "write").body.endswith("lacks permission 'operator:write'")


def test_service_identity_grants_its_synthetic_policy(target: ConsulTarget) -> None:
    t = token(target, ServiceIdentities=[{"ServiceName": "web"}])
    headers = as_token(t["SecretID"])
    ok = target.http("PUT", "/v1/agent/service/register", {"Name": "web"}, headers=headers)
    assert ok.status == 200, ok.text
    denied = target.http("PUT", "/v1/agent/service/register", {"Name": "db"}, headers=headers)
    assert denied.status == 403 and "'service:write' on \"db\"" in denied.text


def test_an_expired_token_is_not_found() -> None:
    clock = ManualClock()
    with conftest_consul.fake_consul(acl_master_token=MASTER, clock=clock) as fake:
        target = conftest_consul.fake_target(fake)
        t = token(target, ExpirationTTL="1m")
        assert t["ExpirationTime"].endswith("Z")
        assert target.http("GET", "/v1/acl/token/self", headers=as_token(t["SecretID"])).status == 200
        clock.advance(61)
        expired = target.http("GET", "/v1/catalog/services", headers=as_token(t["SecretID"]))
        assert (expired.status, expired.text) == (403, "ACL not found")


def test_default_allow_does_not_extend_to_acl_management() -> None:
    # acl/static_authorizer.go: the allow-all authorizer allows everything but manages nothing.
    with conftest_consul.fake_consul(acl_master_token=MASTER, acl_default_policy="allow") as fake:
        target = conftest_consul.fake_target(fake)
        assert target.http("PUT", "/v1/kv/anything", "v").status == 200
        response = target.http("GET", "/v1/acl/policies")
        assert (response.status, response.text) == (403, "Permission denied")
