"""A leader that can no longer renew its Lease stops writing before the Lease can lapse
(the fence), so it never writes at the same time as a successor, and it goes on answering
DNS. The Kubernetes test server fails every Lease request (503) from some moment on: no
replica can renew, read or take the Lease, while Services are still watched."""

from __future__ import annotations

from tests.conftest import eventually
from tests.e2e.ha_world import (
    ANSWERS,
    CLUSTER,
    FAST,
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    START,
    TAKEOVER,
    WEB,
    leader,
    one_cluster,
    quiet_for_resyncs,
    web,
)

LATE = "late.default.svc.cluster.local."


def test_a_leader_whose_renewals_fail_stops_writing_before_its_lease_can_lapse(tmp_path, started):
    kube, consul, replicas = one_cluster(tmp_path, started, 2, FAST)
    first = eventually(lambda: leader(replicas, kube, CLUSTER), START, "exactly one leader, the Lease's holder")
    kube.fail("/apis/coordination.k8s.io/")
    # It steps down once no renewal has succeeded for renew_deadline, noticed at its next
    # try (retry_period later); 2 s more for processes sharing two loaded cores.
    eventually(lambda: not first.leads(), RENEW_DEADLINE + RETRY_PERIOD + 2.0, "the leader stepping down")
    # Its Lease writes: the create, if it was the first, then its renewals (the follower
    # only reads a Lease that is held).
    renewals = [r for r in kube.requests() if "/leases" in r["path"]
                and (r["method"], r["status"]) in (("POST", 201), ("PUT", 200))]
    # The last one the API server accepted: a follower must see the Lease unrenewed for
    # lease_duration from then before it may take it, so the leader's writes must all be
    # over by then (both servers and the bridges share this machine's clock).
    lapses_at = renewals[-1]["started"] + LEASE_DURATION

    # A change it would write if it still could: it sees it (DNS answers it) and passes over it.
    for obj in web(["10.1.0.9"], name="late"):
        kube.apply(obj)
    eventually(lambda: first.a_records(LATE) == {"10.1.0.9"}, 15, "the old leader answering the new Service")
    quiet_for_resyncs(replicas, 2)
    assert consul.instances("late") == set(), "a replica wrote without holding the Lease"
    late_writes = [w for w in consul.writes() if w["at"] >= lapses_at]
    assert late_writes == [], f"written after the Lease could have lapsed: {late_writes}"
    assert first.a_records(WEB) == ANSWERS[WEB] and first.ready(), "it still answers DNS"
    assert not any(r.leads() for r in replicas), "nobody can hold the Lease"

    # The Lease API back: one of them leads and writes what waited.
    kube.reset()
    eventually(lambda: leader(replicas, kube, CLUSTER), TAKEOVER, "a leader again")
    eventually(lambda: consul.instances("late") == {"10.1.0.9"}, TAKEOVER, "the waiting change written")
