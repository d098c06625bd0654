"""Leader election against the Kubernetes API test server, through the bridge's own client.

Time is the elector's injected clock, so takeovers need no waiting; the server decides
what a real one would: resourceVersion conflicts (409), AlreadyExists, what is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import config
from bridge.errors import Conflict
from bridge.ha.elector import LeaderElector
from bridge.ha.leadership import kube_system_uid
from bridge.ha.lease import KubeLeaseStore
from bridge.kube.client import KubeClient
from bridge.testing.kube import KubeAPIServer
from tests.unit.ha_fakes import FakeClock

NAMESPACE, NAME = "default", "bridge-east"


class RacingStore(KubeLeaseStore):
    """Runs `before_write` (once) between this replica's read and its write."""

    before_write: Callable[[], None] | None = None

    def replace(self, lease: Any, spec: dict[str, Any]) -> dict[str, Any]:
        hook, self.before_write = self.before_write, None
        if hook:
            hook()
        return super().replace(lease, spec)


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    server = KubeAPIServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(kube, tmp_path: Path) -> Iterator[KubeClient]:
    settings = config.build(environ={}, flags={
        "kubernetes.kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}).kubernetes
    made = KubeClient(settings)
    yield made
    made.close()


def elector(client: KubeClient, clock: FakeClock, identity: str,
            store: KubeLeaseStore | None = None) -> LeaderElector:
    return LeaderElector(store or KubeLeaseStore(client, NAMESPACE, NAME, timeout=10), identity=identity,
                         lease_duration=15, renew_deadline=10.0, retry_period=2.0, clock=clock,
                         jitter=lambda: 0.0)


def stored(kube: KubeAPIServer) -> dict[str, Any]:
    return kube.store.get("leases", NAMESPACE, NAME)


def test_the_first_replica_creates_the_lease_and_renews_it(kube, client):
    clock = FakeClock()
    a = elector(client, clock, "a")
    a.tick()
    lease = stored(kube)
    assert a.leading and lease["spec"]["holderIdentity"] == "a"
    assert lease["spec"]["leaseDurationSeconds"] == 15 and lease["spec"]["leaseTransitions"] == 0
    version = lease["metadata"]["resourceVersion"]
    clock.advance(2)
    a.tick()
    renewed = stored(kube)
    assert a.leading and renewed["metadata"]["resourceVersion"] != version
    assert renewed["spec"]["renewTime"] != lease["spec"]["renewTime"]
    assert renewed["spec"]["acquireTime"] == lease["spec"]["acquireTime"]


def test_a_standby_takes_over_a_silent_leaders_lease(kube, client):
    clock = FakeClock()
    a, b = elector(client, clock, "a"), elector(client, clock, "b")
    a.tick()
    b.tick()
    assert not b.leading
    clock.advance(15.5)  # a stopped renewing
    b.tick()
    assert b.leading and not a.is_leader()
    assert stored(kube)["spec"]["holderIdentity"] == "b"
    assert stored(kube)["spec"]["leaseTransitions"] == 1
    clock.advance(2)
    a.tick()
    assert not a.leading, "the old leader sees b's Lease and stays a standby"


def test_the_server_refuses_the_slower_of_two_candidates_with_a_conflict(kube, client):
    clock = FakeClock()
    racing = RacingStore(client, NAMESPACE, NAME, timeout=10)
    a, b = elector(client, clock, "a", racing), elector(client, clock, "b")
    kube.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15, "leaseTransitions": 2}})
    a.tick()
    b.tick()
    clock.advance(16)
    racing.before_write = b.tick
    a.tick()
    assert b.leading and not a.leading
    assert stored(kube)["spec"]["holderIdentity"] == "b"
    assert stored(kube)["spec"]["leaseTransitions"] == 3


def test_a_create_of_an_existing_lease_is_a_conflict(kube, client):
    store = KubeLeaseStore(client, NAMESPACE, NAME, timeout=10)
    store.create({"holderIdentity": "a", "leaseDurationSeconds": 15})
    with pytest.raises(Conflict):
        store.create({"holderIdentity": "b", "leaseDurationSeconds": 15})
    assert store.get()["spec"]["holderIdentity"] == "a"


def test_release_hands_the_lease_over_at_once(kube, client):
    clock = FakeClock()
    a, b = elector(client, clock, "a"), elector(client, clock, "b")
    a.tick()
    b.tick()
    assert a.release()
    spec = stored(kube)["spec"]
    assert spec.get("holderIdentity", "") == "" and spec["leaseDurationSeconds"] == 1
    b.tick()
    assert b.leading


def test_the_cluster_uid_is_kube_systems(kube, client):
    assert kube_system_uid(client) == kube.store.get("namespaces", None, "kube-system")["metadata"]["uid"]
