"""Every replica's view of the clusters' claims, and the filter that hides dead clusters."""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY

from bridge.catalog.model import ServiceKey
from bridge.ha.claim import ClaimValue
from bridge.ha.clusters import ClusterWatcher, DeadClusterFilter
from tests.unit.ha_fakes import FakeClock, consul_instance, web


def entry(cluster: str, session: str = "") -> dict:
    value = ClaimValue(cluster, f"uid-{cluster}", f"bridge/bridge-{cluster}", "pod").encode()
    return {"Key": f"bridge/clusters/{cluster}", "Session": session, "Value": value}


def alive(cluster: str) -> float | None:
    return REGISTRY.get_sample_value("bridge_cluster_alive", {"cluster": cluster})


class Wakeups:
    """A `schedule` that records what the watcher asked for instead of starting timers."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, object]] = {}
        self._n = 0

    def __call__(self, seconds, call):
        self._n += 1
        n = self._n
        self.pending[n] = (seconds, call)
        return lambda: self.pending.pop(n, None)


def watcher(clock: FakeClock, wakeups: Wakeups | None = None, expire_after: float = 0.0,
            on_change=lambda: None) -> ClusterWatcher:
    return ClusterWatcher(object(), our_cluster_id="home", clock=clock, stop=threading.Event(),  # type: ignore[arg-type]
                          on_change=on_change, expire_after=expire_after, schedule=wakeups or Wakeups())


def test_a_claim_without_a_session_is_a_dead_cluster_since_it_was_seen():
    clock = FakeClock()
    w = watcher(clock)
    first = clock.now
    assert w.observe([entry("east", "s1"), entry("west"), entry("home"),
                      {"Key": "bridge/clusters/a/b", "Session": ""}, {"Key": "bridge/other"}])
    assert dict(w.dead()) == {"west": first}, "this cluster is never dead to itself"
    assert set(w.clusters()) == {"east", "west", "home"}
    assert (alive("east"), alive("west")) == (1, 0)
    clock.advance(30)
    assert not w.observe([entry("east", "s1"), entry("west"), entry("home")]), "nothing changed"
    assert dict(w.dead()) == {"west": first}, "since is when it was first seen dead"
    assert w.clusters()["east"].claim == ClaimValue("east", "uid-east", "bridge/bridge-east", "pod")


def test_a_lapse_and_a_return_are_each_seen_and_logged_once(caplog):
    clock = FakeClock()
    w = watcher(clock)
    w.observe([entry("east", "s1")])
    caplog.set_level(logging.INFO, logger="bridge.ha")
    clock.advance(5)
    lapsed = clock.now
    assert w.observe([entry("east")])
    w.observe([entry("east")])
    assert dict(w.dead()) == {"east": lapsed} and alive("east") == 0
    assert len([r for r in caplog.records if "claim lapsed" in r.getMessage()]) == 1
    assert w.observe([entry("east", "s2")])
    assert dict(w.dead()) == {} and alive("east") == 1
    assert len([r for r in caplog.records if "holds its claim again" in r.getMessage()]) == 1


def test_a_deleted_claim_is_no_longer_tracked():
    clock = FakeClock()
    w = watcher(clock)
    w.observe([entry("north")])
    assert w.observe([])
    assert dict(w.dead()) == {} and alive("north") is None


def test_the_publisher_is_woken_when_a_dead_clusters_instances_come_due():
    clock = FakeClock()
    wakeups = Wakeups()
    woken = []
    w = watcher(clock, wakeups, expire_after=600, on_change=lambda: woken.append(1))
    w.observe([entry("east", "s1")])
    w.observe([entry("east")])
    [(seconds, call)] = wakeups.pending.values()
    assert seconds == 600
    call()
    assert woken == [1]
    w.observe([entry("east", "s2")])
    assert wakeups.pending == {}, "a cluster alive again cancels its wake-up"


def east_dead(clock: FakeClock, *owners: str):
    """A watcher that has just seen cluster east dead, a filter hiding after 60s, and web's
    instances owned by `owners` in turn."""
    w = watcher(clock, expire_after=60)
    w.observe([entry("east")])
    services = web(*(consul_instance(n, owner) for n, owner in enumerate(owners)))
    return w, DeadClusterFilter(w, expire_after=60, clock=clock), services


def test_the_filter_hides_due_instances_and_says_so_once(caplog):
    clock = FakeClock()
    w, f, services = east_dead(clock, "east", "west", "west")
    assert f.apply(services) == services
    caplog.set_level(logging.INFO, logger="bridge.ha")
    caplog.clear()
    clock.advance(60)
    hidden = f.apply(services)
    assert {i.address for i in hidden[ServiceKey("default", "web")].instances} == {"10.0.0.2", "10.0.0.3"}
    f.apply(services)
    lines = [r.getMessage() for r in caplog.records if "no longer answered" in r.getMessage()]
    assert lines == ["instances of dead clusters no longer answered for 1 name(s): default/web"]
    w.observe([entry("east", "s2")])
    assert f.apply(services) == services
    assert any("answered again" in r.getMessage() for r in caplog.records)


def test_the_filter_logs_self_preservation_once(caplog):
    clock = FakeClock()
    _, f, services = east_dead(clock, "east", "east", "west")
    clock.advance(61)
    caplog.set_level(logging.INFO, logger="bridge.ha")
    caplog.clear()
    assert f.apply(services) == services
    f.apply(services)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "self-preservation" in warnings[0] and "east" in warnings[0]


def test_the_filter_is_off_at_zero():
    clock = FakeClock()
    w = watcher(clock)
    w.observe([entry("east")])
    services = web(consul_instance(0, "east"), consul_instance(1, "west"), consul_instance(2, "west"))
    clock.advance(10**6)
    assert DeadClusterFilter(w, expire_after=0, clock=clock).apply(services) is services
