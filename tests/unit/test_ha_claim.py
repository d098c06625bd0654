"""The leader's claim on bridge/clusters/<cluster_id>: one cluster id, one cluster.

Consul's rules the fake keeps (its sessions documentation): an acquire fails while another
session holds the key, and during the lock-delay that follows a session's invalidation
(destroy or TTL) but not a release.
"""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from bridge.errors import Denied, Transient, Unavailable, Unreachable
from bridge.ha.claim import ClaimState, ClaimValue, ClusterClaim
from tests.unit.ha_fakes import FakeClock, FakeConsul

KEY = "bridge/clusters/east"
OURS = ClaimValue("east", "uid-east", "bridge/bridge-east", "pod-a")


def make(consul: FakeConsul, clock: FakeClock, identity: str = "pod-a", uid: str = "uid-east",
         lease: str = "bridge/bridge-east") -> ClusterClaim:
    return ClusterClaim(consul, cluster_id="east", lease=lease, identity=identity,
                        cluster_uid=lambda: uid, session_ttl=15, lock_delay=15, clock=clock)


def conflict_gauge() -> float:
    return REGISTRY.get_sample_value("bridge_cluster_id_conflict") or 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def consul(clock) -> FakeConsul:
    return FakeConsul(clock)


def test_a_free_key_is_acquired_with_a_ttl_session_naming_this_cluster(consul, clock):
    claim = make(consul, clock)
    started = clock.now
    claim.step(leading=True)
    assert claim.state is ClaimState.HELD
    [(sid, session)] = consul.sessions.items()
    assert (session["ttl"], session["lock_delay"]) == (15, 15)
    assert consul.kv[KEY]["Session"] == sid
    assert json.loads(consul.kv[KEY]["Value"]) == {
        "cluster_id": "east", "cluster_uid": "uid-east", "lease": "bridge/bridge-east", "holder": "pod-a"}
    assert claim.may_write_until() == started + 15


def test_the_session_is_renewed_every_third_of_its_ttl_and_writes_follow_it(consul, clock):
    claim = make(consul, clock)
    claim.step(leading=True)
    clock.advance(2)
    claim.step(leading=True)
    assert "session_renew" not in consul.calls, "renewed sooner than a third of the TTL"
    clock.advance(3)
    renewed = clock.now
    claim.step(leading=True)
    assert consul.calls.count("session_renew") == 1
    assert claim.may_write_until() == renewed + 15


def test_a_session_consul_forgot_is_replaced_and_the_key_taken_again(consul, clock):
    claim = make(consul, clock)
    claim.step(leading=True)
    old = consul.kv[KEY]["Session"]
    consul.sessions.clear()  # e.g. a Consul snapshot restore lost it
    consul.kv[KEY]["Session"] = ""
    clock.advance(5)
    claim.step(leading=True)
    assert claim.state is ClaimState.HELD
    assert consul.kv[KEY]["Session"] not in ("", old)


def test_a_key_held_for_another_cluster_stops_every_write_with_one_error(consul, clock, caplog):
    other = ClaimValue("east", "uid-WEST", "bridge/bridge-east", "pod-w")
    consul.hold(KEY, other.encode())
    claim = make(consul, clock)
    caplog.set_level(logging.INFO, logger="bridge.ha")
    for _ in range(3):
        claim.step(leading=True)
        clock.advance(2)
    assert claim.state is ClaimState.CONFLICT
    assert not claim.may_write_until() > clock.now
    assert conflict_gauge() == 1
    assert "uid-WEST" in claim.problem and "uid-east" in claim.problem and "'east'" in claim.problem
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, f"one error per conflict, not per step: {[r.getMessage() for r in errors]}"
    assert json.loads(consul.kv[KEY]["Value"])["cluster_uid"] == "uid-WEST", "the other's claim is untouched"


def test_the_conflict_ends_when_the_other_clusters_session_lapses_and_lock_delay_passes(consul, clock, caplog):
    consul.hold(KEY, ClaimValue("east", "uid-WEST", "bridge/bridge-east", "pod-w").encode())
    claim = make(consul, clock)
    claim.step(leading=True)
    caplog.set_level(logging.INFO, logger="bridge.ha")
    for _ in range(8):  # the other bridge renews no more: its session lapses after 15s
        clock.advance(2)
        claim.step(leading=True)
    assert claim.state is ClaimState.WAITING, "free, but in lock-delay after another cluster's session"
    assert not claim.may_write_until() > clock.now
    assert conflict_gauge() == 0
    for _ in range(8):  # lock-delay: 15s from the lapse (which the fake saw at +16)
        clock.advance(2)
        claim.step(leading=True)
    assert claim.state is ClaimState.HELD
    assert any("conflict is over" in r.getMessage() for r in caplog.records)


