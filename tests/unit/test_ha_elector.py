"""Leader election on a Lease, driven by a hand-turned clock.

The rules come from client-go's tools/leaderelection/leaderelection.go
(`tryAcquireOrRenew`, `isLeaseValid`, `release`) and resourcelock/leaselock.go; each test
names the rule it holds the elector to.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bridge.errors import Denied
from bridge.ha.elector import LeaderElector
from bridge.ha.lease import LeaseRecord, micro_time
from tests.unit.ha_fakes import FakeClock, LeaseServer

LONG_AGO = "2001-01-01T00:00:00.000000Z"
FAR_AHEAD = "2100-01-01T00:00:00.000000Z"


def make(server: LeaseServer, clock: FakeClock, identity: str = "a", **timings) -> LeaderElector:
    options = {"lease_duration": 15, "renew_deadline": 10.0, "retry_period": 2.0, **timings}
    return LeaderElector(server.store(identity), identity=identity, clock=clock, jitter=lambda: 0.0,
                         **options)


def held_by(holder: str, renew_time: str = LONG_AGO, duration: int = 15, transitions: int = 3) -> dict:
    return LeaseRecord(holder=holder, duration=duration, acquire_time=LONG_AGO,
                       renew_time=renew_time, transitions=transitions).spec()


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_an_absent_lease_is_created_naming_us():
    """tryAcquireOrRenew step 2: a NotFound Lease is created with our record, and we lead."""
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    a.tick()
    assert a.leading and a.is_leader()
    assert server.writes == [("create", "a")]
    assert server.spec == {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                           "acquireTime": micro_time(clock.wall_now), "renewTime": micro_time(clock.wall_now)}


def test_the_leader_renews_without_reading_first_and_keeps_acquire_time():
    """Step 1, the fast path: a leader whose observed record is valid replaces it at once,
    with acquireTime and leaseTransitions kept and renewTime moved on."""
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    a.tick()
    acquired, gets = server.spec["acquireTime"], server.gets
    clock.advance(2)
    assert a.tick() == 2.0, "the leader renews every retry_period"
    assert server.gets == gets, "a renewal by the leader needs no read"
    assert server.writes[-1] == ("replace", "a")
    assert server.spec["acquireTime"] == acquired
    assert server.spec["renewTime"] == micro_time(clock.wall_now)
    assert server.spec["leaseTransitions"] == 0


@pytest.mark.parametrize("renew_time", [LONG_AGO, FAR_AHEAD], ids=["stamped-long-ago", "stamped-ahead"])
def test_a_held_lease_is_taken_a_full_lease_duration_after_our_own_observation(renew_time):
    """Step 3: expiry is observedTime (our clock, when the record last changed for us) plus
    the record's leaseDurationSeconds; the remote renewTime decides nothing either way."""
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b", renew_time=renew_time))
    a = make(server, clock)
    a.tick()
    assert not a.leading, "a live holder's Lease is not taken"
    clock.advance(14.9)
    a.tick()
    assert not a.leading and server.spec["holderIdentity"] == "b", "taken before 15s of silence"
    clock.advance(0.2)
    a.tick()
    assert a.leading, "not taken after 15s without a change"
    assert server.spec["holderIdentity"] == "a"
    assert server.spec["leaseTransitions"] == 4, "leaseTransitions + 1 on a change of holder"
    assert server.spec["acquireTime"] == micro_time(clock.wall_now), "a new holder's acquireTime is now"


def test_every_change_of_the_record_restarts_the_wait():
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b"))
    a = make(server, clock)
    a.tick()
    clock.advance(10)
    server.put(held_by("b", renew_time="2001-01-01T00:00:10.000000Z"))  # b renewed
    clock.advance(0.5)
    a.tick()  # observed at +10.5
    clock.advance(14.9)
    a.tick()
    assert not a.leading, "taken less than 15s after b's renewal was observed"
    clock.advance(0.2)
    a.tick()
    assert a.leading


def test_the_records_own_duration_is_waited_not_ours():
    """isLeaseValid reads LeaseDurationSeconds from the observed record."""
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b", duration=3))
    a = make(server, clock)
    a.tick()
    clock.advance(2.9)
    a.tick()
    assert not a.leading
    clock.advance(0.2)
    a.tick()
    assert a.leading
    assert server.spec["leaseDurationSeconds"] == 15, "the new holder writes its own duration"


