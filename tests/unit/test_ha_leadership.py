"""The write gate: the Lease and the cluster claim together, on one thread, and its set-up."""

from __future__ import annotations

import os
import socket

import pytest

from bridge import config
from bridge.errors import Rejected
from bridge.ha.claim import ClaimState, ClaimValue, ClusterClaim
from bridge.ha.elector import LeaderElector
from bridge.ha.leadership import Leadership, build, default_identity, kube_system_uid
from tests.conftest import eventually
from tests.unit.ha_fakes import FakeClock, FakeConsul, LeaseServer

KEY = "bridge/clusters/east"


def parts(clock: FakeClock, identity: str = "a", server: LeaseServer | None = None,
          consul: FakeConsul | None = None) -> tuple[LeaderElector, ClusterClaim, LeaseServer, FakeConsul]:
    server = server or LeaseServer()
    consul = consul or FakeConsul(clock)
    elector = LeaderElector(server.store(identity), identity=identity, lease_duration=15, renew_deadline=10.0,
                            retry_period=2.0, clock=clock, jitter=lambda: 0.0)
    claim = ClusterClaim(consul, cluster_id="east", lease="bridge/bridge-east", identity=identity,
                         cluster_uid=lambda: "uid-east", session_ttl=15, lock_delay=15, clock=clock)
    return elector, claim, server, consul


def test_writes_need_the_lease_and_the_claim_and_end_at_the_earlier_deadline():
    clock = FakeClock()
    elector, claim, _, consul = parts(clock)
    changes = []
    gate = Leadership(elector, claim, clock=clock, retry_period=2.0, on_change=lambda: changes.append(1))
    assert not gate.may_write()
    gate.step()
    assert gate.may_write() and changes == [1], "the reconciler is woken when writing may start"
    assert gate.may_write_until() == min(elector.may_write_until(), claim.may_write_until()) == clock.now + 10
    consul.down = True
    clock.advance(2)
    gate.step()
    assert gate.may_write_until() == clock.now + 10, "the Lease renewed: its fence moved on"
    assert claim.may_write_until() == clock.now - 2 + 15
    clock.advance(14)  # Consul out of reach for 16s: the claim's TTL has run out
    gate.step()
    assert not gate.may_write() and changes == [1, 1]


def test_a_replica_that_loses_the_lease_gives_up_the_claim():
    clock = FakeClock()
    server = LeaseServer()
    elector, claim, _, consul = parts(clock, server=server)
    gate = Leadership(elector, claim, clock=clock, retry_period=2.0)
    gate.step()
    assert consul.kv[KEY]["Session"]
    server.store("a").down = True
    for _ in range(5):
        clock.advance(2)
        gate.step()
    assert not elector.leading and claim.state is ClaimState.IDLE
    assert consul.kv[KEY]["Session"] == "" and not consul.sessions


def test_a_cluster_id_conflict_is_a_problem_but_the_lease_is_kept():
    clock = FakeClock()
    elector, claim, _, consul = parts(clock)
    consul.hold(KEY, ClaimValue("east", "uid-west", "bridge/bridge-east", "w").encode())
    gate = Leadership(elector, claim, clock=clock, retry_period=2.0)
    gate.step()
    assert elector.is_leader() and not gate.may_write()
    [problem] = gate.problems()
    assert "uid-west" in problem


def test_without_an_election_this_replica_always_leads():
    clock = FakeClock()
    _, claim, _, _ = parts(clock)
    gate = Leadership(None, claim, clock=clock, retry_period=2.0)
    assert gate.step() == 2.0
    assert gate.leading() and gate.may_write()
    assert Leadership(None, None, clock=clock, retry_period=2.0).may_write(), "no gate: always open"


def test_stop_releases_the_claim_then_the_lease():
    clock = FakeClock()
    elector, claim, server, consul = parts(clock)
    gate = Leadership(elector, claim, clock=clock, retry_period=2.0)
    gate.start()
    eventually(gate.may_write, timeout=5, what="the leadership thread's first step")
    gate.stop(timeout=5)
    assert not gate.thread.is_alive()
    assert not gate.may_write()
    assert consul.kv[KEY]["Session"] == "" and not consul.sessions
    assert server.spec["holderIdentity"] == "" and server.spec["leaseDurationSeconds"] == 1


class FakeKube:
    def __init__(self, namespace: str = "", kube_system: dict | None = None) -> None:
        self.namespace = namespace
        self._kube_system = kube_system

    def read(self, plural, namespace, name, timeout=30.0):
        assert (plural, namespace, name) == ("namespaces", "", "kube-system")
        return self._kube_system


def settings(**env: str) -> config.Settings:
    return config.build(environ={f"BRIDGE_{k.upper()}": v for k, v in env.items()})


@pytest.mark.parametrize(("configured", "pod", "expected"), [
    ("", "bridge", "bridge/bridge-east"),
    ("", "", "default/bridge-east"),
    ("leases", "bridge", "leases/bridge-east"),
])
def test_the_lease_lives_in_the_configured_namespace_else_the_pods_else_default(configured, pod, expected):
    s = settings(cluster_id="east", ha_lease_namespace=configured, ha_identity="pod-a")
    gate = build(s, FakeKube(namespace=pod), FakeConsul(FakeClock()))  # type: ignore[arg-type]
    assert gate.elector is not None and gate.claim is not None
    assert gate.elector.describe() == f"lease {expected}"
    assert gate.elector.identity == "pod-a"
    assert gate.claim.lease == expected


def test_what_is_built_follows_the_settings():
    kube, consul = FakeKube(), FakeConsul(FakeClock())
    off = build(settings(ha_enabled="false"), kube, consul)  # type: ignore[arg-type]
    assert off.elector is None and off.claim is not None, "the claim guards Consul with or without HA"
    no_sync = build(settings(sync_to_consul="false"), kube, consul)  # type: ignore[arg-type]
    assert no_sync.elector is not None and no_sync.claim is None, "nothing written to Consul, nothing to claim"
    sidecar = build(settings(kubernetes_enabled="false", sync_to_consul="false"), None, consul)  # type: ignore[arg-type]
    assert sidecar.elector is None and sidecar.claim is None and sidecar.may_write()


def test_the_identity_defaults_to_host_name_and_pid():
    assert default_identity() == f"{socket.gethostname()}_{os.getpid()}"
    gate = build(settings(), FakeKube(), None)  # type: ignore[arg-type]
    assert gate.elector is not None and gate.elector.identity == default_identity()


def test_the_cluster_is_named_by_the_kube_system_namespaces_uid():
    assert kube_system_uid(FakeKube(kube_system={"metadata": {"uid": "u-1"}})) == "u-1"  # type: ignore[arg-type]
    with pytest.raises(Rejected, match="not found"):
        kube_system_uid(FakeKube(kube_system=None))  # type: ignore[arg-type]
