"""Stored records to the exact JSON shapes Consul's endpoints emit.

Field order follows the Go struct declarations (encoding/json keeps it), map keys are
sorted (encoding/json sorts them), `omitempty` fields are dropped when empty, and the
places where Consul's HTTP layer swaps nil for `[]`/`{}` do so here too. Each function
names the Go type whose JSON it reproduces.
"""

from __future__ import annotations

import base64
from typing import Any

from bridge.testing.consul.catalog import render_definition
from bridge.testing.consul.state import Record
from bridge.testing.consul.wire import sorted_map

_EMPTY_PROXY: Record = {"Mode": "", "MeshGateway": {}, "Expose": {}}


def node(n: Record) -> Record:
    """structs.Node."""
    return {
        "ID": n["ID"],
        "Node": n["Node"],
        "Address": n["Address"],
        "Datacenter": n["Datacenter"],
        "TaggedAddresses": sorted_map(n["TaggedAddresses"]),
        "Meta": sorted_map(n["Meta"]),
        "CreateIndex": n["CreateIndex"],
        "ModifyIndex": n["ModifyIndex"],
    }


def proxy(raw: Record) -> Record:
    """structs.ConnectProxyConfig as its MarshalJSON writes it (zero sub-structs omitted)."""
    if not raw:
        return dict(_EMPTY_PROXY)
    out: Record = {}
    for key in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress"):
        if raw.get(key):
            out[key] = raw[key]
    if raw.get("LocalServicePort"):
        out["LocalServicePort"] = raw["LocalServicePort"]
    out["Mode"] = raw.get("Mode", "")
    for key in ("Config", "Upstreams"):
        if raw.get(key):
            out[key] = raw[key]
    out["MeshGateway"] = raw.get("MeshGateway") or {}
    out["Expose"] = raw.get("Expose") or {}
    return out


def connect(raw: Record) -> Record:
    """structs.ServiceConnect: both fields are omitempty."""
    return {key: raw[key] for key in ("Native", "SidecarService") if raw.get(key)}


def _tagged(value: dict[str, Record] | None) -> dict[str, Record] | None:
    if not value:
        return None
    return {k: {"Address": v.get("Address", ""), "Port": v.get("Port", 0)} for k, v in sorted(value.items())}


def catalog_service(svc: Record, n: Record) -> Record:
    """structs.ServiceNode as /v1/catalog/service/:name returns it (tags/meta never null)."""
    out: Record = {
        "ID": n["ID"],
        "Node": n["Node"],
        "Address": n["Address"],
        "Datacenter": n["Datacenter"],
        "TaggedAddresses": sorted_map(n["TaggedAddresses"]),
        "NodeMeta": sorted_map(n["Meta"]),
        "ServiceKind": svc["ServiceKind"],
        "ServiceID": svc["ServiceID"],
        "ServiceName": svc["ServiceName"],
        "ServiceTags": list(svc["ServiceTags"] or []),
        "ServiceAddress": svc["ServiceAddress"],
    }
    tagged = _tagged(svc["ServiceTaggedAddresses"])
    if tagged:
        out["ServiceTaggedAddresses"] = tagged
    out.update(
        {
            "ServiceWeights": dict(svc["ServiceWeights"]),
            # PartialClone always allocates a fresh map, so a nil meta prints as {}.
            "ServiceMeta": sorted_map(svc["ServiceMeta"] or {}),
            "ServicePort": svc["ServicePort"],
            "ServiceSocketPath": svc["ServiceSocketPath"],
            "ServiceEnableTagOverride": svc["ServiceEnableTagOverride"],
            "ServiceProxy": proxy(svc["ServiceProxy"]),
            "ServiceConnect": connect(svc["ServiceConnect"]),
            "ServiceLocality": svc["ServiceLocality"],
            "CreateIndex": svc["CreateIndex"],
            "ModifyIndex": svc["ModifyIndex"],
        }
    )
    return out


def node_service(svc: Record, *, tags_never_null: bool = True) -> Record:
    """structs.NodeService (health entries, /catalog/node, /catalog/node-services, txn)."""
    out: Record = {}
    if svc["ServiceKind"]:
        out["Kind"] = svc["ServiceKind"]
    tags = svc["ServiceTags"]
    out.update(
        {
            "ID": svc["ServiceID"],
            "Service": svc["ServiceName"],
            "Tags": list(tags) if tags is not None else ([] if tags_never_null else None),
            "Address": svc["ServiceAddress"],
        }
    )
    tagged = _tagged(svc["ServiceTaggedAddresses"])
    if tagged:
        out["TaggedAddresses"] = tagged
    out["Meta"] = sorted_map(svc["ServiceMeta"])
    if svc["ServicePort"]:
        out["Port"] = svc["ServicePort"]
    if svc["ServiceSocketPath"]:
        out["SocketPath"] = svc["ServiceSocketPath"]
    out["Weights"] = dict(svc["ServiceWeights"])
    out["EnableTagOverride"] = svc["ServiceEnableTagOverride"]
    if svc["ServiceLocality"]:
        out["Locality"] = svc["ServiceLocality"]
    out.update(
        {
            "Proxy": proxy(svc["ServiceProxy"]),
            "Connect": connect(svc["ServiceConnect"]),
            "PeerName": "",
            "CreateIndex": svc["CreateIndex"],
            "ModifyIndex": svc["ModifyIndex"],
        }
    )
    return out


