"""Replicas of one cluster as processes: every one answers DNS, exactly one (the Lease's
holder) writes, none writes while nothing changes, and when the writer dies or stops
another takes over in seconds without touching what did not change.

Timings are the subject here, so the bounds are the configured HA timings plus a margin,
each with its reason. Short timings (ha_world.FAST) keep the SIGKILL case to seconds; the
SIGTERM case runs with the default timings, where only the hand-over on a clean stop (not
the followers' periodic retry, 2 to 4.4 s) can make 2 s.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import eventually
from tests.e2e.ha_world import (
    ANSWERS,
    CLUSTER,
    FAST,
    RESYNC,
    START,
    TAKEOVER,
    WEB,
    leader,
    one_cluster,
    quiet_for_resyncs,
    web,
)


def services_written(writes: list[dict[str, Any]]) -> set[str]:
    """The Consul service names the catalog writes touched ("node" for the node itself)."""
    names: set[str] = set()
    for request in writes:
        assert request["path"] == "/v1/txn", f"the bridge writes in transactions only: {request}"
        for op in json.loads(request["body"]):
            if "Node" in op:
                names.add("node")
            elif "Service" in op:
                names.add(op["Service"]["Service"]["Service"])
            else:  # a check: named by its service when set, by its ID when deleted
                check = op["Check"]["Check"]
                names.add(check.get("ServiceName") or check["CheckID"])
    return names


def test_three_replicas_answer_alike_one_writes_and_a_killed_writer_is_replaced(tmp_path, started):
    kube, consul, replicas = one_cluster(tmp_path, started, 3, FAST)
    first = eventually(lambda: leader(replicas, kube, CLUSTER), START, "exactly one leader, the Lease's holder")
    for name, addresses in ANSWERS.items():
        for replica in replicas:
            assert replica.a_records(name) == addresses, f"{replica.name} answers {name} differently"

    # Idle: a few full resyncs on every replica, and no catalog write from any of them.
    mark, index = len(consul.requests()), consul.services_index()
    quiet_for_resyncs(replicas, 3)
    assert consul.writes(mark) == [], "a replica wrote to Consul while nothing changed"
    assert consul.services_index() == index
    assert [r.name for r in replicas if r.leads()] == [first.name], "the leader changed while idle"

    # SIGKILL: no release; the others wait for the Lease to lapse.
    mark, killed_at = len(consul.requests()), time.monotonic()
    first.kill()
    for obj in web(["10.1.0.9"], name="late"):
        kube.apply(obj)
    others = [r for r in replicas if r is not first]
    second = eventually(lambda: leader(others, kube, CLUSTER), TAKEOVER, "another replica leading")
    took = time.monotonic() - killed_at
    assert took <= TAKEOVER, f"took {took:.1f}s to lead after the kill"
    # The new leader's first pass writes what changed: lease_duration + 2 s is the issue's
    # target; the worst case of the takeover (above) applies to it too.
    eventually(lambda: consul.instances("late") == {"10.1.0.9"}, TAKEOVER + 2,
               "the Service made after the kill in Consul")
    landed = time.monotonic() - killed_at
    assert landed <= TAKEOVER + 2, f"the change took {landed:.1f}s to reach Consul"
    assert services_written(consul.writes(mark)) == {"late"}, \
        "the takeover itself must change no catalog entry: only the new Service is written"
    assert all(r.a_records("late.default.svc.cluster.local.") == {"10.1.0.9"} for r in others)
    assert second.name in {r.name for r in others}


def test_a_stopped_writer_hands_over_within_2s_and_the_new_writer_writes_nothing(tmp_path, started):
    kube, consul, replicas = one_cluster(tmp_path, started, 2, {"BRIDGE_SYNC_RESYNC_PERIOD": str(RESYNC)})
    first = eventually(lambda: leader(replicas, kube, CLUSTER), START, "exactly one leader, the Lease's holder")
    [other] = [r for r in replicas if r is not first]
    mark, index = len(consul.requests()), consul.services_index()
    stopped_at = time.monotonic()
    first.terminate()
    # 2 s is the promise; a clean stop gives up the Lease, then the claim, and the
    # claim's release wakes the follower (default retry_period 2 s: unwoken, it would try
    # again only 2 to 4.4 s later).
    eventually(lambda: leader([other], kube, CLUSTER), 10, "the other replica leading")
    took = time.monotonic() - stopped_at
    assert took <= 2.0, f"took {took:.2f}s to hand over after SIGTERM"
    assert first.proc.p.wait(10) == 0
    quiet_for_resyncs([other], 3)
    assert consul.writes(mark) == [], "the new writer wrote though nothing changed"
    assert consul.services_index() == index
    assert other.a_records(WEB) == ANSWERS[WEB]