def test_of_two_candidates_only_one_wins_the_race_by_resource_version():
    """Update carries the resourceVersion read; the loser's 409 means someone else won."""
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("c"))
    a, b = make(server, clock, "a"), make(server, clock, "b")
    a.tick()
    b.tick()
    clock.advance(16)
    server.before_write = b.tick  # b reads and writes between a's read and a's write
    a.tick()
    assert b.leading and not a.leading and not a.is_leader()
    assert server.spec["holderIdentity"] == "b"
    assert server.spec["leaseTransitions"] == 4, "one change of holder, counted once"
    assert [verb for verb, _ in server.writes] == ["replace"], f"a's write must have been refused: {server.writes}"


def test_of_two_replicas_creating_the_lease_only_one_leads():
    server, clock = LeaseServer(), FakeClock()
    a, b = make(server, clock, "a"), make(server, clock, "b")
    server.before_write = b.tick
    a.tick()
    assert b.leading and not a.leading
    assert server.writes == [("create", "b")]


def test_writes_stop_at_renew_deadline_after_the_last_renewal_was_sent_without_any_tick():
    """Fencing: the deadline runs from when the last successful renewal was sent."""
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    sent = clock.now
    a.tick()
    assert a.may_write_until() == sent + 10.0
    clock.advance(9.99)
    assert a.is_leader()
    clock.advance(0.01)
    assert not a.is_leader(), "a leader may not write past renew_deadline, renewing or not"


def test_the_fence_falls_before_anyone_else_may_take_over():
    """Whatever the leader's renewals do, another replica's takeover comes later than the
    leader's last permitted write: lease_duration > renew_deadline, both counted from the
    same renewal (sent by one, observed after it was written by the other)."""
    server, clock = LeaseServer(), FakeClock()
    a, b = make(server, clock, "a"), make(server, clock, "b")
    a.tick()
    b.tick()  # observes a's record just after it was written
    server.store("a").down = True  # a alone is partitioned from the API server
    while not b.leading:
        clock.advance(0.5)
        a.tick()
        b.tick()
        assert not (a.is_leader() and b.is_leader()), f"two writers at {clock.now}"
    assert not a.is_leader()


def test_a_leader_that_cannot_renew_steps_down_at_the_deadline_and_logs_once(caplog):
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    a.tick()
    server.store("a").down = True
    caplog.set_level(logging.INFO, logger="bridge.ha")
    for _ in range(4):  # at +2, +4, +6, +8
        clock.advance(2)
        assert a.tick() == 2.0, "a leader keeps retrying every retry_period"
        assert a.leading
    clock.advance(2)
    a.tick()  # +10: renew_deadline passed without a renewal
    assert not a.leading and not a.is_leader()
    assert sample("bridge_leader") == 0
    for _ in range(5):
        clock.advance(2)
        a.tick()
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1, f"one line when renewals start failing: {[r.getMessage() for r in failing]}"
    assert len([r for r in caplog.records if "stopped leading" in r.getMessage()]) == 1
    server.store("a").down = False
    clock.advance(2)
    a.tick()
    assert a.leading, "the Lease still names us and nobody took it: renewed"
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1, "one line when they recover"


def test_a_refused_election_is_a_problem_for_readiness_and_an_unreachable_server_is_not():
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    view = server.store("a")
    view.down = True
    a.tick()
    assert a.problem == "", "an unreachable server passes by itself: logged, not a problem"
    view.down = False

    def refused() -> None:
        raise Denied('get leases bridge/bridge-test: HTTP 403: leases.coordination.k8s.io "bridge-test" '
                     'is forbidden: User "system:serviceaccount:bridge:bridge" cannot get resource "leases"')

    view.get = refused  # type: ignore[method-assign]  # RBAC without the Lease Role
    a.tick()
    assert a.problem.startswith("leader election on lease bridge/bridge-test refused: get leases")
    assert "forbidden" in a.problem and not a.leading
    del view.get  # the Role granted
    clock.advance(3)
    a.tick()
    assert a.leading and a.problem == ""


def test_a_leader_steps_down_at_once_when_the_lease_names_someone_else():
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    a.tick()
    server.put(held_by("b", renew_time=FAR_AHEAD))  # b took it (its clock thought a expired)
    clock.advance(2)
    a.tick()
    assert not a.leading and not a.is_leader()
    assert server.spec["holderIdentity"] == "b", "a live holder's Lease is not written over"


