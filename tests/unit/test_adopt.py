"""Adoption (`sync.adopt_node`): which of consul-k8s's registrations go, and when.

The rule (`bridge/catalog/adopt.py`): a registration consul-k8s left on its node goes only
for a Service the bridge syncs, and only once every registration the bridge wants for that
Service is in Consul as wanted; anything else there is left alone. The planner tests run
the plans against a fake Consul that applies one operation at a time in the order the sink
sends them, and checks after each one that no ready endpoint is missing from what
`/v1/health/service/<name>?passing` would answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from bridge import config
from bridge.catalog.adopt import takeover
from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.plan import OWNER_META, Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.catalog.to_consul import SyncOptions, desired, synced_services
from bridge.consul.objects import consul_k8s_registrations, is_consul_k8s, plan_operations
from bridge.consul.source import ConsulSource
from bridge.errors import ConfigError
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import ConsulPlanner
from bridge.reconcile.trigger import Trigger

CLUSTER = "east"
OPTIONS = SyncOptions(cluster_id=CLUSTER)
ORIGIN = Origin(OriginKind.KUBERNETES, CLUSTER)
ADOPT_NODE = "k8s-sync"
OUR_NODE = "k8s-sync-east"


def service(name: str, *addresses: str, ns: str = "shop", ready: bool = True,
            annotations: tuple[tuple[str, str], ...] = ()) -> Service:
    instances = tuple(Instance(address=a, ports=(Port("http", 8080),), origin=ORIGIN, ready=ready)
                      for a in addresses)
    return Service(key=ServiceKey(ns, name), type=ServiceType.HEADLESS, ports=(Port("http", 80),),
                   instances=instances, annotations=annotations)


def world(*services: Service) -> Snapshot:
    return Snapshot.of(services, synced=True)


def wanted(*services: Service) -> dict[str, Registration]:
    return dict(desired(world(*services), OPTIONS).registrations)


def consul_k8s(*services: Service) -> dict[str, Registration]:
    """What consul-k8s registered for `services` (their annotations aside: it synced
    every one): the bridge's IDs and names (the same computation), its meta (no bridge
    owner), every check passing."""
    out = {}
    for sid, reg in wanted(*(dataclasses.replace(s, annotations=()) for s in services)).items():
        meta = tuple((k, v) for k, v in reg.meta if k in ("external-source", "external-k8s-ns"))
        out[sid] = Registration(sid, reg.name, reg.address, reg.port, ("k8s",), meta, "passing")
    return out


# --- the rule -----------------------------------------------------------------------------------


def test_consul_k8s_registrations_go_once_every_registration_of_their_service_is_in_place():
    web, db = service("web", "10.0.0.1", "10.0.0.2"), service("db", "10.0.1.1")
    theirs = consul_k8s(web, db)
    ours = wanted(web, db)
    synced = synced_services(world(web, db), OPTIONS)
    web_2 = next(sid for sid, reg in ours.items() if reg.address == "10.0.0.2")

    found = takeover(theirs, ours, {}, synced)
    assert found.remove == () and len(found.waiting) == 3, "nothing of ours is in Consul yet"

    partly = {sid: reg for sid, reg in ours.items() if sid != web_2}
    found = takeover(theirs, ours, partly, synced)
    assert {r.name for r in found.remove} == {"db"}, "db is in place, web is not"
    assert {r.address for r in found.waiting} == {"10.0.0.1", "10.0.0.2"}, \
        "web's registration already in place waits for its sibling too"

    found = takeover(theirs, ours, ours, synced)
    assert sorted(found.remove) == sorted(theirs.values()) and not found.waiting and not found.kept


def test_a_registration_in_place_but_different_is_not_in_place():
    web = service("web", "10.0.0.1")
    ours = wanted(web)
    critical = {sid: Registration(reg.service_id, reg.name, reg.address, reg.port, reg.tags, reg.meta,
                                  "critical") for sid, reg in ours.items()}
    found = takeover(consul_k8s(web), ours, critical, synced_services(world(web), OPTIONS))
    assert found.remove == () and len(found.waiting) == 1, \
        "Consul holds ours with a failing check where we want it passing: not yet ours"


def test_a_stale_registration_of_a_synced_service_goes_and_one_of_a_service_not_synced_stays():
    then, now = service("web", "10.0.0.1"), service("web", "10.0.0.9")  # the pod moved since
    hidden = service("admin", "10.0.2.1", annotations=(("consul.hashicorp.com/service-sync", "false"),))
    elsewhere = service("metrics", "10.0.3.1", ns="monitoring")  # a namespace the bridge does not watch
    theirs = consul_k8s(then, hidden, elsewhere)
    ours = wanted(now, hidden)
    found = takeover(theirs, ours, ours, synced_services(world(now, hidden), OPTIONS))
    assert [r.address for r in found.remove] == ["10.0.0.1"], \
        "a leftover whose ID the bridge no longer wants goes with its Service"
    assert sorted(r.name for r in found.kept) == ["admin", "metrics"], found


def test_a_synced_service_without_an_instance_takes_its_leftovers_away():
    gone = service("web")  # scaled to zero after consul-k8s stopped
    theirs = consul_k8s(service("web", "10.0.0.1"))
    found = takeover(theirs, wanted(gone), {}, synced_services(world(gone), OPTIONS))
    assert len(found.remove) == 1, "the bridge wants no instance: consul-k8s's is stale"


def test_synced_services_are_named_as_the_registrations_are():
    options = SyncOptions(cluster_id=CLUSTER, prefix="k8s-", add_namespace_suffix=True)
    renamed = service("api", annotations=(("consul.hashicorp.com/service-name", " public-api "),))
    off = service("off", annotations=(("consul.hashicorp.com/service-sync", "false"),))
    external = Service(key=ServiceKey("shop", "ext"), type=ServiceType.EXTERNAL_NAME,
                       external_name="example.com")
    got = synced_services(world(service("web"), renamed, off, external), options)
    assert got == {("k8s-web-shop", "shop"), ("public-api", "shop")}, got


# --- Consul's side: what is consul-k8s's, and the operations ----------------------------------------


def node_view(*services: dict[str, Any]) -> dict[str, Any]:
    return {"Node": {"Node": ADOPT_NODE, "Meta": {"external-source": "kubernetes"}},
            "Services": {s["ID"]: s for s in services}}


def entry(sid: str, meta: dict[str, str]) -> dict[str, Any]:
    return {"ID": sid, "Service": "web", "Address": "10.0.0.1", "Port": 8080, "Tags": ["k8s"], "Meta": meta}


def test_only_what_carries_consul_k8s_marks_and_no_bridge_owner_is_consul_k8s():
    view = node_view(
        entry("theirs", {"external-source": "kubernetes", "external-k8s-ns": "shop"}),
        entry("by-hand", {}),
        entry("other-source", {"external-source": "nomad", "external-k8s-ns": "shop"}),
        entry("no-namespace", {"external-source": "kubernetes"}),
        entry("a-bridge", {"external-source": "kubernetes", "external-k8s-ns": "shop", OWNER_META: "west"}))
    assert list(consul_k8s_registrations(view)) == ["theirs"]
    assert consul_k8s_registrations(None) == {}, "no such node: nothing to adopt"
    assert not is_consul_k8s({"Meta": None})


def test_adopted_registrations_are_deleted_from_consul_k8s_node_after_the_rest():
    web = service("web", "10.0.0.1")
    ours, theirs = list(wanted(web).values()), list(consul_k8s(web).values())
    groups = plan_operations(Plan(create=tuple(ours), adopt=tuple(theirs)), OUR_NODE, ADOPT_NODE)
    assert [op for group in groups for op in group][-1] == {"Service": {
        "Verb": "delete", "Node": ADOPT_NODE, "Service": {"ID": theirs[0].service_id, "Service": "web"}}}
    nodes = {op["Service"]["Node"] if "Service" in op else op["Check"]["Check"]["Node"]
             for group in groups[:-1] for op in group}
    assert nodes == {OUR_NODE}, "the bridge's own registration goes to its own node"
    with pytest.raises(ValueError, match="node to deregister from"):
        plan_operations(Plan(adopt=tuple(theirs)), OUR_NODE)


# --- the planner and the reconciler --------------------------------------------------------------


class TwoNodes:
    """Consul's catalog of our node and consul-k8s's, applying a plan one operation at a
    time in the sink's order (creates, updates, deletes, then adopted ones) and checking
    after each that every ready endpoint of `world` is still passing on some node."""

    def __init__(self, theirs: dict[str, Registration], world: Snapshot) -> None:
        self.ours: dict[str, Registration] = {}
        self.theirs = dict(theirs)
        self.world = world
        self.reads = {"ours": 0, "theirs": 0}
        self.log: list[str] = []
        self.fail: set[str] = set()  # service IDs whose write fails

    def actual(self) -> dict[str, Registration]:
        self.reads["ours"] += 1
        return dict(self.ours)

    def leftovers(self) -> dict[str, Registration]:
        self.reads["theirs"] += 1
        return dict(self.theirs)

    def passing(self) -> set[tuple[str, str]]:
        return {(r.name, r.address) for node in (self.ours, self.theirs) for r in node.values()
                if r.check_status == "passing"}

    def apply(self, plan: Plan) -> ApplyResult[str]:
        result: ApplyResult[str] = ApplyResult()
        for reg in (*plan.create, *plan.update):
            if reg.service_id in self.fail:
                result.failed[reg.service_id] = "refused"
                continue
            self.ours[reg.service_id] = reg
            self.log.append(f"register {reg.service_id}")
            result.written.append(reg.service_id)
        for reg in plan.delete:
            del self.ours[reg.service_id]
            self.log.append(f"deregister {reg.service_id}")
            self.check()
        for reg in plan.adopt:
            del self.theirs[reg.service_id]
            self.log.append(f"deregister {ADOPT_NODE}/{reg.service_id}")
            self.check()
            result.written.append(reg.service_id)
        return result

    def check(self) -> None:
        ready = {(r.name, r.address) for r in desired(self.world, OPTIONS).registrations.values()
                 if r.check_status == "passing"}
        missing = ready - self.passing()
        assert not missing, f"ready endpoints missing from ?passing after {self.log[-1]}: {missing}"


def planner(store: TwoNodes) -> ConsulPlanner:
    return ConsulPlanner(store, OPTIONS, adopt_from=store.leftovers)


def step(plans: ConsulPlanner, store: TwoNodes, *, reread: bool = False) -> tuple[Plan, bool]:
    decision = plans.plan(store.world, Snapshot(synced=True), reread=reread)
    plans.applied(decision.plan, store.apply(decision.plan))
    return decision.plan, decision.follow_up


def test_the_planner_registers_ours_first_and_removes_consul_k8s_next_in_a_follow_up():
    web, db = service("web", "10.0.0.1", "10.0.0.2"), service("db", "10.0.1.1")
    store = TwoNodes(consul_k8s(web, db), world(web, db))
    plans = planner(store)

    first, follow_up = step(plans, store)
    assert len(first.create) == 3 and first.adopt == () and follow_up, \
        "ours are not in Consul yet: consul-k8s's stay, and a follow-up plan is asked for"
    second, follow_up = step(plans, store)
    assert second.create == () and len(second.adopt) == 3 and not follow_up, second
    assert store.theirs == {} and set(store.ours) == set(wanted(web, db)), "nothing left twice"
    third, _ = step(plans, store)
    assert third.empty and store.reads == {"ours": 1, "theirs": 1}, \
        "between resyncs both records are kept from the writes' outcomes"
    step(plans, store, reread=True)
    assert store.reads == {"ours": 2, "theirs": 2}, "a resync reads consul-k8s's node again"


def test_a_failed_write_keeps_consul_k8s_registrations_of_that_service_until_ours_lands():
    web, db = service("web", "10.0.0.1"), service("db", "10.0.1.1")
    store = TwoNodes(consul_k8s(web, db), world(web, db))
    web_id = next(iter(wanted(web)))
    store.fail = {web_id}
    plans = planner(store)
    step(plans, store)
    plan, _ = step(plans, store)
    assert [r.name for r in plan.adopt] == ["db"] and store.reads["theirs"] == 2, \
        "after a failed write both records are read again; only db is in place"
    assert web_id in store.theirs, "web's write failed: consul-k8s's web stays"
    store.fail = set()
    step(plans, store)
    plan, _ = step(plans, store)
    assert [r.name for r in plan.adopt] == ["web"] and store.theirs == {}


def test_a_registration_consul_rejects_keeps_consul_k8s_one_in_place():
    web = service("web", "10.0.0.1")
    store = TwoNodes(consul_k8s(web), world(web))
    plans = planner(store)
    decision = plans.plan(store.world, Snapshot(synced=True), reread=False)
    (reg,) = decision.plan.create
    assert decision.plan.adopt == ()
    plans.applied(decision.plan, ApplyResult(rejected={reg.service_id: "Permission denied"}))
    for _ in range(2):
        decision = plans.plan(store.world, Snapshot(synced=True), reread=False)
        assert decision.plan.empty and not decision.follow_up, \
            "held back, ours is not in place: consul-k8s's stays and no follow-up is asked for"
        plans.applied(decision.plan, ApplyResult())


def test_consul_k8s_registrations_of_services_not_synced_are_reported_once_and_never_deleted(caplog):
    web, other = service("web", "10.0.0.1"), service("metrics", "10.0.3.1", ns="monitoring")
    store = TwoNodes(consul_k8s(web, other), world(web))
    before = REGISTRY.get_sample_value("bridge_adopt_left_alone_total") or 0
    plans = planner(store)
    with caplog.at_level(logging.WARNING):
        for reread in (False, False, False, True, False):
            step(plans, store, reread=reread)
    assert [r.name for r in store.theirs.values()] == ["metrics"]
    lines = [r.getMessage() for r in caplog.records if "leaving consul-k8s's" in r.getMessage()]
    assert len(lines) == 1 and "metrics (namespace monitoring)" in lines[0], lines
    assert REGISTRY.get_sample_value("bridge_adopt_left_alone_total") == before + 1


def test_one_reconcile_pass_takes_over_with_every_ready_endpoint_passing_throughout():
    web = service("web", "10.0.0.1", "10.0.0.2")
    not_ready = service("db", "10.0.1.1", ready=False)
    store = TwoNodes(consul_k8s(web, not_ready), world(web, not_ready))

    class Kube:
        synced = True

        def snapshot(self) -> Snapshot:
            return store.world

    rec = Reconciler(kube=Kube(), consul=None, lanes=[Lane("consul", planner(store), cast(Any, store))],
                     trigger=Trigger(0.0, 0.0), stop=threading.Event(), resync_period=3600)
    assert rec.step() is True and rec.in_sync
    assert [line.split()[0] for line in store.log[:3]] == ["register"] * 3, store.log
    assert store.log[3:] == [f"deregister {ADOPT_NODE}/{sid}" for sid in sorted(consul_k8s(web, not_ready))], \
        "one pass: ours written first, then consul-k8s's gone (db's too: not ready, ours says so)"
    assert store.theirs == {}


# --- the sources: consul-k8s's copies are not answered twice -------------------------------------------


def health(node: str, sid: str, address: str, meta: dict[str, str]) -> dict[str, Any]:
    return {"Node": {"Node": node, "Address": "127.0.0.1"},
            "Service": {"ID": sid, "Service": "web", "Address": address, "Port": 8080, "Meta": meta},
            "Checks": [{"CheckID": f"shop/{sid}", "Status": "passing"}]}


THEIRS = {"external-source": "kubernetes", "external-k8s-ns": "shop"}
OURS = {**THEIRS, "external-k8s-name": "web", OWNER_META: CLUSTER}


def answered(*, keep_ours: bool, adopt_node: str, entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(node, address) of every instance the Consul source keeps of `entries`."""
    source = ConsulSource(cast(Any, None), our_node=OUR_NODE, cluster_id=CLUSTER, default_namespace="consul",
                          on_change=lambda: None, stop=threading.Event(), keep_ours=keep_ours,
                          adopt_node=adopt_node)
    source._store("web", entries)  # what its blocking loop delivers
    return sorted((i.node_name, i.address) for s in source.snapshot().services.values() for i in s.instances)


