"""The bridge's client logging in with `consul.auth_method` (bridge/consul/login.py).

Against the fake Consul with default-deny ACLs and the deploy/consul auth method, whose
logins the fake Kubernetes API server's TokenReview API vouches for: the client logs in on
its first call, replaces a token Consul no longer knows by a new login without losing the
call, logs out on stop, and never puts the token in a URL or a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import config
from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.errors import ConfigError, Denied
from tests.integration import test_fake_consul_acl_login as setup
from tests.integration.conftest_consul import ConsulTarget

kube = setup.kube
clock = setup.clock
consul = setup.consul
method = setup.method

NODE = [{"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-east", "Address": "127.0.0.1"}}}]


def service(name: str) -> list[dict]:
    return [{"Service": {"Verb": "set", "Node": "k8s-sync-east", "Service": {"ID": name, "Service": name}}}]


def client_for(consul: ConsulTarget, bearer_file: Path) -> ConsulClient:
    assert consul.fake is not None
    return ConsulClient(ConsulSettings(address=consul.fake.url, auth_method="bridge-kubernetes",
                                       login_bearer_token_file=str(bearer_file), wait=2))


def login_tokens(consul: ConsulTarget) -> list[dict]:
    return consul.http("GET", "/v1/acl/tokens?authmethod=bridge-kubernetes", headers=setup.ROOT).json()


@pytest.fixture
def bearer(kube, tmp_path) -> Path:
    """The pod's service-account token file, as the kubelet writes it."""
    return kube.write_service_account(tmp_path / "serviceaccount", "bridge", "bridge") / "token"


def test_logs_in_writes_survives_a_deleted_token_and_logs_out(consul, method, bearer, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(consul, bearer)
    assert client.login is not None
    try:
        client.login.start()
        [first] = login_tokens(consul)
        client.txn(NODE)
        deleted = consul.http("DELETE", f"/v1/acl/token/{first['AccessorID']}", headers=setup.ROOT)
        assert deleted.status == 200, deleted.text
        client.txn(service("web"))  # ACL not found: a new login, and the write made with it
        [second] = login_tokens(consul)
        assert second["AccessorID"] != first["AccessorID"]
        node = consul.http("GET", "/v1/catalog/node/k8s-sync-east", headers=setup.ROOT).json()
        assert "web" in node["Services"], "the write that met the deleted token was lost"
    finally:
        client.login.stop()
        client.close()
    assert login_tokens(consul) == [], "the login token outlived the bridge"
    secrets = {first["SecretID"], second["SecretID"], bearer.read_text().strip()}
    for record in consul.fake.requests.records():
        assert not any(s in record.query or s in record.path or s in record.body for s in secrets), record
    assert not any(s in caplog.text for s in secrets), "a token reached the log"
    assert f"consul no longer knows the login token {first['AccessorID']}" in caplog.text


def test_a_login_no_binding_rule_allows_is_denied_and_logged_once(kube, consul, method, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bridge.consul")
    bearer = kube.write_service_account(tmp_path / "other", "bridge", "other") / "token"
    client = client_for(consul, bearer)
    try:
        for _ in range(3):
            with pytest.raises(Denied, match="acl login: Permission denied"):
                client.services(None)
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert refusals == ["consul refused acl login: Permission denied"], refusals
        assert client.problems() == refusals
    finally:
        client.close()


def test_a_missing_token_file_is_named(consul, method, tmp_path) -> None:
    client = client_for(consul, tmp_path / "nowhere")
    try:
        with pytest.raises(Denied, match=r"cannot read consul\.login_bearer_token_file .*nowhere"):
            client.services(None)
    finally:
        client.close()


def test_an_unknown_auth_method_is_a_refusal_not_a_lost_token(consul, bearer, kube) -> None:
    client = client_for(consul, bearer)
    try:
        with pytest.raises(Denied, match='ACL not found: auth method "bridge-kubernetes" not found'):
            client.services(None)
        assert client.problems() == ['consul refused acl login: ACL not found: auth method "bridge-kubernetes" '
                                     'not found']
    finally:
        client.close()


def test_auth_method_and_a_fixed_token_do_not_go_together() -> None:
    with pytest.raises(ConfigError, match=r"consul\.auth_method.*leave consul\.token and consul\.token_file empty"):
        config.build(environ={"BRIDGE_CONSUL_AUTH_METHOD": "bridge-kubernetes", "CONSUL_HTTP_TOKEN": "t"})
