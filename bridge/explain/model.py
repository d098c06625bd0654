"""Why a name answers what it answers: one explanation, as plain JSON-able data.

PURE: no I/O. `explain(world, text)` reads a `World` (the published catalog and what it was
made from, the filters, the sync's record, gathered by `state.py`) and says, for a DNS name,
a Consul service name or `NAMESPACE/SERVICE`: the records DNS answers now (from the DNS
answer logic, `World.answer`); each instance with its origin, health and the rule that put
it under this name; each instance left out and why; the Consul registrations this bridge
owns for it and whether Consul holds them as wanted; when each source last changed. For a
name the bridge does not know, which rule would have placed something there and why
nothing is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.catalog.expiry import owner_of
from bridge.catalog.model import Catalog, Instance, OriginKind, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.naming import NAMESPACE_META, NAMESPACE_OVERRIDE_META, consul_service_key, dns_label
from bridge.catalog.plan import Registration
from bridge.dns.query import Kind, parse, zone_labels
from bridge.dns.records import AAAA, CNAME, PTR, SRV, TXT, A, NotOurs, QType, Record, Response

JSON = dict[str, Any]
MANAGED_BY = ("app.kubernetes.io/managed-by", "bridge")


@dataclass(frozen=True)
class SourceTimes:
    """One source as the operator sees it."""

    name: str
    synced: bool
    last_event: float  # wall clock; 0.0: never
    last_change: float
    objects: int = 0


@dataclass(frozen=True)
class SyncRecord:
    """The Consul sink's last plan: what it wanted, and what Consul held by its record."""

    writer: bool  # this replica writes (it leads)
    wanted: Mapping[str, Registration] = field(default_factory=dict)
    held: Mapping[str, Registration] = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    """Everything an explanation reads: immutable values and read-only views."""

    catalog: Catalog
    kube: Snapshot  # DNS's view of Kubernetes
    consul: Snapshot
    merged: Mapping[ServiceKey, Service]  # before the dead-cluster filter
    changed_at: Mapping[ServiceKey, float]
    answer: Callable[[str, int], Response | NotOurs]
    zone: str = "cluster.local"
    cluster_id: str = ""
    kubernetes: bool = True
    kube_services: Mapping[tuple[str, str], Service] = field(default_factory=dict)  # every one cached
    dns_admits: Callable[[str], bool] = lambda namespace: True
    dns_namespaces: tuple[tuple[str, ...], tuple[str, ...]] = (("*",), ())
    consul_entries: Mapping[str, tuple[Instance, ...]] = field(default_factory=dict)
    consul_labels: Mapping[str, str] = field(default_factory=dict)
    consul_notes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    collisions: frozenset[tuple[str, str, str]] = frozenset()
    consul_namespace: str = "consul"
    local_wins: bool = False
    sync: SyncRecord | None = None
    rejections: Mapping[str, Mapping[str, tuple[str, str]]] = field(default_factory=dict)
    sources: tuple[SourceTimes, ...] = ()


def _data(record: Record) -> str:
    data = record.data
    if isinstance(data, A | AAAA):
        return data.address
    if isinstance(data, SRV):
        return f"{data.priority} {data.weight} {data.port} {'.'.join(data.target)}."
    if isinstance(data, CNAME | PTR):
        return ".".join(data.target) + "."
    if isinstance(data, TXT):
        return " ".join(f'"{s}"' for s in data.strings)
    return str(data)


def record_text(record: Record) -> str:
    """A record as `dig` prints it."""
    return f"{'.'.join(record.name)}.\t{record.ttl}\tIN\t{record.rtype.name}\t{_data(record)}"


def _answers(world: World, qname: str) -> JSON:
    """The response DNS gives now to A, AAAA and SRV on `qname`."""
    out: JSON = {"name": qname.rstrip(".") + ".", "responses": {}}
    for qtype in (QType.A, QType.AAAA, QType.SRV):
        response = world.answer(qname, qtype)
        if isinstance(response, NotOurs):
            out["not_ours"] = True
            out["responses"] = {}
            return out
        out["responses"][qtype.name] = {"rcode": response.rcode.name,
                                        "records": [record_text(r) for r in response.answer]}
    return out


def _answered_addresses(answers: JSON) -> set[str]:
    found = set()
    for name in ("A", "AAAA"):
        for line in answers["responses"].get(name, {}).get("records", []):
            parts = line.split("\t")
            if parts[3] in ("A", "AAAA"):
                found.add(parts[4])
    return found