def health_check(c: Record, *, tags_never_null: bool = True) -> Record:
    """structs.HealthCheck."""
    tags = c["ServiceTags"]
    return {
        "Node": c["Node"],
        "CheckID": c["CheckID"],
        "Name": c["Name"],
        "Status": c["Status"],
        "Notes": c["Notes"],
        "Output": c["Output"],
        "ServiceID": c["ServiceID"],
        "ServiceName": c["ServiceName"],
        "ServiceTags": list(tags) if tags is not None else ([] if tags_never_null else None),
        "Type": c["Type"],
        "Interval": c["Interval"],
        "Timeout": c["Timeout"],
        "ExposedPort": c["ExposedPort"],
        "Definition": render_definition(c["Definition"]),
        "CreateIndex": c["CreateIndex"],
        "ModifyIndex": c["ModifyIndex"],
    }


def service_entry(n: Record, svc: Record, checks: list[Record]) -> Record:
    """structs.CheckServiceNode as /v1/health/service returns it."""
    return {"Node": node(n), "Service": node_service(svc), "Checks": [health_check(c) for c in checks]}


def agent_service(svc: Record, datacenter: str) -> Record:
    """api.AgentService as the agent endpoints build it (tags/meta never null)."""
    out: Record = {}
    if svc["ServiceKind"]:
        out["Kind"] = svc["ServiceKind"]
    out.update(
        {
            "ID": svc["ServiceID"],
            "Service": svc["ServiceName"],
            "Tags": list(svc["ServiceTags"] or []),
            "Meta": sorted_map(svc["ServiceMeta"] or {}),
            "Port": svc["ServicePort"],
            "Address": svc["ServiceAddress"],
        }
    )
    if svc["ServiceSocketPath"]:
        out["SocketPath"] = svc["ServiceSocketPath"]
    tagged = _tagged(svc["ServiceTaggedAddresses"])
    if tagged:
        out["TaggedAddresses"] = tagged
    out["Weights"] = dict(svc["ServiceWeights"])
    out["EnableTagOverride"] = svc["ServiceEnableTagOverride"]
    if svc["ServiceKind"] and svc["ServiceProxy"]:
        out["Proxy"] = proxy(svc["ServiceProxy"])
    if svc["ServiceConnect"].get("Native"):
        out["Connect"] = {"Native": True}
    out["Datacenter"] = datacenter
    return out


def kv_entry(e: Record, *, with_value: bool = True) -> Record:
    """structs.DirEntry (Session is omitempty; Value is base64 or null)."""
    value = e["Value"] if with_value else None
    out: Record = {
        "LockIndex": e["LockIndex"],
        "Key": e["Key"],
        "Flags": e["Flags"],
        "Value": base64.b64encode(value).decode("ascii") if value is not None else None,
    }
    if e["Session"]:
        out["Session"] = e["Session"]
    out["CreateIndex"] = e["CreateIndex"]
    out["ModifyIndex"] = e["ModifyIndex"]
    return out


def session(s: Record) -> Record:
    """structs.Session (LockDelay in nanoseconds, deprecated Checks omitempty)."""
    out: Record = {
        "ID": s["ID"],
        "Name": s["Name"],
        "Node": s["Node"],
        "LockDelay": s["LockDelay"],
        "Behavior": s["Behavior"],
        "TTL": s["TTL"],
        "NodeChecks": s["NodeChecks"],
        "ServiceChecks": s["ServiceChecks"],
    }
    if s.get("Checks"):
        out["Checks"] = s["Checks"]
    out["CreateIndex"] = s["CreateIndex"]
    out["ModifyIndex"] = s["ModifyIndex"]
    return out


def services_summary(services: list[Record]) -> dict[str, Any]:
    """/v1/catalog/services: name -> de-duplicated tags (sorted; Consul's order is random)."""
    rollup: dict[str, set[str]] = {}
    for svc in services:
        rollup.setdefault(svc["ServiceName"], set()).update(svc["ServiceTags"] or [])
    return {name: sorted(rollup[name]) for name in sorted(rollup)}
