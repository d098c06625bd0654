"""Logging in to Consul with a Kubernetes service-account token, through the `kubernetes` auth method.

The fake Consul asks the fake Kubernetes API server's TokenReview API (TLS, RBAC) who a
token stands for, as Consul's kubeauth validator does; binding rules then decide what the
login's token may do. The auth method, binding rule, policy and reviewer RBAC are the ones
deploy/consul/ ships, with their placeholders filled in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.testing.kube import KubeAPIServer
from bridge.testing.timers import ManualClock
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "consul"
MASTER = "3c1f0a52-77b1-4b0c-9d7e-5a2f8f0e4d11"
ROOT = {"X-Consul-Token": MASTER}
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bridge}\n"


def service_account(name: str, annotations: dict[str, str] | None = None) -> str:
    meta = {"name": name, "namespace": "bridge", "annotations": annotations or {}}
    return json.dumps({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    server = KubeAPIServer(tls=True)
    server.start()
    server.load_manifests([NAMESPACE, DEPLOY / "auth-method-rbac.yaml"])
    server.load_manifests(service_account("bridge"))
    yield server
    server.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def consul(clock) -> Iterator[ConsulTarget]:
    with conftest_consul.fake_consul(acl_master_token=MASTER, clock=clock) as server:
        yield conftest_consul.fake_target(server)


def put(target: ConsulTarget, path: str, body: dict) -> dict:
    response = target.http("PUT", path, body, headers=ROOT)
    assert response.status == 200, response.text
    return response.json()


def auth_method(kube: KubeAPIServer, reviewer: str | None = None) -> dict:
    body = json.loads((DEPLOY / "auth-method.json").read_text())
    reviewer = reviewer or kube.service_account_token("bridge", "bridge-consul-auth-method")
    body["Config"] = {"Host": kube.url, "CACert": kube.ca_pem.decode(), "ServiceAccountJWT": reviewer}
    return body


@pytest.fixture
def method(kube: KubeAPIServer, consul: ConsulTarget) -> dict:
    """deploy/consul as the README applies it: the central policy, the auth method, its rule."""
    rules = (DEPLOY / "central-policy.hcl").read_text().replace("CLUSTER_ID", "east")
    put(consul, "/v1/acl/policy", {"Name": "bridge-central-east", "Rules": rules})
    created = put(consul, "/v1/acl/auth-method", auth_method(kube))
    rule = json.loads((DEPLOY / "binding-rule-central.json").read_text().replace("CLUSTER_ID", "east"))
    put(consul, "/v1/acl/binding-rule", rule)
    return created


def login(target: ConsulTarget, token: str, method: str = "bridge-kubernetes"):
    return target.http("POST", "/v1/acl/login", {"AuthMethod": method, "BearerToken": token})


def test_login_with_the_service_account_token_gets_the_bound_policy(kube, consul, method, clock) -> None:
    assert method["MaxTokenTTL"] == "24h0m0s" and method["Type"] == "kubernetes"
    response = login(consul, kube.service_account_token("bridge", "bridge"))
    assert response.status == 200, response.text
    token = response.json()
    assert [p["Name"] for p in token["Policies"]] == ["bridge-central-east"]
    assert (token["AuthMethod"], token["Local"], token["Description"]) == (
        "bridge-kubernetes", True, "token created via login")
    assert token["ExpirationTime"].endswith("Z"), "MaxTokenTTL gives the token an expiry"
    headers = {"X-Consul-Token": token["SecretID"]}
    mine = [{"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-east", "Address": "127.0.0.1"}}}]
    assert consul.http("PUT", "/v1/txn", mine, headers=headers).status == 200
    theirs = [{"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-west", "Address": "127.0.0.1"}}}]
    denied = consul.http("PUT", "/v1/txn", theirs, headers=headers)
    assert denied.status == 409 and "lacks permission 'node:write' on \\\"k8s-sync-west\\\"" in denied.text
    clock.advance(24 * 3600)
    expired = consul.http("GET", "/v1/acl/token/self", headers=headers)
    assert (expired.status, expired.text) == (403, "ACL not found")


def test_a_token_the_review_rejects_is_refused(kube, consul, method) -> None:
    garbage = login(consul, "not-a-jwt")
    assert garbage.status == 500 and garbage.text.startswith("failed to parse and validate JWT: ")
    foreign = KubeAPIServer(tls=True)  # signed by another cluster's key
    foreign.start()
    try:
        foreign.load_manifests([NAMESPACE, service_account("bridge")])
        stranger = foreign.service_account_token("bridge", "bridge")
    finally:
        foreign.stop()
    refused = login(consul, stranger)
    assert refused.status == 500 and refused.text.startswith("lookup failed: "), refused.text


def test_a_service_account_no_binding_rule_selects_is_denied(kube, consul, method) -> None:
    kube.load_manifests(service_account("other"))
    response = login(consul, kube.service_account_token("bridge", "other"))
    assert (response.status, response.text) == (403, "Permission denied")


def test_an_unknown_auth_method_is_acl_not_found(kube, consul, method) -> None:
    response = login(consul, kube.service_account_token("bridge", "bridge"), method="nope")
    assert (response.status, response.text) == (403, 'ACL not found: auth method "nope" not found')


def test_a_reviewer_without_rbac_gets_the_api_servers_refusal(kube, consul) -> None:
    kube.load_manifests(service_account("no-rights"))
    put(consul, "/v1/acl/auth-method", auth_method(kube, kube.service_account_token("bridge", "no-rights")))
    put(consul, "/v1/acl/binding-rule", {"AuthMethod": "bridge-kubernetes", "BindType": "service",
                                          "BindName": "${serviceaccount.name}"})
    response = login(consul, kube.service_account_token("bridge", "bridge"))
    assert response.status == 500
    assert response.text.startswith('tokenreviews.authentication.k8s.io is forbidden: User '
                                     '"system:serviceaccount:bridge:no-rights" cannot create resource'), response.text


def test_service_binding_interpolates_the_name_and_honours_the_annotation(kube, consul) -> None:
    put(consul, "/v1/acl/auth-method", auth_method(kube))
    put(consul, "/v1/acl/binding-rule", {"AuthMethod": "bridge-kubernetes", "BindType": "service",
                                          "BindName": "${serviceaccount.name}",
                                          "Selector": "serviceaccount.namespace==bridge"})
    token = login(consul, kube.service_account_token("bridge", "bridge")).json()
    assert token["ServiceIdentities"] == [{"ServiceName": "bridge"}]
    kube.load_manifests(service_account("app", {"consul.hashicorp.com/service-name": "billing"}))
    token = login(consul, kube.service_account_token("bridge", "app")).json()
    assert token["ServiceIdentities"] == [{"ServiceName": "billing"}]


def test_logout_deletes_a_login_token_only(kube, consul, method) -> None:
    token = login(consul, kube.service_account_token("bridge", "bridge")).json()
    headers = {"X-Consul-Token": token["SecretID"]}
    assert consul.http("POST", "/v1/acl/logout", headers=headers).json() is True
    assert consul.http("GET", "/v1/acl/token/self", headers=headers).status == 403
    again = consul.http("POST", "/v1/acl/logout", headers=headers)
    assert (again.status, again.text) == (403, "ACL not found")
    not_a_login = consul.http("POST", "/v1/acl/logout", headers=ROOT)
    assert (not_a_login.status, not_a_login.text) == (403, "Permission denied")


@pytest.mark.parametrize(("config", "text"), [
    ({"CACert": "x", "ServiceAccountJWT": "y"}, "Invalid Auth Method: Config.Host is required"),
    ({"Host": "https://k", "ServiceAccountJWT": "y"}, "Invalid Auth Method: Config.CACert is required"),
    ({"Host": "https://k", "CACert": "junk", "ServiceAccountJWT": "y"},
     "Invalid Auth Method: error parsing kubernetes ca cert: "),
])
def test_auth_method_config_is_validated(kube, consul, config, text) -> None:
    response = consul.http("PUT", "/v1/acl/auth-method", {"Name": "m", "Type": "kubernetes", "Config": config},
                           headers=ROOT)
    assert response.status == 500 and response.text.startswith(text), response.text


def test_binding_rules_are_validated_and_listed(kube, consul, method) -> None:
    bad = consul.http("PUT", "/v1/acl/binding-rule", {"AuthMethod": "bridge-kubernetes", "BindType": "service",
                                                      "BindName": "${serviceaccount.nope}"}, headers=ROOT)
    assert bad.status == 500 and bad.text.startswith("Invalid Binding Rule: invalid BindName"), bad.text
    kind = consul.http("PUT", "/v1/acl/binding-rule", {"AuthMethod": "bridge-kubernetes", "BindType": "group",
                                                       "BindName": "x"}, headers=ROOT)
    assert (kind.status, kind.text) == (500, 'Invalid Binding Rule: unknown BindType "group"')
    rules = consul.http("GET", "/v1/acl/binding-rules?authmethod=bridge-kubernetes", headers=ROOT).json()
    assert [r["BindName"] for r in rules] == ["bridge-central-east"]
    methods = consul.http("GET", "/v1/acl/auth-methods", headers=ROOT).json()
    assert [m["Name"] for m in methods] == ["bridge-kubernetes"] and "Config" not in methods[0]
    missing = consul.http("GET", f"/v1/acl/binding-rule/{'0' * 8}-0000-0000-0000-{'0' * 12}", headers=ROOT)
    assert (missing.status, missing.text) == (404, "")


def test_deleting_the_auth_method_deletes_its_rules_and_tokens(kube, consul, method) -> None:
    token = login(consul, kube.service_account_token("bridge", "bridge")).json()
    assert consul.http("DELETE", "/v1/acl/auth-method/bridge-kubernetes", headers=ROOT).json() is True
    assert consul.http("GET", "/v1/acl/binding-rules", headers=ROOT).json() == []
    gone = consul.http("GET", "/v1/acl/token/self", headers={"X-Consul-Token": token["SecretID"]})
    assert gone.status == 403