# --- reading the name --------------------------------------------------------------------

@dataclass
class _Reading:
    key: ServiceKey | None = None
    qname: str = ""  # the DNS name to ask
    how: str = ""
    notes: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)


def _read(world: World, text: str) -> _Reading:
    """Which service `text` names, and by which reading."""
    text = text.strip().rstrip(".")
    zone = world.zone.strip(".")
    reading = _Reading()
    if "/" in text and "." not in text.split("/", 1)[0]:
        namespace, _, name = text.partition("/")
        reading.key = ServiceKey(namespace.lower(), name.lower())
        reading.how = "NAMESPACE/SERVICE"
    elif text.lower().endswith("." + zone) or text.lower() == zone:
        query = parse(text, zone_labels(zone))
        if query.kind in (Kind.SERVICE, Kind.ENDPOINT, Kind.PORT, Kind.PROTOCOL):
            reading.key = ServiceKey(query.namespace, query.service)
            reading.qname = text
            reading.how = {Kind.SERVICE: "<service>.<namespace>.svc.<zone>",
                           Kind.ENDPOINT: "<endpoint>.<service>.<namespace>.svc.<zone> (one instance)",
                           Kind.PORT: "_<port>._<proto>.<service>.<namespace>.svc.<zone> (SRV)",
                           Kind.PROTOCOL: "_<proto>.<service>.<namespace>.svc.<zone>"}[query.kind]
        else:
            reading.qname = text
            reading.how = f"a {query.kind.value} name of the cluster zone, not one service's"
            if query.kind is Kind.NAMESPACE:
                reading.notes.append(f"namespace {query.namespace}: "
                                     + ("has services in the catalog" if query.namespace
                                        in world.catalog.namespaces else "no service in the catalog"))
        return _fill(world, reading)
    elif text.lower().endswith(".service.consul") or text in world.consul_entries:
        consul_name = text[:-len(".service.consul")] if text.lower().endswith(".service.consul") else text
        found = [n for n in world.consul_entries if n == consul_name] or \
            [n for n in world.consul_entries if n.lower() == consul_name.lower()]
        reading.how = "a Consul service name"
        if not found:
            reading.notes.append(f"Consul has no service named {consul_name!r} (that this bridge reads)")
            reading.key = ServiceKey(world.consul_namespace, dns_label(consul_name))
        else:
            name = found[0]
            label = world.consul_labels.get(name) or dns_label(name)
            keys = sorted({consul_service_key(dict(i.meta), label, world.consul_namespace)
                           for i in world.consul_entries[name]}) or \
                [ServiceKey(world.consul_namespace, label)]
            reading.key = keys[0]
            if len(keys) > 1:
                reading.candidates = [str(k) for k in keys]
                reading.notes.append(f"its instances answer under {len(keys)} names: "
                                     + ", ".join(map(str, keys)))
    elif text:
        names = sorted(k for k in world.catalog.services if k.name == text.lower())
        reading.how = "a bare service name, looked up in every namespace"
        if len(names) == 1:
            reading.key = names[0]
        else:
            reading.candidates = [str(k) for k in names]
            reading.notes.append("no service of that name in any namespace" if not names else
                                 "several namespaces have it: name one as NAMESPACE/SERVICE")
    return _fill(world, reading)


def _fill(world: World, reading: _Reading) -> _Reading:
    if reading.key is not None and not reading.qname:
        reading.qname = f"{reading.key.name}.{reading.key.namespace}.svc.{world.zone.strip('.')}"
    return reading


# --- instances ---------------------------------------------------------------------------

def _ports(instance: Instance) -> list[str]:
    return [f"{p.name + ' ' if p.name else ''}{p.port}/{p.protocol}" for p in instance.ports]


Names = Mapping[Instance, str]  # a Consul instance -> the Consul service name it was read under


def _names_for(world: World, key: ServiceKey) -> dict[Instance, str]:
    """The Consul name of every Consul instance that answers under `key`."""
    out = {}
    for name, instances in world.consul_entries.items():
        label = world.consul_labels.get(name) or dns_label(name)
        for instance in instances:
            if consul_service_key(dict(instance.meta), label, world.consul_namespace) == key:
                out[instance] = name
    return out


