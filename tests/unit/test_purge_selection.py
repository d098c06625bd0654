"""What `bridge purge` takes as a cluster's own in Consul (bridge/consul/owned.py), and what it leaves."""

from __future__ import annotations

from typing import Any

from bridge.catalog.plan import OWNER_META
from bridge.consul.owned import Owned, OwnedRegistration, batches, deletions, owned, owner_filter
from bridge.purge import Holdings, summary


def svc(sid: str, name: str, owner: str | None) -> dict[str, Any]:
    meta = {"external-source": "kubernetes", **({OWNER_META: owner} if owner else {})}
    return {"ID": sid, "Service": name, "Meta": meta, "Port": 80}


def node_view(node: str, owner: str | None, *services: dict[str, Any]) -> dict[str, Any]:
    return {"Node": {"Node": node, "Address": "127.0.0.1", "Meta": {OWNER_META: owner} if owner else {}},
            "Services": {s["ID"]: s for s in services}}


EAST = node_view("k8s-sync-east", "east", svc("web-1", "web", "east"), svc("db-1", "db", "east"))
WEST = node_view("k8s-sync-west", "west", svc("web-2", "web", "west"))
CLAIM = {"Key": "bridge/clusters/east", "Session": "", "Value": b"{}"}
SESSIONS = [{"ID": "s-east", "Name": "bridge east pod-a"}, {"ID": "s-west", "Name": "bridge west pod-b"},
            {"ID": "s-easter", "Name": "bridge easter pod-c"}, {"ID": "s-other", "Name": "consul-lock"}]


def test_the_clusters_node_goes_whole_with_its_registrations_its_claim_and_its_sessions():
    found = owned("east", {"k8s-sync-east": EAST}, [], CLAIM, SESSIONS)
    assert found.nodes == ("k8s-sync-east",)
    assert found.registrations == (OwnedRegistration("k8s-sync-east", "db-1", "db"),
                                   OwnedRegistration("k8s-sync-east", "web-1", "web"))
    assert found.claim == "bridge/clusters/east" and found.claim_session == ""
    assert found.sessions == (("s-east", "bridge east pod-a"),), \
        "only sessions named for cluster east: not west's, not those of a cluster whose id starts with east"


def test_a_neighbours_node_registrations_claim_and_sessions_are_never_selected():
    found = owned("east", {"k8s-sync-east": EAST, "k8s-sync-west": WEST},
                  [{"Node": "k8s-sync-west", "ServiceID": "web-2", "ServiceName": "web",
                    "ServiceMeta": {OWNER_META: "west"}}], CLAIM, SESSIONS)
    named = {line for d in deletions(found) for line in d.what} | {sid for sid, _ in found.sessions}
    assert not {line for line in named if "west" in line or "web-2" in line}, named
    assert "k8s-sync-west" not in found.nodes


def test_a_node_of_ours_holding_someone_elses_registration_stays_and_only_ours_go():
    shared = node_view("k8s-sync-east", "east", svc("web-1", "web", "east"), svc("vm-1", "billing", None),
                       svc("web-2", "web", "west"))
    found = owned("east", {"k8s-sync-east": shared}, [], None, [])
    assert found.nodes == ()
    assert found.kept_nodes == (("k8s-sync-east", "it also holds 2 registration(s) not of cluster east"),)
    ops = [d.op for d in deletions(found)]
    assert ops == [{"Service": {"Verb": "delete", "Node": "k8s-sync-east",
                                "Service": {"ID": "web-1", "Service": "web"}}}], \
        "one service delete, by ID and name (Consul refuses a service op without its name)"


def test_a_node_not_marked_as_ours_is_kept_even_when_it_is_empty_of_others():
    unmarked = node_view("k8s-sync-east", None, svc("web-1", "web", "east"))
    found = owned("east", {"k8s-sync-east": unmarked}, [], None, [])
    assert found.nodes == () and found.kept_nodes == ()
    assert [d.what for d in deletions(found)] == [("consul registration k8s-sync-east/web-1 (web)",)]


def test_registrations_marked_as_ours_on_another_node_are_selected():
    """A node name changed since (sync.node_name): the old node's entries still carry the mark."""
    elsewhere = [{"Node": "old-node", "ServiceID": "web-9", "ServiceName": "web", "ServiceMeta": {OWNER_META: "east"}},
                 {"Node": "old-node", "ServiceID": "web-8", "ServiceName": "web", "ServiceMeta": {OWNER_META: "west"}}]
    found = owned("east", {"k8s-sync-east": None}, elsewhere, None, [])
    assert found.registrations == (OwnedRegistration("old-node", "web-9", "web"),)
    assert found.nodes == ()


def test_nothing_found_is_empty_and_makes_no_operation():
    found = owned("east", {"k8s-sync-east": None}, [], None, [{"ID": "s", "Name": "bridge west x"}])
    assert found.empty and deletions(found) == []
    assert Holdings(found).empty and list(Holdings(found).lines()) == []


def test_a_running_bridge_shows_as_the_session_holding_the_claim():
    found = owned("east", {}, [], {**CLAIM, "Session": "s-east"}, SESSIONS)
    assert found.claim_session == "s-east"


def test_deletions_are_registrations_then_nodes_then_the_claim_in_batches():
    regs = (*(OwnedRegistration("k8s-sync-east", f"web-{i}", "web") for i in range(3)),
            OwnedRegistration("old", "x-1", "x"))
    found = Owned("east", registrations=regs, nodes=("k8s-sync-east",), claim="bridge/clusters/east")
    items = deletions(found)
    assert [next(iter(d.op)) for d in items] == ["Service", "Node", "KV"]
    assert items[1].what == ("consul registration k8s-sync-east/web-0 (web)",
                             "consul registration k8s-sync-east/web-1 (web)",
                             "consul registration k8s-sync-east/web-2 (web)", "consul node k8s-sync-east")
    assert items[1].op == {"Node": {"Verb": "delete", "Node": {"Node": "k8s-sync-east"}}}
    assert items[2].op == {"KV": {"Verb": "delete", "Key": "bridge/clusters/east"}}
    assert [len(b) for b in batches(items, 2)] == [2, 1]
    assert [len(b) for b in batches(items, 64)] == [3], "what fits one transaction is deleted all or nothing"


def test_the_owner_filter_names_the_meta_and_leaves_the_nodes_already_read_out():
    assert owner_filter("east", ["k8s-sync-east"]) == \
        'ServiceMeta["bridge-owner"] == "east" and Node != "k8s-sync-east"'
    assert owner_filter("east") == 'ServiceMeta["bridge-owner"] == "east"'


def test_the_summary_counts_each_kind():
    lines = ["consul registration n/a (a)", "consul registration n/b (b)", "consul node n",
             "kubernetes endpointslices consul/a-ipv4-1", "kubernetes services consul/a",
             "kubernetes services consul/b"]
    assert summary(lines) == "consul: 2 registrations, 1 node; kubernetes: 1 endpointslice, 2 services"
