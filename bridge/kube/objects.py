"""Raw Kubernetes JSON -> the bridge's values, and the join of Services with their slices.

PURE: no I/O. Everything a watch delivers passes through here once; a malformed object
raises `BadObject` with a reason so the caller can log and count the skip instead of
crashing a loop. Nothing past this module sees a raw Kubernetes dict.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.catalog.model import (
    IngressRoute,
    Instance,
    Node,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    frozen_map,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "bridge"


class BadObject(ValueError):
    """An API object the bridge cannot use; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    address: str
    ready: bool
    serving: bool
    terminating: bool
    hostname: str = ""
    node_name: str = ""
    zone: str = ""
    target: str = ""


@dataclass(frozen=True, slots=True)
class Slice:
    """One EndpointSlice, reduced to what the bridge uses."""

    namespace: str
    name: str
    service: str
    address_type: str
    ports: tuple[Port, ...]
    endpoints: tuple[SliceEndpoint, ...]
    labels: tuple[tuple[str, str], ...] = ()


def object_key(raw: Mapping[str, Any]) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise BadObject("object is not a JSON object")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise BadObject("metadata is not an object")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject("metadata.name is missing")
    return str(meta.get("namespace") or ""), name


def _str_map(value: Any, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadObject(f"{where} is not a mapping")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _port(raw: Any, where: str, *, number_key: str = "port", required: bool = True) -> Port | None:
    if not isinstance(raw, dict):
        raise BadObject(f"{where} is not an object")
    number = raw.get(number_key)
    if number is None and not required:
        return None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
        raise BadObject(f"{where}.{number_key} is not a port number: {number!r}")
    name = raw.get("name") or ""
    protocol = raw.get("protocol") or "TCP"
    node_port = raw.get("nodePort") or 0
    if isinstance(node_port, bool) or not isinstance(node_port, int) or not 0 <= node_port < 65536:
        raise BadObject(f"{where}.nodePort is not a port number: {node_port!r}")
    return Port(str(name), number, str(protocol), node_port)


def service_from_raw(raw: Mapping[str, Any]) -> Service:
    """A core/v1 Service as a catalog Service without instances (slices add those)."""
    namespace, name = object_key(raw)
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    if not isinstance(spec, dict):
        raise BadObject("spec is not an object")
    kind = spec.get("type") or "ClusterIP"
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise BadObject(f"spec.type is unknown: {kind!r}")
    cluster_ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
    headless = cluster_ips == ["None"] or spec.get("clusterIP") == "None"
    if kind == "ExternalName":
        stype = ServiceType.EXTERNAL_NAME
    elif headless:
        stype = ServiceType.HEADLESS
    elif kind == "NodePort":
        stype = ServiceType.NODE_PORT
    elif kind == "LoadBalancer":
        stype = ServiceType.LOAD_BALANCER
    else:
        stype = ServiceType.CLUSTER_IP
    ips: list[str] = []
    if not headless:
        for ip in cluster_ips:
            try:
                ips.append(_ip(ip))
            except ValueError:
                raise BadObject(f"spec.clusterIPs has a bad address: {ip!r}") from None
    raw_ports = spec.get("ports") or []
    if not isinstance(raw_ports, list):
        raise BadObject("spec.ports is not a list")
    ports = tuple(p for i, item in enumerate(raw_ports)
                  if (p := _port(item, f"spec.ports[{i}]")) is not None)
    return Service(
        key=ServiceKey(namespace, name),
        type=stype,
        ports=ports,
        cluster_ips=tuple(ips),
        external_name=str(spec.get("externalName") or "") if stype is ServiceType.EXTERNAL_NAME
        else "",
        labels=frozen_map(_str_map(meta.get("labels"), "metadata.labels")),
        annotations=frozen_map(_str_map(meta.get("annotations"), "metadata.annotations")),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        external_ips=tuple(_ips(spec.get("externalIPs"), "spec.externalIPs")),
        selector=frozen_map(_str_map(spec.get("selector"), "spec.selector")),
        load_balancer_ingress=_ingress(raw.get("status")),
    )


def _ips(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadObject(f"{where} is not a list")
    try:
        return [_ip(ip) for ip in value]
    except ValueError as exc:
        raise BadObject(f"{where} has a bad address: {exc.args[0]!r}") from None


def _ingress(status: Any) -> tuple[str, ...]:
    """status.loadBalancer.ingress as addresses: the IP, or the hostname where there is none,
    de-duplicated in order (as consul-k8s registers them)."""
    if not isinstance(status, dict):
        return ()
    lb = status.get("loadBalancer") or {}
    entries = lb.get("ingress") or [] if isinstance(lb, dict) else []
    if not isinstance(entries, list):
        raise BadObject("status.loadBalancer.ingress is not a list")
    out: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadObject(f"status.loadBalancer.ingress[{i}] is not an object")
        if entry.get("ip"):
            try:
                address = _ip(entry["ip"])
            except ValueError:
                raise BadObject(f"status.loadBalancer.ingress[{i}].ip is not an IP") from None
        else:
            address = str(entry.get("hostname") or "")
        if address and address not in out:
            out.append(address)
    return tuple(out)


def node_from_raw(raw: Mapping[str, Any]) -> Node:
    """A core/v1 Node reduced to its addresses (for NodePort registrations) and zone."""
    _, name = object_key(raw)
    status = raw.get("status") or {}
    addresses = status.get("addresses") or [] if isinstance(status, dict) else []
    if not isinstance(addresses, list):
        raise BadObject("status.addresses is not a list")
    internal: list[str] = []
    external: list[str] = []
    for entry in addresses:
        if not isinstance(entry, dict):
            continue
        kind, address = entry.get("type"), entry.get("address")
        try:
            address = _ip(address)
        except ValueError:
            continue  # Hostname and InternalDNS entries are names, not addresses
        if kind == "InternalIP":
            internal.append(address)
        elif kind == "ExternalIP":
            external.append(address)
    labels = _str_map((raw.get("metadata") or {}).get("labels"), "metadata.labels")
    return Node(name, tuple(internal), tuple(external), labels.get(ZONE_LABEL, ""))


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadObject(f"{where} is not a list")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadObject(f"{where} is not an object")
    return value


def ingress_from_raw(raw: Mapping[str, Any]) -> tuple[IngressRoute, ...]:
    """A networking.k8s.io/v1 Ingress as one route per rule path with a Service backend, in
    rule and path order. Resource backends and the default backend route to no Service the
    sync reads and are left out; a rule without `http` has no paths."""
    namespace, name = object_key(raw)
    spec = _object(raw.get("spec"), "spec")
    tls_hosts: set[str] = set()
    for i, tls in enumerate(_list(spec.get("tls"), "spec.tls")):
        for j, host in enumerate(_list(_object(tls, f"spec.tls[{i}]").get("hosts"), f"spec.tls[{i}].hosts")):
            if not isinstance(host, str):
                raise BadObject(f"spec.tls[{i}].hosts[{j}] is not a string")
            tls_hosts.add(host)
    lb = _object(_object(raw.get("status"), "status").get("loadBalancer"), "status.loadBalancer")
    lb_ips: list[str] = []
    for i, entry in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        ip = _object(entry, f"status.loadBalancer.ingress[{i}]").get("ip")
        if not ip:
            continue
        try:
            ip = _ip(ip)
        except ValueError:
            raise BadObject(f"status.loadBalancer.ingress[{i}].ip is not an IP: {ip!r}") from None
        if ip not in lb_ips:
            lb_ips.append(ip)
    routes: list[IngressRoute] = []
    for i, rule in enumerate(_list(spec.get("rules"), "spec.rules")):
        rule = _object(rule, f"spec.rules[{i}]")
        host = rule.get("host") or ""
        if not isinstance(host, str):
            raise BadObject(f"spec.rules[{i}].host is not a string")
        http = _object(rule.get("http"), f"spec.rules[{i}].http")
        for j, path in enumerate(_list(http.get("paths"), f"spec.rules[{i}].http.paths")):
            where = f"spec.rules[{i}].http.paths[{j}]"
            path = _object(path, where)
            backend = _object(path.get("backend"), f"{where}.backend")
            if backend.get("service") is None:
                continue
            service = _object(backend["service"], f"{where}.backend.service")
            service_name = service.get("name")
            if not isinstance(service_name, str) or not service_name:
                raise BadObject(f"{where}.backend.service.name is missing")
            value = path.get("path") or ""
            if not isinstance(value, str):
                raise BadObject(f"{where}.path is not a string")
            routes.append(IngressRoute(namespace, name, service_name, host, value,
                                       host in tls_hosts, tuple(lb_ips)))
    return tuple(routes)


def _ip(value: Any) -> str:
    """A textual IP address in canonical form. Integers are refused: the API sends strings,
    and ipaddress would quietly read 167772161 as 10.0.0.1."""
    if not isinstance(value, str):
        raise ValueError(value)
    return str(ipaddress.ip_address(value))


def _condition(conditions: Mapping[str, Any], name: str, default: bool) -> bool:
    # EndpointSlice conditions are tri-state: nil means "unknown", read as the API documents.
    value = conditions.get(name)
    return default if value is None else bool(value)


def slice_from_raw(raw: Mapping[str, Any]) -> Slice:
    """A discovery.k8s.io/v1 EndpointSlice reduced to addresses, conditions and ports."""
    namespace, name = object_key(raw)
    labels = _str_map((raw.get("metadata") or {}).get("labels"), "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL, "")
    address_type = raw.get("addressType")
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise BadObject(f"addressType is not IPv4, IPv6 or FQDN: {address_type!r}")
    raw_ports = raw.get("ports") or []
    if not isinstance(raw_ports, list):
        raise BadObject("ports is not a list")
    ports = tuple(p for i, item in enumerate(raw_ports)
                  if (p := _port(item, f"ports[{i}]", required=False)) is not None)
    endpoints: list[SliceEndpoint] = []
    raw_endpoints = raw.get("endpoints") or []
    if not isinstance(raw_endpoints, list):
        raise BadObject("endpoints is not a list")
    for i, ep in enumerate(raw_endpoints):
        if not isinstance(ep, dict) or not isinstance(ep.get("addresses"), list):
            raise BadObject(f"endpoints[{i}].addresses is missing")
        conditions = ep.get("conditions") or {}
        if not isinstance(conditions, dict):
            raise BadObject(f"endpoints[{i}].conditions is not an object")
        target = ep.get("targetRef") or {}
        for address in ep["addresses"]:
            if address_type != "FQDN":
                try:
                    address = _ip(address)
                except ValueError:
                    raise BadObject(f"endpoints[{i}] has a bad address: {address!r}") from None
            endpoints.append(SliceEndpoint(
                address=str(address),
                ready=_condition(conditions, "ready", True),
                serving=_condition(conditions, "serving", True),
                terminating=_condition(conditions, "terminating", False),
                hostname=str(ep.get("hostname") or ""),
                node_name=str(ep.get("nodeName") or ""),
                zone=str(ep.get("zone") or ""),
                target=str(target.get("name") or "") if isinstance(target, dict) else "",
            ))
    return Slice(namespace, name, service, str(address_type), ports, tuple(endpoints), frozen_map(labels))


def join(service: Service, slices: Iterable[Slice], cluster_id: str) -> Service:
    """The Service with one instance per distinct endpoint address across all its slices.

    A pod can appear in two slices while the controller moves it; the ready copy wins so a
    transient duplicate never hides a serving endpoint.
    """
    origin = Origin(OriginKind.KUBERNETES, cluster_id)
    chosen: dict[str, Instance] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        if sl.address_type == "FQDN":
            continue
        for ep in sl.endpoints:
            ready = ep.ready or service.publish_not_ready
            instance = Instance(
                address=ep.address, ports=sl.ports, origin=origin, ready=ready,
                hostname=ep.hostname, node_name=ep.node_name, zone=ep.zone, target=ep.target,
            )
            previous = chosen.get(ep.address)
            if previous is None or (ready and not previous.ready):
                chosen[ep.address] = instance
    instances = tuple(sorted(chosen.values(), key=lambda i: _address_sort_key(i.address)))
    return dataclasses.replace(service, instances=instances)


def _address_sort_key(address: str) -> tuple[int, int | str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, address)
    return (ip.version, int(ip))
