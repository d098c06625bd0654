"""The policies deploy/consul/ ships, call by call: each bridge call the central policy must
allow succeeds with it, and the sidecar policy allows the reads and nothing else.

The calls are the bridge's own (bridge/consul/client.py, through the high-availability claim
in bridge/ha/claim.py and the claims watcher), against default-deny ACLs, with tokens made
through /v1/acl/policy and /v1/acl/token as an operator would make them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.errors import Denied
from bridge.ha.claim import ClaimState, ClusterClaim
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget
from tests.unit.ha_fakes import FakeClock

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "consul"
MASTER = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
ROOT = {"X-Consul-Token": MASTER}
OURS = [
    {"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-east", "Address": "127.0.0.1"}}},
    {"Service": {"Verb": "set", "Node": "k8s-sync-east", "Service": {"ID": "web-1", "Service": "web"}}},
    {"Check": {"Verb": "set", "Check": {"Node": "k8s-sync-east", "CheckID": "web-1", "Name": "k8s",
                                        "ServiceID": "web-1", "ServiceName": "web", "Status": "passing"}}},
]


@pytest.fixture
def consul() -> Iterator[ConsulTarget]:
    with conftest_consul.fake_consul(acl_master_token=MASTER) as server:
        target = conftest_consul.fake_target(server)
        response = target.http("PUT", "/v1/catalog/register", {"Node": "vm-1", "Address": "192.0.2.1",
                                                               "Service": {"Service": "billing"}}, headers=ROOT)
        assert response.status == 200, response.text
        yield target


def client_with(consul: ConsulTarget, name: str, rules: str) -> ConsulClient:
    assert consul.http("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules}, headers=ROOT).status == 200
    token = consul.http("PUT", "/v1/acl/token", {"Policies": [{"Name": name}]}, headers=ROOT).json()
    assert consul.fake is not None
    return ConsulClient(ConsulSettings(address=consul.fake.url, token=token["SecretID"], wait=2))


def central(consul: ConsulTarget, cluster_id: str = "east") -> ConsulClient:
    rules = (DEPLOY / "central-policy.hcl").read_text().replace("CLUSTER_ID", cluster_id)
    return client_with(consul, f"bridge-central-{cluster_id}", rules)


def claim(client: ConsulClient, cluster_id: str = "east") -> ClusterClaim:
    return ClusterClaim(client, cluster_id=cluster_id, lease=f"bridge/bridge-{cluster_id}", identity="pod-a",
                        cluster_uid=lambda: f"uid-{cluster_id}", session_ttl=15, lock_delay=15, clock=FakeClock())


def test_the_central_policy_allows_every_call_of_the_central_bridge(consul) -> None:
    client = central(consul)
    try:
        client.txn(OURS)
        assert set(client.node_services("k8s-sync-east")["Services"]) == {"web-1"}
        assert [c["CheckID"] for c in client.node_checks("k8s-sync-east")] == ["web-1"]
        _, services = client.services(None, not_on_node="k8s-sync-east")
        assert "billing" in services
        _, entries = client.health_service("billing", None, passing=False)
        assert [e["Node"]["Node"] for e in entries] == ["vm-1"], "instances are read with their node"
        client.txn([{"Service": {"Verb": "delete", "Node": "k8s-sync-east",
                                 "Service": {"ID": "web-1", "Service": "web"}}}])
        held = claim(client)
        held.step(leading=True)
        assert held.state is ClaimState.HELD, held.problem
        _, claims = client.kv_list("bridge/clusters/", None)
        assert [e["Key"] for e in claims] == ["bridge/clusters/east"]
        held.release()
        assert client.problems() == []
    finally:
        client.close()


def test_the_central_policy_of_one_cluster_cannot_write_anothers(consul) -> None:
    east = central(consul)
    try:
        with pytest.raises(Denied, match="lacks permission 'node:write' on \"k8s-sync-west\""):
            east.txn([{"Node": {"Verb": "set", "Node": {"Node": "k8s-sync-west", "Address": "127.0.0.1"}}}])
        with pytest.raises(Denied, match="lacks permission 'key:write' on \"bridge/clusters/west\""):
            session = east.session_create(name="x", ttl=15, lock_delay=0)
            east.kv_acquire("bridge/clusters/west", b"{}", session)
    finally:
        east.close()


def test_the_sidecar_policy_reads_and_writes_nothing(consul) -> None:
    writer = central(consul)
    reader = client_with(consul, "bridge-sidecar", (DEPLOY / "sidecar-policy.hcl").read_text())
    try:
        writer.txn(OURS)
        claim(writer).step(leading=True)
        _, services = reader.services(None)
        assert {"billing", "web"} <= set(services)
        _, entries = reader.health_service("web", None, passing=True)
        assert [e["Service"]["ID"] for e in entries] == ["web-1"]
        _, claims = reader.kv_list("bridge/clusters/", None)
        assert [e["Key"] for e in claims] == ["bridge/clusters/east"]
        with pytest.raises(Denied, match="lacks permission 'node:write' on \"k8s-sync-east\""):
            reader.txn(OURS[:1])
        with pytest.raises(Denied, match="lacks permission 'session:write'"):
            reader.session_create(name="x", ttl=15, lock_delay=0)
    finally:
        writer.close()
        reader.close()


def test_a_fixed_token_consul_does_not_know_is_refused_and_logged_once(consul, caplog) -> None:
    assert consul.fake is not None
    client = ConsulClient(ConsulSettings(address=consul.fake.url, token="0d4c2b1a-0000-4000-8000-00000000dead"))
    try:
        for _ in range(3):
            with pytest.raises(Denied, match="catalog services: ACL not found"):
                client.services(None)
        assert client.problems() == ["consul refused catalog services: ACL not found"]
        assert caplog.text.count("consul refused catalog services: ACL not found") == 1
        assert "0d4c2b1a-0000-4000-8000-00000000dead" not in caplog.text
    finally:
        client.close()