def test_contention_is_not_logged_as_a_failure(caplog):
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b"))
    a = make(server, clock)
    caplog.set_level(logging.DEBUG, logger="bridge.ha")
    for _ in range(3):
        a.tick()
        clock.advance(2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a standby is not an error"


def test_release_empties_the_holder_so_the_next_replica_takes_over_at_once():
    """release (ReleaseOnCancel): holder empty, leaseDurationSeconds 1, transitions kept."""
    server, clock = LeaseServer(), FakeClock()
    a, b = make(server, clock, "a"), make(server, clock, "b")
    a.tick()
    b.tick()
    assert a.release()
    assert not a.leading and not a.is_leader()
    assert server.spec["holderIdentity"] == "" and server.spec["leaseDurationSeconds"] == 1
    assert server.spec["leaseTransitions"] == 0
    clock.advance(0.1)
    b.tick()
    assert b.leading, "an empty holder is free at once"
    assert server.spec["leaseTransitions"] == 1


def test_release_by_a_replica_that_does_not_lead_writes_nothing():
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b"))
    a = make(server, clock)
    a.tick()
    writes = list(server.writes)
    assert a.release()
    assert server.writes == writes and server.spec["holderIdentity"] == "b"


def test_a_restarted_replica_with_the_same_identity_carries_on_its_lease():
    """Step 4: a record naming us is renewed at once, acquireTime and transitions kept."""
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("a", renew_time=FAR_AHEAD, transitions=7))
    a = make(server, clock)
    a.tick()
    assert a.leading
    assert server.spec["leaseTransitions"] == 7 and server.spec["acquireTime"] == LONG_AGO


def test_candidates_retry_with_client_go_jitter_and_the_leader_without():
    """acquire: wait.JitterUntil(RetryPeriod, JitterFactor 1.2); renew: every RetryPeriod."""
    server, clock = LeaseServer(), FakeClock()
    server.put(held_by("b"))
    a = LeaderElector(server.store("a"), identity="a", clock=clock, jitter=lambda: 1.0,
                      lease_duration=15, renew_deadline=10.0, retry_period=2.0)
    assert a.tick() == pytest.approx(2.0 * 2.2)
    clock.advance(16)
    assert a.tick() == 2.0


@pytest.mark.parametrize("timings", [
    {"lease_duration": 10, "renew_deadline": 10.0},
    {"renew_deadline": 2.4, "retry_period": 2.0},
])
def test_timings_client_go_refuses_are_refused(timings):
    with pytest.raises(ValueError):
        make(LeaseServer(), FakeClock(), **timings)


def test_metrics_follow_leadership():
    server, clock = LeaseServer(), FakeClock()
    a = make(server, clock)
    before = sample("bridge_leader_transitions_total")
    a.tick()
    assert sample("bridge_leader") == 1
    assert sample("bridge_leader_transitions_total") == before + 1
    clock.advance(2)
    a.tick()
    assert sample("bridge_leader_transitions_total") == before + 1, "a renewal is no transition"
    a.release()
    assert sample("bridge_leader") == 0


steps = st.lists(st.one_of(
    # Milliseconds; the edges of retry_period, renew_deadline and lease_duration are likely.
    st.tuples(st.just("advance"), st.one_of(
        st.sampled_from([1, 1999, 2000, 2001, 9999, 10_000, 10_001, 14_999, 15_000, 15_001]),
        st.integers(0, 16_000))),
    st.tuples(st.just("tick"), st.integers(0, 1)),
    st.tuples(st.just("tick"), st.integers(0, 1)),
    st.tuples(st.just("cut"), st.integers(0, 1)),
    st.tuples(st.just("heal"), st.integers(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 1)),
), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(steps)
def test_never_two_writers_at_once(plan):
    """Under any order of ticks, partitions, releases and pauses (time in whole
    milliseconds, so each renewal's microsecond renewTime differs), at most one replica
    may write at any moment."""
    server, clock = LeaseServer(), FakeClock()
    replicas = [make(server, clock, name) for name in "ab"]
    for action, arg in plan:
        if action == "advance":
            clock.advance(arg / 1000)
        elif action == "tick":
            replicas[arg].tick()
        elif action == "release":
            replicas[arg].release()
        else:
            server.store(replicas[arg].identity).down = action == "cut"
        writers = [r.identity for r in replicas if r.is_leader()]
        assert len(writers) <= 1, f"{writers} may all write at {clock.now}"