def _origin(names: Names, instance: Instance) -> JSON:
    origin = instance.origin
    if origin.kind is OriginKind.KUBERNETES:
        what = f"EndpointSlice of this cluster ({origin.source})"
        if instance.target:
            what += f", pod {instance.target}"
        if instance.node_name:
            what += f" on node {instance.node_name}"
        return {"kind": "kubernetes", "cluster": origin.source, "pod": instance.target,
                "node": instance.node_name, "describe": what}
    owner = owner_of(instance)
    name = names.get(instance, "")
    out = {"kind": "consul", "node": origin.source, "service_id": instance.consul_id,
           "consul_service": name}
    if owner:
        out["cluster"] = owner
        out["describe"] = (f"cluster {owner} (its bridge registered it in Consul as {name!r}, "
                           f"node {origin.source})")
    else:
        out["describe"] = f"Consul node {origin.source} (service {name!r}, ID {instance.consul_id})"
    return out


def _rule(world: World, names: Names, key: ServiceKey, instance: Instance) -> str:
    if instance.origin.kind is OriginKind.KUBERNETES:
        return (f"an endpoint of Service {key}: its EndpointSlices carry "
                f"kubernetes.io/service-name={key.name}")
    meta = dict(instance.meta)
    name = names.get(instance) or "?"
    if meta.get(NAMESPACE_META):
        return (f"Consul meta external-k8s-ns={meta[NAMESPACE_META]}"
                + (f", external-k8s-name={meta['external-k8s-name']}" if meta.get("external-k8s-name") else "")
                + ": another cluster's Service answers under its own namespace and name")
    label = world.consul_labels.get(name, dns_label(name))
    where = (f"Consul meta k8s-namespace={meta[NAMESPACE_OVERRIDE_META]}"
             if meta.get(NAMESPACE_OVERRIDE_META)
             else f"no namespace in its meta: sync.consul_namespace ({world.consul_namespace})")
    named = f"Consul name {name!r} as DNS label {label!r}" if label != name else f"Consul name {name!r}"
    return f"{named}; {where}"


def _unhealthy(world: World, names: Names, instance: Instance) -> str:
    if instance.origin.kind is OriginKind.KUBERNETES:
        return "not ready: its EndpointSlice condition ready is false"
    name = names.get(instance, "")
    note = world.consul_notes.get(name, {}).get(f"{instance.consul_id} on {instance.origin.source}")
    return f"failing health checks: {note}" if note else "failing health checks"


def _instance(world: World, names: Names, key: ServiceKey, instance: Instance, answered: bool | str
              ) -> JSON:
    return {"address": instance.address, "ports": _ports(instance), "origin": _origin(names, instance),
            "healthy": instance.ready, "answered": answered, "rule": _rule(world, names, key, instance)}


def _instances(world: World, key: ServiceKey, service: Service | None, answers: JSON
               ) -> tuple[list[JSON], list[JSON]]:
    shown: list[JSON] = []
    left_out: list[JSON] = []
    names = _names_for(world, key)
    addresses = _answered_addresses(answers)
    behind_ip = service is not None and service.type is not ServiceType.HEADLESS and bool(service.cluster_ips)
    for instance in service.instances if service else ():
        if behind_ip:
            # A ClusterIP Service answers its virtual IP: the endpoints are behind it.
            entry = _instance(world, names, key, instance, "through the cluster IP")
            shown.append(entry)
            if not instance.ready:
                left_out.append({**entry, "reason": _unhealthy(world, names, instance) + " (the proxy skips it)"})
        elif instance.address in addresses:
            shown.append(_instance(world, names, key, instance, True))
        else:
            entry = _instance(world, names, key, instance, False)
            reason = _unhealthy(world, names, instance) if not instance.ready else \
                "not in DNS's answer (see the records above)"
            left_out.append({**entry, "reason": reason})
    in_catalog = {i.address for i in service.instances} if service else set()
    merged = world.merged.get(key)
    for instance in merged.instances if merged else ():
        if instance.address not in in_catalog:
            left_out.append({**_instance(world, names, key, instance, False), "reason":
                             f"hidden: cluster {owner_of(instance) or '?'} is dead (its claim in Consul "
                             "lapsed, sync.expire_dead_clusters_after)"})
    local = world.kube.services.get(key)
    remote = world.consul.services.get(key)
    merged_addresses = {i.address for i in merged.instances} if merged else set()
    for instance in remote.instances if remote else ():
        if instance.address in merged_addresses:
            continue
        reason = ("hidden by sync.local_wins: this cluster's Service of the same name has instances"
                  if world.local_wins and local is not None and local.instances else
                  "same address as an endpoint of this cluster's Service (that one is kept)")
        left_out.append({**_instance(world, names, key, instance, False), "reason": reason})
    for name, notes in world.consul_notes.items():
        if _consul_key(world, name) != key:
            continue
        for where, note in notes.items():
            if note.startswith("skipped"):
                left_out.append({"address": "", "origin": {"kind": "consul", "describe": f"Consul {name!r}: {where}"},
                                 "healthy": False, "answered": False, "reason": note})
    return shown, left_out