def test_the_central_bridge_does_not_pull_consul_k8s_copies_back_once_adopting():
    entries = [health(ADOPT_NODE, "web-1", "10.0.0.1", THEIRS), health(ADOPT_NODE, "web-stale", "10.0.0.7", THEIRS),
               health(ADOPT_NODE, "vm", "192.0.2.1", {}), health("vm-1", "web-vm", "192.0.2.2", {})]
    assert answered(keep_ours=False, adopt_node="", entries=entries) == [
        (ADOPT_NODE, "10.0.0.1"), (ADOPT_NODE, "10.0.0.7"), (ADOPT_NODE, "192.0.2.1"), ("vm-1", "192.0.2.2")]
    assert answered(keep_ours=False, adopt_node=ADOPT_NODE, entries=entries) == [
        (ADOPT_NODE, "192.0.2.1"), ("vm-1", "192.0.2.2")], \
        "consul-k8s's copies of this cluster's Services go; what others registered stays"


def test_a_sidecar_answers_an_instance_registered_on_both_nodes_once():
    entries = [health(ADOPT_NODE, "web-1", "10.0.0.1", THEIRS), health(ADOPT_NODE, "web-2", "10.0.0.2", THEIRS),
               health(OUR_NODE, "web-1", "10.0.0.1", OURS)]
    assert answered(keep_ours=True, adopt_node="", entries=entries) == [
        (ADOPT_NODE, "10.0.0.1"), (ADOPT_NODE, "10.0.0.2"), (OUR_NODE, "10.0.0.1")], "without the setting: twice"
    assert answered(keep_ours=True, adopt_node=ADOPT_NODE, entries=entries) == [
        (ADOPT_NODE, "10.0.0.2"), (OUR_NODE, "10.0.0.1")], \
        "the bridge's copy answers for web-1; web-2, not taken over yet, is still answered"


# --- the setting ----------------------------------------------------------------------------


def test_the_setting_is_off_by_default_and_names_consul_k8s_node_not_ours():
    assert config.build(environ={}).sync.adopt_node == ""
    settings = config.build(environ={"BRIDGE_SYNC_ADOPT_NODE": "k8s-sync", "BRIDGE_CLUSTER_ID": "east"})
    assert settings.sync.adopt_node == "k8s-sync"
    with pytest.raises(ConfigError, match="the bridge's own node") as own:
        config.build(environ={"BRIDGE_SYNC_ADOPT_NODE": "k8s-sync-east", "BRIDGE_CLUSTER_ID": "east"})
    assert own.value.key == "sync.adopt_node"
    with pytest.raises(ConfigError, match=r"cannot be combined with sync\.upsert_only"):
        config.build(environ={"BRIDGE_SYNC_ADOPT_NODE": "k8s-sync", "BRIDGE_SYNC_UPSERT_ONLY": "true"})