def test_a_previous_leader_of_this_cluster_is_taken_over_at_once(consul, clock):
    """Its writes are fenced by the Lease already: writing may go on while its session is
    destroyed and Consul's lock-delay passes."""
    previous = consul.hold(KEY, ClaimValue("east", "uid-east", "bridge/bridge-east", "pod-old").encode())
    claim = make(consul, clock)
    claim.step(leading=True)
    assert claim.state is ClaimState.TAKEOVER
    assert claim.may_write_until() > clock.now
    assert previous not in consul.sessions, "the previous leader's session is destroyed"
    for _ in range(3):
        clock.advance(2)
        claim.step(leading=True)
        assert claim.state is ClaimState.TAKEOVER, "acquired during lock-delay"
    assert consul.calls.count("session_destroy") == 1
    clock.advance(10)
    claim.step(leading=True)
    assert claim.state is ClaimState.HELD
    assert json.loads(consul.kv[KEY]["Value"])["holder"] == "pod-a"


@pytest.mark.parametrize("value", [
    ClaimValue("east", "uid-east", "other-ns/bridge-east", "pod-x").encode(),  # a second deployment
    b"not json",
    b'{"cluster_id": "east"}',
], ids=["same-cluster-other-lease", "not-json", "no-cluster-uid"])
def test_a_claim_we_cannot_prove_is_ours_is_a_conflict(consul, clock, value):
    consul.hold(KEY, value)
    claim = make(consul, clock)
    claim.step(leading=True)
    assert claim.state is ClaimState.CONFLICT
    assert not claim.may_write_until() > clock.now
    assert "session_destroy" not in consul.calls, "another deployment's session is not ours to end"


def test_stepping_down_releases_the_key_without_lock_delay_then_ends_the_session(consul, clock):
    claim = make(consul, clock)
    claim.step(leading=True)
    claim.step(leading=False)
    assert claim.state is ClaimState.IDLE and not claim.may_write_until() > clock.now
    assert consul.kv[KEY]["Session"] == "" and not consul.sessions
    assert consul.calls[-2:] == ["kv_release", "session_destroy"], "released before the session ends"
    successor = make(consul, clock, identity="pod-b")
    successor.step(leading=True)
    assert successor.state is ClaimState.HELD, "a released key is free at once"


@pytest.mark.parametrize("error", [Transient, Unreachable], ids=["refused", "parked-by-the-outage"])
def test_consul_out_of_reach_ends_writes_a_ttl_after_the_last_confirmation(consul, clock, caplog, error):
    """Whether its calls fail at the connection or are refused unsent while Consul's outage
    lasts (bridge/outage.py), the writer stops a TTL after Consul last confirmed it."""
    claim = make(consul, clock)
    confirmed = clock.now
    claim.step(leading=True)
    consul.down, consul.down_error = True, error
    caplog.set_level(logging.INFO, logger="bridge.ha")
    for _ in range(7):
        clock.advance(2)
        claim.step(leading=True)
        assert (clock.now < claim.may_write_until()) == (clock.now < confirmed + 15)
    # An outage is logged by the outage, not again by every loop that meets it.
    lines = 0 if issubclass(error, Unavailable) else 1
    assert len([r for r in caplog.records if "failing" in r.getMessage()]) == lines
    consul.down = False
    clock.advance(2)
    claim.step(leading=True)
    assert claim.may_write_until() > clock.now
    assert len([r for r in caplog.records if "recovered" in r.getMessage()]) == lines


def test_without_the_cluster_uid_nothing_is_claimed_or_written_until_it_is_read(consul, clock):
    answers: list[str] = []

    def read_uid() -> str:
        if answers:
            return answers[0]
        raise Denied("get namespaces kube-system: HTTP 403 forbidden")

    claim = ClusterClaim(consul, cluster_id="east", lease="bridge/bridge-east", identity="pod-a",
                         cluster_uid=read_uid, session_ttl=15, lock_delay=15, clock=clock)
    claim.step(leading=True)
    assert claim.state is ClaimState.UNKNOWN and not claim.may_write_until() > clock.now
    assert "kube-system" in claim.problem
    assert consul.calls == [], "no Consul call before the cluster is known"
    answers.append("uid-east")  # RBAC fixed
    consul.down = True
    claim.step(leading=True)
    assert claim.problem == "", "the cluster is known now; Consul being away is no lasting problem"
    consul.down = False
    claim.step(leading=True)
    assert claim.state is ClaimState.HELD


def test_a_non_leader_holds_nothing(consul, clock):
    claim = make(consul, clock)
    claim.step(leading=False)
    assert claim.state is ClaimState.IDLE and consul.calls == []
