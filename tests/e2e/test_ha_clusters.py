"""Several clusters, one Consul, their bridges as processes: a cluster given a cluster id
another cluster already uses writes nothing and says why; with
`sync.expire_dead_clusters_after`, a cluster whose bridges are all gone stops being answered
that long after, name by name as self-preservation allows, and is answered again when one
comes back. Each cluster is its own Kubernetes API test server (its own kube-system uid)."""

from __future__ import annotations

import time

from tests.conftest import eventually
from tests.e2e.ha_world import (
    ANSWERS,
    CLUSTER,
    FAST,
    START,
    WEB,
    Consul,
    Kube,
    Replica,
    leader,
    logged,
    one_cluster,
    quiet_for_resyncs,
    web,
)

API = "api.default.svc.cluster.local."
SOLO = "solo.default.svc.cluster.local."
EXPIRE = 3  # sync.expire_dead_clusters_after, seconds


def test_a_second_cluster_with_the_same_cluster_id_changes_nothing_and_says_why(tmp_path, started):
    kube, consul, [first] = one_cluster(tmp_path, started, 1, FAST)
    eventually(lambda: leader([first], kube, CLUSTER), START, "the first cluster's bridge leading")
    node = f"/v1/catalog/node/k8s-sync-{CLUSTER}"
    held = consul.get(node)
    mark = len(consul.requests())

    other = started.add(Kube(tmp_path, "other", web(["10.2.0.1"], name="api")))
    second = started.add(Replica("other-0", other, consul, CLUSTER, FAST))
    eventually(second.ready, START, "the second cluster's bridge ready: it answers DNS all the same")
    eventually(lambda: second.metric("bridge_cluster_id_conflict") == 1, 15, "bridge_cluster_id_conflict 1")
    assert second.leads(), "it holds its own cluster's Lease: the claim in Consul is what stops it"
    code, text = second.readyz()
    assert code == 200, "a conflict does not take DNS away"
    assert f"warning: cluster id '{CLUSTER}' is claimed in Consul by another cluster" in text, text
    assert logged(second.proc, r"ERROR.*claimed in Consul by another cluster.*give each cluster its own cluster_id"), \
        "the conflict is logged, with what to do"

    quiet_for_resyncs([first, second], 3, one_lease=False)  # each leads its own cluster
    assert consul.writes(mark) == [], "the conflicting bridge wrote to Consul"
    assert consul.get(node) == held, "the first cluster's registrations changed"
    assert consul.instances("api") == set()
    assert second.a_records(API) == {"10.2.0.1"}, "it answers its own cluster's Services"
    assert first.a_records(WEB) == ANSWERS[WEB]
    assert first.metric("bridge_cluster_id_conflict") == 0


def test_a_dead_clusters_instances_leave_dns_after_the_set_time_except_by_self_preservation(tmp_path, started):
    east_kube = started.add(Kube(tmp_path, "east", web(["10.1.0.1", "10.1.0.2"])))
    consul = started.add(Consul(tmp_path, []))
    east = started.add(Replica("east-0", east_kube, consul, "east",
                               {**FAST, "BRIDGE_SYNC_EXPIRE_DEAD_CLUSTERS_AFTER": str(EXPIRE)}))
    west_kube = started.add(Kube(tmp_path, "west", [*web(["10.2.0.1"]), *web(["10.2.0.5"], name="solo")]))
    west = started.add(Replica("west-0", west_kube, consul, "west", FAST))
    everyone = {"10.1.0.1", "10.1.0.2", "10.2.0.1"}
    eventually(lambda: east.ready() and east.a_records(WEB) == everyone, START, "east answering west's web instance")
    eventually(lambda: east.a_records(SOLO) == {"10.2.0.5"}, 15, "east answering west's solo")
    assert east.metric("bridge_cluster_alive", cluster="west") == 1

    # SIGTERM: west's bridge gives up its claim on the way out, so east sees it dead at once
    # (after a SIGKILL, once the claim's session lapsed); its registrations stay in Consul.
    stopped_at = time.monotonic()
    west.terminate()
    assert west.proc.p.wait(10) == 0
    eventually(lambda: east.a_records(WEB) == {"10.1.0.1", "10.1.0.2"}, EXPIRE + 15, "west's web instance hidden")
    hidden_after = time.monotonic() - stopped_at
    assert hidden_after >= EXPIRE, f"hidden {hidden_after:.1f}s after west's bridge stopped, before {EXPIRE}s"
    assert east.metric("bridge_cluster_alive", cluster="west") == 0
    assert consul.instances("web") == everyone, "nothing is deleted from Consul: only DNS hides them"
    assert east.a_records(SOLO) == {"10.2.0.5"}, \
        "self-preservation: hiding solo's only instance would take away more than half of the name"
    assert logged(east.proc, r"still answering instances of dead cluster\(s\) west for 1 name\(s\): default/solo")

    # West's bridge back: its claim is held again and its instances are answered again.
    started.add(Replica("west-1", west_kube, consul, "west", FAST))
    eventually(lambda: east.a_records(WEB) == everyone, START, "west's web instance answered again")
    assert east.metric("bridge_cluster_alive", cluster="west") == 1