def _consul_key(world: World, name: str) -> ServiceKey:
    label = world.consul_labels.get(name) or dns_label(name)
    instances = world.consul_entries.get(name) or ()
    return consul_service_key(dict(instances[0].meta), label, world.consul_namespace) if instances \
        else ServiceKey(world.consul_namespace, label)


# --- the sync ----------------------------------------------------------------------------

def _is_for(reg: Registration, key: ServiceKey) -> bool:
    meta = dict(reg.meta)
    return meta.get("external-k8s-ns") == key.namespace and meta.get("external-k8s-name") == key.name


def _registrations(world: World, key: ServiceKey) -> JSON | None:
    sync = world.sync
    if sync is None:
        return None
    refused = world.rejections.get("consul", {})
    items = []
    wanted = [reg for reg in sync.wanted.values() if _is_for(reg, key)]
    held = {sid: reg for sid, reg in sync.held.items() if _is_for(reg, key)}
    for reg in sorted(wanted):
        found = held.get(reg.service_id)
        rejected = refused.get(f"registration {reg.service_id}")
        if rejected is not None:
            state = f"rejected by Consul ({rejected[0]}): {rejected[1]}"
        elif found is None:
            state = "not in Consul yet: to register"
        elif found == reg:
            state = "in sync"
        elif found.same_service(reg):
            state = f"check to update: Consul has {found.check_status or 'none'}, wanted {reg.check_status}"
        else:
            state = "to update: Consul holds other values"
        items.append({"service_id": reg.service_id, "name": reg.name, "address": reg.address,
                      "port": reg.port, "check": reg.check_status or "none", "state": state})
    for sid, reg in sorted(held.items()):
        if sid not in sync.wanted:
            items.append({"service_id": sid, "name": reg.name, "address": reg.address, "port": reg.port,
                          "check": reg.check_status or "none", "state": "no longer wanted: to deregister"})
    refusals = [f"{reason}: {message}" for item, (reason, message) in refused.items()
                if item.startswith(f"Service {key}:")]
    kube_refused = [f"{item}: {reason}: {message}" for item, (reason, message) in
                    world.rejections.get("kubernetes", {}).items()
                    if item.endswith(f" {key}") or f" {key.namespace}/{key.name}-" in item]
    in_sync = all(i["state"] == "in sync" for i in items)
    if not sync.writer:
        state = "this replica does not write (another replica leads); its record may be old"
    elif not items and not refusals:
        state = "none: nothing of this name is synced to Consul by this bridge"
    else:
        state = "in sync" if in_sync and not refusals else "not in sync"
    return {"writer": sync.writer, "state": state,
            "items": items, "refused": refusals, "kubernetes_refused": kube_refused}


# --- a name nobody has -------------------------------------------------------------------

