"""`bridge explain`'s model: what answers under a name, what was left out and why."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

from bridge.catalog.expiry import expire
from bridge.catalog.merge import merge
from bridge.catalog.model import (
    Catalog,
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)
from bridge.catalog.plan import OWNER_META, Registration
from bridge.dns.answer import Answerer
from bridge.explain.model import SyncRecord, World, explain, summary_rows
from bridge.explain.text import render
from bridge.kube.source import NamespaceFilter

HERE = Origin(OriginKind.KUBERNETES, "here")
WEB = ServiceKey("shop", "web")
BILLING = ServiceKey("consul", "billing")


def pod(address: str, ready: bool = True, name: str = "") -> Instance:
    return Instance(address=address, ports=(Port("http", 80),), origin=HERE, ready=ready,
                    target=name or f"web-{address.rsplit('.', 1)[1]}", node_name="node-a")


def vm(address: str, node: str, ready: bool = True, sid: str = "", **meta: str) -> Instance:
    return Instance(address=address, ports=(Port("", 8080),), origin=Origin(OriginKind.CONSUL, node),
                    ready=ready, node_name=node, consul_id=sid or f"billing-{node}",
                    meta=tuple(sorted(meta.items())))


def headless(key: ServiceKey, *instances: Instance) -> Service:
    return Service(key=key, type=ServiceType.HEADLESS, ports=(Port("http", 80),), instances=instances)


def world(kube: list[Service], consul_entries: dict[str, tuple[Instance, ...]] | None = None,
          *, hide_dead: dict[str, float] | None = None, **fields: Any) -> World:
    """A World as the publisher and the sources would leave it."""
    entries = consul_entries or {}
    labels = fields.get("consul_labels") or {name: name.lower() for name in entries}
    grouped: dict[ServiceKey, list[Instance]] = {}
    for name, instances in entries.items():
        for instance in instances:
            meta = dict(instance.meta)
            key = ServiceKey(meta["external-k8s-ns"], meta["external-k8s-name"]) \
                if "external-k8s-ns" in meta else ServiceKey("consul", labels[name])
            grouped.setdefault(key, []).append(instance)
    kube_snap = Snapshot.of(kube, True)
    consul_snap = Snapshot.of([headless(k, *v) for k, v in grouped.items()], True)
    catalog = merge(kube_snap, consul_snap, local_wins=fields.get("local_wins", False), generation=1)
    merged = catalog.services
    if hide_dead:
        catalog = dataclasses.replace(catalog, services=expire(merged, hide_dead, 1000.0, 10).services)
    answerer = Answerer(catalog, "cluster.local", 30)
    defaults: dict[str, Any] = {
        "kube_services": {tuple(s.key): s for s in kube},
        "consul_entries": entries,
        "consul_labels": labels,
    }
    defaults.update(fields)
    return World(catalog=catalog, kube=kube_snap, consul=consul_snap, merged=merged,
                 changed_at=MappingProxyType({k: 1000.0 for k in catalog.services}),
                 answer=answerer.answer, **defaults)


def addresses(entries: list[dict[str, Any]]) -> set[str]:
    return {e["address"] for e in entries}


def test_a_service_name_shows_the_answer_and_each_pod_with_its_origin():
    w = world([headless(WEB, pod("10.0.0.1"), pod("10.0.0.2"))])
    out = explain(w, "web.shop.svc.cluster.local")
    assert out["known"] is True and out["service"] == {"namespace": "shop", "name": "web"}
    a = out["dns"]["responses"]["A"]
    assert a["rcode"] == "NOERROR"
    assert sorted(r.split("\t")[-1] for r in a["records"]) == ["10.0.0.1", "10.0.0.2"], a
    assert addresses(out["instances"]) == {"10.0.0.1", "10.0.0.2"}
    for entry in out["instances"]:
        assert entry["answered"] is True, entry
        assert entry["origin"]["kind"] == "kubernetes" and entry["origin"]["cluster"] == "here"
        assert entry["origin"]["pod"].startswith("web-"), entry
        assert "kubernetes.io/service-name=web" in entry["rule"], entry["rule"]
    assert out["left_out"] == []


def test_a_pod_not_ready_is_left_out_with_the_reason():
    w = world([headless(WEB, pod("10.0.0.1"), pod("10.0.0.2", ready=False))])
    out = explain(w, "shop/web")
    assert addresses(out["instances"]) == {"10.0.0.1"}
    [left] = out["left_out"]
    assert left["address"] == "10.0.0.2" and "not ready" in left["reason"], left
    text = render(out, now=1010.0)
    assert "10.0.0.2" in text and "reason: not ready" in text, text


def test_a_vm_failing_its_checks_is_left_out_naming_the_checks():
    entries = {"billing": (vm("192.0.2.1", "vm-1"), vm("192.0.2.2", "vm-2", ready=False))}
    notes = {"billing": {"billing-vm-2 on vm-2": "checks not passing: billing http (critical)"}}
    out = explain(world([], entries, consul_notes=notes), "billing")
    assert out["reading"] == "a Consul service name"
    assert out["service"] == {"namespace": "consul", "name": "billing"}
    [shown] = out["instances"]
    assert shown["origin"]["node"] == "vm-1" and shown["origin"]["consul_service"] == "billing", shown
    assert "sync.consul_namespace" in shown["rule"], shown["rule"]
    [left] = out["left_out"]
    assert left["address"] == "192.0.2.2" and "billing http (critical)" in left["reason"], left


def test_local_wins_and_dead_clusters_say_why_instances_were_hidden():
    east = vm("10.9.0.1", "k8s-sync-east", sid="web-east", **{
        "external-k8s-ns": "shop", "external-k8s-name": "web", OWNER_META: "east"})
    out = explain(world([headless(WEB, pod("10.0.0.1"))], {"web": (east,)}, local_wins=True), "shop/web")
    [left] = out["left_out"]
    assert left["address"] == "10.9.0.1" and "sync.local_wins" in left["reason"], left
    assert left["origin"]["cluster"] == "east"

    # Two of three instances alive: the dead cluster's one is hidden, and said so.
    out = explain(world([headless(WEB, pod("10.0.0.1"), pod("10.0.0.2"))], {"web": (east,)},
                        hide_dead={"east": 0.0}), "shop/web")
    assert addresses(out["instances"]) == {"10.0.0.1", "10.0.0.2"}
    [left] = out["left_out"]
    assert "cluster east is dead" in left["reason"], left


def test_a_name_in_a_namespace_dns_does_not_serve_says_which_setting():
    hidden = headless(ServiceKey("kube-system", "secret"), pod("10.0.0.9"))
    w = world([], kube_services={("kube-system", "secret"): hidden},
              dns_admits=NamespaceFilter(("*",), ("kube-*",)), dns_namespaces=(("*",), ("kube-*",)))
    out = explain(w, "secret.kube-system.svc.cluster.local")
    assert out["known"] is False
    assert out["dns"]["responses"]["A"]["rcode"] == "NXDOMAIN"
    why = "\n".join(out["why_not"])
    assert "dns.deny_namespaces=['kube-*']" in why and "exists" in why, why


def test_an_unknown_name_says_which_rules_would_have_matched_and_suggests_close_names():
    w = world([headless(WEB, pod("10.0.0.1"))], {"billing": (vm("192.0.2.1", "vm-1"),)})
    out = explain(w, "wbe.shop.svc.cluster.local")
    why = "\n".join(out["why_not"])
    assert "no Service shop/wbe" in why and "external-k8s-ns=shop" in why, why
    assert "similar names in this namespace: web" in why, why
    out = explain(w, "biling.consul.svc.cluster.local")
    why = "\n".join(out["why_not"])
    assert "DNS label 'biling' would answer here" in why and "none does" in why, why


def test_a_name_collision_is_explained():
    entries = {"Billing": (vm("192.0.2.5", "vm-5", sid="B"),), "billing": (vm("192.0.2.1", "vm-1"),)}
    w = world([], entries,
              consul_labels={"Billing": "billing-1a2b3c4d", "billing": "billing"},
              collisions=frozenset({("Billing", "billing", "billing-1a2b3c4d")}))
    out = explain(w, "billing.consul.svc.cluster.local")
    assert any("'Billing' answers as 'billing-1a2b3c4d'" in c for c in out["collisions"]), out["collisions"]


def test_owned_registrations_say_whether_consul_holds_them_as_wanted():
    meta = (("external-k8s-name", "web"), ("external-k8s-ns", "shop"))
    one = Registration("web-1", "web", "10.0.0.1", 80, meta=meta)
    two = Registration("web-2", "web", "10.0.0.2", 80, meta=meta)
    old = Registration("web-3", "web", "10.0.0.3", 80, meta=meta)
    sync = SyncRecord(True, {"web-1": one, "web-2": two},
                      {"web-1": one, "web-3": old, "web-2": dataclasses.replace(two, check_status="critical")})
    rejections = {"consul": {"registration web-2": ("Invalid", "bad meta")}}
    out = explain(world([headless(WEB, pod("10.0.0.1"))], sync=sync, rejections=rejections), "shop/web")
    states = {i["service_id"]: i["state"] for i in out["registrations"]["items"]}
    assert states == {"web-1": "in sync", "web-2": "rejected by Consul (Invalid): bad meta",
                      "web-3": "no longer wanted: to deregister"}, states
    assert out["registrations"]["state"] == "not in sync"
    standby = explain(world([headless(WEB, pod("10.0.0.1"))], sync=SyncRecord(False)), "shop/web")
    assert "does not write" in standby["registrations"]["state"]


def test_a_bare_name_is_looked_up_in_every_namespace():
    other = headless(ServiceKey("dev", "web"), pod("10.1.0.1"))
    w = world([headless(WEB, pod("10.0.0.1")), other])
    out = explain(w, "web")
    assert out["service"] is None and sorted(out["candidates"]) == ["dev/web", "shop/web"], out
    out = explain(world([other]), "web")
    assert out["service"] == {"namespace": "dev", "name": "web"} and out["known"]


def test_summary_rows_count_healthy_instances_and_name_origins():
    w = world([headless(WEB, pod("10.0.0.1"), pod("10.0.0.2", ready=False))],
              {"billing": (vm("192.0.2.1", "vm-1"),)})
    rows = {r["service"]: r for r in summary_rows(w, sorted(w.catalog.services))}
    assert (rows["web"]["healthy"], rows["web"]["total"]) == (1, 2)
    assert rows["web"]["origin"] == "kubernetes (here)"
    assert rows["billing"]["origin"] == "consul node vm-1"
    assert rows["web"]["last_change"] == 1000.0


def test_a_catalog_not_ready_says_dns_answers_servfail_for_names_it_lacks():
    w = world([headless(WEB, pod("10.0.0.1"))])
    w = dataclasses.replace(w, catalog=Catalog(w.catalog.services, ready=False),
                            answer=Answerer(Catalog(w.catalog.services, ready=False), "cluster.local", 30).answer)
    out = explain(w, "shop/nope")
    assert out["dns"]["responses"]["A"]["rcode"] == "SERVFAIL", "a name not known yet, before the first list"
    assert "not ready yet" in render(out)
