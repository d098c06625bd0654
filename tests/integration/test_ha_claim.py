"""The cluster claim and the claims watcher against the Consul test server, through the
bridge's own client. Consul's sessions and lock-delay run on the server's time; the
claim's own deadlines on an injected clock."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.ha.claim import ClaimState, ClaimValue, ClusterClaim
from bridge.ha.clusters import ClusterWatcher
from bridge.testing.consul import ConsulServer
from tests.conftest import eventually
from tests.unit.ha_fakes import FakeClock

KEY = "bridge/clusters/east"


@pytest.fixture
def server() -> Iterator[ConsulServer]:
    started = ConsulServer(host="127.0.0.1", port=0, jitter=False).start()
    yield started
    started.stop()


@pytest.fixture
def consul(server) -> ConsulClient:
    return ConsulClient(ConsulSettings(address=server.url))


def get(server: ConsulServer, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=5) as response:
        return json.load(response)


def key_entry(server: ConsulServer) -> dict[str, Any]:
    [entry] = get(server, f"/v1/kv/{KEY}")
    return entry


def claim(consul: ConsulClient, clock: FakeClock, identity: str = "pod-a", uid: str = "uid-east",
          lock_delay: int = 15) -> ClusterClaim:
    return ClusterClaim(consul, cluster_id="east", lease="bridge/bridge-east", identity=identity,
                        cluster_uid=lambda: uid, session_ttl=15, lock_delay=lock_delay, clock=clock)


def test_the_leader_holds_the_key_with_a_ttl_session_without_node_checks(server, consul):
    c = claim(consul, FakeClock())
    c.step(leading=True)
    assert c.state is ClaimState.HELD
    entry = key_entry(server)
    [session] = get(server, f"/v1/session/info/{entry['Session']}")
    assert session["TTL"] == "15s" and session["Behavior"] == "release"
    assert session["LockDelay"] == 15 * 10**9
    assert not session.get("NodeChecks") and not session.get("Checks"), (
        "the session lives by its TTL, not by the health of the agent it was made through")
    assert ClaimValue.decode(base64.b64decode(entry["Value"])) == ClaimValue(
        "east", "uid-east", "bridge/bridge-east", "pod-a")


def test_another_clusters_claim_is_left_alone(server, consul):
    other = claim(consul, FakeClock(), identity="pod-w", uid="uid-west")
    other.step(leading=True)
    held = key_entry(server)
    ours = claim(consul, FakeClock())
    ours.step(leading=True)
    assert ours.state is ClaimState.CONFLICT and "uid-west" in ours.problem
    assert key_entry(server) == held, "a conflicting bridge writes nothing"


def test_a_previous_leader_is_taken_over_once_its_lock_delay_passes(server, consul):
    previous = claim(consul, FakeClock(), identity="pod-old", lock_delay=1)
    previous.step(leading=True)
    old_session = key_entry(server)["Session"]
    clock = FakeClock()
    successor = claim(consul, clock, identity="pod-new")
    successor.step(leading=True)
    assert successor.state is ClaimState.TAKEOVER and successor.may_write_until() > clock.now
    assert get(server, f"/v1/session/info/{old_session}") in (None, []), "the old session is destroyed"

    def held() -> bool:
        successor.step(leading=True)
        return successor.state is ClaimState.HELD

    eventually(held, timeout=10, what="the key acquired after the 1s lock-delay")
    assert key_entry(server)["Session"] != old_session


def test_a_release_frees_the_key_at_once(server, consul):
    first = claim(consul, FakeClock())
    first.step(leading=True)
    first.step(leading=False)
    assert "Session" not in key_entry(server) or not key_entry(server)["Session"]
    assert get(server, "/v1/session/list") == []
    second = claim(consul, FakeClock(), identity="pod-b")
    second.step(leading=True)
    assert second.state is ClaimState.HELD, "no lock-delay after a release"


def test_a_session_destroyed_behind_our_back_is_replaced(server, consul):
    clock = FakeClock()
    c = claim(consul, clock)
    c.step(leading=True)
    urllib.request.urlopen(urllib.request.Request(
        server.url + f"/v1/session/destroy/{key_entry(server)['Session']}", method="PUT"), timeout=5).close()
    clock.advance(5)  # the next renewal finds the session gone
    c.step(leading=True)
    assert c.state is ClaimState.TAKEOVER, "our own claim, in lock-delay: writing goes on"
    assert len(get(server, "/v1/session/list")) == 1


def test_the_watcher_sees_a_cluster_alive_then_dead(server, consul):
    stop = threading.Event()
    changes = threading.Event()
    clock = FakeClock()
    watcher = ClusterWatcher(consul, our_cluster_id="home", clock=clock, stop=stop, on_change=changes.set)
    west = ClusterClaim(consul, cluster_id="west", lease="bridge/bridge-west", identity="pod-w",
                        cluster_uid=lambda: "uid-west", session_ttl=15, lock_delay=15, clock=FakeClock())
    west.step(leading=True)
    watcher.start()
    try:
        eventually(lambda: watcher.clusters().get("west") and watcher.clusters()["west"].alive,
                   what="west seen alive")
        assert dict(watcher.dead()) == {}
        clock.advance(100)
        west.release()
        eventually(lambda: "west" in watcher.dead(), what="west seen dead")
        assert watcher.dead()["west"] == clock.now
        assert changes.is_set()
    finally:
        stop.set()  # the server's stop ends the watcher's blocking query