def _why_not(world: World, key: ServiceKey) -> list[str]:
    lines = []
    namespace, name = key
    if namespace not in world.catalog.namespaces:
        lines.append(f"namespace {namespace!r} has no service in the catalog: DNS answers NXDOMAIN "
                     "for every name in it")
    if world.kubernetes:
        raw = world.kube_services.get((namespace, name))
        allow, deny = world.dns_namespaces
        if raw is None:
            lines.append(f"Kubernetes: no Service {namespace}/{name} ({len(world.kube_services)} Services cached)")
        elif not world.dns_admits(namespace):
            lines.append(f"Kubernetes: Service {namespace}/{name} exists, but DNS does not answer namespace "
                         f"{namespace!r} (dns.namespaces={list(allow)}, dns.deny_namespaces={list(deny)})")
        elif raw.label(MANAGED_BY[0]) == MANAGED_BY[1]:
            lines.append(f"Kubernetes: Service {namespace}/{name} is one this bridge materialised from "
                         "Consul; it answers from Consul, not from it")
    else:
        lines.append("Kubernetes: not watched (kubernetes.enabled is false); this cluster's Services "
                     "answer from what the central bridge registered in Consul")
    same_label = [n for n in world.consul_entries if (world.consul_labels.get(n) or dns_label(n)) == name]
    if namespace == world.consul_namespace:
        lines.append(f"Consul: a service whose name makes the DNS label {name!r} would answer here "
                     f"(sync.consul_namespace={world.consul_namespace}); "
                     + (f"{', '.join(map(repr, same_label))} do, but under another namespace by their meta"
                        if same_label else "none does"))
    else:
        lines.append(f"Consul: a service answers in namespace {namespace!r} only with meta "
                     f"external-k8s-ns={namespace} (another cluster's bridge) or k8s-namespace={namespace}"
                     + ("; " + ", ".join(f"{n!r} answers as {_consul_key(world, n)}" for n in same_label)
                        if same_label else "; none has it"))
    for loser, winner, label in sorted(world.collisions):
        if dns_label(loser) == name:
            lines.append(f"name collision: Consul services {winner!r} and {loser!r} both make the label "
                         f"{dns_label(loser)!r}; {winner!r} keeps it, {loser!r} answers as {label!r}")
    close = difflib.get_close_matches(name, sorted({k.name for k in world.catalog.services
                                                    if k.namespace == namespace}), n=3)
    if close:
        lines.append("similar names in this namespace: " + ", ".join(close))
    return lines


def _collisions(world: World, key: ServiceKey) -> list[str]:
    out = []
    for loser, winner, label in sorted(world.collisions):
        if key.name in (label, dns_label(winner)):
            out.append(f"Consul services {winner!r} and {loser!r} both make the DNS label "
                       f"{dns_label(winner)!r}: {winner!r} (first in sort order) keeps it, "
                       f"{loser!r} answers as {label!r}")
    return out


def _times(world: World, key: ServiceKey | None) -> JSON:
    at = world.changed_at.get(key) if key is not None else None
    return {"service": at or None,
            "sources": [{"source": s.name, "last_change": s.last_change or None,
                         "last_event": s.last_event or None} for s in world.sources]}


def explain(world: World, text: str) -> JSON:
    """The explanation of `text` (a DNS name, a Consul service name or NAMESPACE/SERVICE)."""
    reading = _read(world, text)
    out: JSON = {"query": text, "reading": reading.how, "notes": reading.notes,
                 "candidates": reading.candidates, "ready": world.catalog.ready,
                 "generation": world.catalog.generation}
    if reading.qname:
        out["dns"] = _answers(world, reading.qname)
    key = reading.key
    out["service"] = None if key is None else {"namespace": key.namespace, "name": key.name}
    service = world.catalog.services.get(key) if key is not None else None
    out["known"] = service is not None
    if key is None:
        out["instances"], out["left_out"] = [], []
        out["why_not"] = reading.notes or ["the name is not one the bridge reads"]
        out["last_change"] = _times(world, None)
        return out
    answers = out.get("dns") or {"responses": {}}
    out["instances"], out["left_out"] = _instances(world, key, service, answers)
    if service is not None:
        out["type"] = service.type.value
        out["cluster_ips"] = list(service.cluster_ips)
        if service.external_name:
            out["external_name"] = service.external_name
    else:
        out["why_not"] = _why_not(world, key)
    out["collisions"] = _collisions(world, key)
    out["registrations"] = _registrations(world, key)
    out["last_change"] = _times(world, key)
    return out


def summary_rows(world: World, keys: Iterable[ServiceKey]) -> list[JSON]:
    """One row per service for the status page's table."""
    rows = []
    for key in keys:
        service = world.catalog.services[key]
        origins: dict[str, None] = {}
        for instance in service.instances:
            if instance.origin.kind is OriginKind.KUBERNETES:
                origins[f"kubernetes ({instance.origin.source})"] = None
            else:
                owner = owner_of(instance)
                origins[f"cluster {owner}" if owner else f"consul node {instance.origin.source}"] = None
        if not service.instances:
            origins["kubernetes" if key in world.kube.services else "consul"] = None
        rows.append({"namespace": key.namespace, "service": key.name, "type": service.type.value,
                     "origin": ", ".join(origins), "healthy": sum(i.ready for i in service.instances),
                     "total": len(service.instances), "last_change": world.changed_at.get(key)})
    return rows
