"""What high availability adds to one bridge: the watcher wakes a follower when this cluster's
claim is given up, the publisher shows what the dead-cluster filter leaves, readiness waits
for the claims and reports problems as warnings, and a stop never waits long to give up."""

from __future__ import annotations

import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

from bridge import config
from bridge.catalog.model import Catalog, ServiceKey, Snapshot
from bridge.ha.wiring import HighAvailability
from bridge.http import HealthServer
from bridge.reconcile.publish import Publisher
from tests.conftest import eventually
from tests.unit.ha_fakes import FakeClock, consul_instance, local_instance, web
from tests.unit.test_ha_clusters import entry


def settings(**values: str) -> config.Settings:
    return config.build(environ={f"BRIDGE_{k.upper()}": v for k, v in values.items()})


class Claims:
    """`kv_list` answering the listings a test puts, one per blocking read."""

    def __init__(self) -> None:
        self.listings: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        self.index = 0

    def kv_list(self, prefix: str, index: int | None) -> tuple[int, list[dict[str, Any]]]:
        listing = self.listings.get(timeout=10)
        self.index += 1
        return self.index, listing


class FakeLeadership:
    elector = claim = None

    def __init__(self, leading: bool) -> None:
        self._leading = leading
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self.answer = threading.Event()  # what an API server that does not answer never sets
        self.answer.set()

    def leading(self) -> bool:
        return self._leading

    def wake(self) -> None:
        self.woken.set()

    def problems(self) -> list[str]:
        return []

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self.answer.wait(60)


def watching(leadership: FakeLeadership) -> tuple[Claims, list[int], threading.Event]:
    claims, pokes, stop = Claims(), [], threading.Event()
    ha = HighAvailability(settings(cluster_id="home"), None, claims, stop=stop,  # type: ignore[arg-type]
                          on_writable=lambda: None, on_clusters=lambda: pokes.append(1))
    ha.leadership = leadership  # type: ignore[assignment]
    ha.start()
    return claims, pokes, stop


def test_a_replica_that_does_not_write_tries_the_lease_when_this_clusters_claim_is_given_up():
    follower = FakeLeadership(leading=False)
    claims, pokes, stop = watching(follower)
    try:
        claims.listings.put([entry("home", "s1"), entry("east", "s2")])
        eventually(lambda: pokes, timeout=5, what="the publisher woken for the first listing")
        assert not follower.woken.is_set(), "the claim is held: nothing to try"
        claims.listings.put([entry("home"), entry("east", "s2")])  # the writer stopped cleanly
        eventually(follower.woken.is_set, timeout=5, what="the follower woken to try the Lease")
    finally:
        stop.set()
        claims.listings.put([])


def test_the_writer_is_not_woken_by_its_own_claim():
    leader = FakeLeadership(leading=True)
    claims, pokes, stop = watching(leader)
    try:
        claims.listings.put([entry("home", "s1")])
        claims.listings.put([entry("home")])
        eventually(lambda: len(pokes) == 2, timeout=5, what="both listings seen")
        assert not leader.woken.is_set()
    finally:
        stop.set()
        claims.listings.put([])


def test_dns_stops_answering_a_dead_clusters_instances_once_due_and_readiness_waits_for_the_claims():
    clock = FakeClock()
    ha = HighAvailability(settings(cluster_id="home", sync_expire_dead_clusters_after="60"), None,
                          Claims(), stop=threading.Event(), on_writable=lambda: None,  # type: ignore[arg-type]
                          on_clusters=lambda: None, clock=clock)
    assert ha.waiting_for() == ["consul cluster claims"], "a replica must not start by answering the dead"
    assert ha.watcher is not None
    ha.watcher.observe([entry("east")])
    assert ha.waiting_for() == []
    services = web(local_instance(0), local_instance(1), consul_instance(2, "east"))
    published: list[Catalog] = []

    class Source:
        synced = True

        def snapshot(self) -> Snapshot:
            return Snapshot.of(list(services.values()), synced=True)

    publisher = Publisher(kube=Source(), consul=None, publish=published.append,
                          stop=threading.Event(), visible=ha.visible)
    publisher.step()
    key = ServiceKey("default", "web")
    assert len(published[-1].services[key].instances) == 3, "dead, but not for 60 s yet"
    clock.advance(60)
    publisher.step()  # the watcher's wake-up pokes the publisher at this moment
    assert {i.address for i in published[-1].services[key].instances} == {"10.9.0.1", "10.9.0.2"}
    ha.watcher.observe([entry("east", "s9")])
    publisher.step()
    assert len(published[-1].services[key].instances) == 3, "back as soon as east's bridge is"


def test_readyz_lists_warnings_after_its_status_without_changing_it():
    warnings = ["cluster id 'home' is claimed in Consul by another cluster"]
    missing: list[str] = []
    server = HealthServer("127.0.0.1", 0, lambda: missing, warnings=lambda: warnings)
    server.start()
    url = f"http://127.0.0.1:{server.address[1]}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.read().decode() == f"ready\nwarning: {warnings[0]}\n"
        missing.append("consul list")
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert exc.read().decode() == f"not ready, waiting for:\n- consul list\nwarning: {warnings[0]}\n"
        else:
            raise AssertionError("not ready must answer 503")
    finally:
        server.stop()


def test_a_stop_gives_up_the_lease_and_claim_within_its_deadline_or_leaves_them_to_lapse(caplog):
    stuck = FakeLeadership(leading=True)
    stuck.answer.clear()
    ha = HighAvailability(settings(cluster_id="home", sync_from_consul="false"), None, Claims(),  # type: ignore[arg-type]
                          stop=threading.Event(), on_writable=lambda: None, on_clusters=lambda: None)
    ha.leadership = stuck  # type: ignore[assignment]
    done = threading.Event()
    caplog.set_level(logging.WARNING, logger="bridge.ha")
    threading.Thread(target=lambda: (ha.stop(0.2), done.set()), daemon=True).start()
    try:
        # Generous: stop() must return after its 0.2 s deadline; the API server never answers.
        assert done.wait(10), "stop() waited for an API server that does not answer"
    finally:
        stuck.answer.set()
    assert stuck.stopping.is_set()
    assert "they lapse by themselves" in caplog.text
