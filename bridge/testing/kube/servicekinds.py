"""Validation of Services and EndpointSlices: what the bridge writes. Pure.

The counterparts of `pkg/apis/core/validation` (`ValidateService`, `validateServicePort`,
`ValidatePortNumOrName`) and `pkg/apis/discovery/validation` (`ValidateEndpointSlice`,
`validateEndpoints`, `validatePorts`, `validateAddressType`, `validateHints`), field by field
for every field a client of these kinds sets: a Service port name is a DNS-1123 label (a
named *target* port is an IANA service name, at most 15 characters); a slice holds at most
1000 endpoints of 1 to 100 addresses and at most 20000 ports, addresses of its one family
and outside the ranges `ips.endpoint_ip_errors` refuses. Metadata (names, labels,
annotations) is checked for every kind in `strategy.validate`. Cluster-IP allocation and
its own checks live in `allocation.py`.
"""

from __future__ import annotations

from typing import Any

from bridge.testing.kube import errors, formats, ips
from bridge.testing.kube.errors import FieldError, GoSyntax

JSON = dict[str, Any]

PROTOCOLS = ("SCTP", "TCP", "UDP")
_PROTOCOLS_DETAIL = 'supported values: "SCTP", "TCP", "UDP"'
_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")

MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_PORTS = 20000  # 100 in discovery.k8s.io/v1beta1
MAX_TOPOLOGY_LABELS = 16
MAX_ZONE_HINTS = 8
_INT32 = (-(2**31), 2**31 - 1)


def protocol_errors(port: JSON, field: str) -> list[FieldError]:
    """A port's protocol: required (the v1 defaults fill in TCP), one of SCTP, TCP, UDP."""
    protocol = port.get("protocol")
    if not protocol:
        return [FieldError("Required", field)]
    if protocol not in PROTOCOLS:
        return [FieldError("NotSupported", field, protocol, _PROTOCOLS_DETAIL)]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- Service ------------------------------------------------------------------------------


def _target_port_errors(target: Any, field: str) -> list[FieldError]:
    """ValidatePortNumOrName: a number 1-65535 or an IANA service name."""
    if _is_int(target):
        return formats.invalid(field, target, formats.port_number(target))
    if isinstance(target, str):
        return formats.invalid(field, target, formats.port_name(target))
    return [FieldError("Invalid", field, target, "must be an integer or a string")]


def _service_port_errors(port: Any, path: str, *, require_name: bool, kind: str,
                         names: set[str]) -> list[FieldError]:
    """validateServicePort, plus the nodePort rule of ValidateService's type switch."""
    if not isinstance(port, dict):
        return [FieldError("Invalid", path, port, "must be an object")]
    found: list[FieldError] = []
    name = port.get("name") or ""
    if require_name and not name:
        found.append(FieldError("Required", f"{path}.name"))
    elif name:
        found += formats.check(formats.dns1123_label, name, f"{path}.name")
        if name in names:
            found.append(FieldError("Duplicate", f"{path}.name", name))
        names.add(str(name))
    number = port.get("port", 0)
    if not _is_int(number):
        found.append(FieldError("Invalid", f"{path}.port", number, "must be an integer"))
    else:
        found += formats.invalid(f"{path}.port", number, formats.port_number(number))
    found += protocol_errors(port, f"{path}.protocol")
    if "targetPort" in port:
        found += _target_port_errors(port["targetPort"], f"{path}.targetPort")
    if port.get("appProtocol") is not None:
        found += formats.check(formats.label_key, port["appProtocol"], f"{path}.appProtocol")
    if kind in ("ClusterIP", "ExternalName") and port.get("nodePort"):
        found.append(FieldError("Forbidden", f"{path}.nodePort", None, f"may not be used when `type` is '{kind}'"))
    return found


def _duplicate_port_errors(ports: list[Any]) -> list[FieldError]:
    """ValidateService: no two ports with one (protocol, port) pair, whatever their names.
    The value shown is the key struct as Go's %#v prints it."""
    found: list[FieldError] = []
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            continue
        key = (port.get("protocol"), port.get("port", 0))
        if key in seen:
            found.append(FieldError("Duplicate", f"spec.ports[{i}]", GoSyntax(
                f'core.ServicePort{{Name:"", Protocol:"{key[0]}", AppProtocol:(*string)(nil), Port:{key[1]}, '
                'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}')))
        seen.add(key)
    return found


def validate_service(obj: JSON, old: JSON | None) -> list[FieldError]:
    """ValidateService and ValidateServiceUpdate's clusterIP rule."""
    spec = obj.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    headless = spec.get("clusterIP") == "None"
    found: list[FieldError] = []
    ports = spec.get("ports") or []
    # A headless Service may have no ports: its DNS names only need the endpoints.
    if not ports and kind != "ExternalName" and not headless:
        found.append(FieldError("Required", "spec.ports"))
    if kind not in _SERVICE_TYPES:
        found.append(FieldError("NotSupported", "spec.type", kind,
                                'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'))
    elif kind in ("NodePort", "LoadBalancer") and headless:
        found.append(FieldError("Invalid", "spec.clusterIP", "None",
                                f"may not be set to 'None' for {kind} services"))
    names: set[str] = set()
    for i, port in enumerate(ports if isinstance(ports, list) else []):
        found += _service_port_errors(port, f"spec.ports[{i}]", require_name=len(ports) > 1, kind=kind,
                                      names=names)
    found += _duplicate_port_errors(ports if isinstance(ports, list) else [])
    if kind == "ExternalName" and not spec.get("externalName"):
        found.append(FieldError("Required", "spec.externalName"))
    if old is not None:
        before = old.get("spec") or {}
        if (
            before.get("type", "ClusterIP") != "ExternalName"
            and kind != "ExternalName"
            and before.get("clusterIP")
            and spec.get("clusterIP") != before.get("clusterIP")
        ):
            found.append(FieldError("Invalid", "spec.clusterIPs[0]",
                                    spec.get("clusterIPs") or [spec.get("clusterIP", "")], "may not change once set"))
    if spec.get("selector"):
        found += formats.labels_errors(spec["selector"], "spec.selector")
    return found


# --- EndpointSlice ------------------------------------------------------------------------


def decode_endpoint_slice(obj: JSON) -> None:
    """What the JSON decoder refuses before validation runs: a port outside int32 (the API
    server's answer is 400, not 422; the port has no range check beyond that)."""
    for port in obj.get("ports") or []:
        number = port.get("port") if isinstance(port, dict) else None
        if number is None:
            continue
        if not _is_int(number) or not _INT32[0] <= number <= _INT32[1]:
            raise errors.bad_request(
                'EndpointSlice in version "v1" cannot be handled as a EndpointSlice: json: cannot unmarshal '
                f"{'number' if _is_int(number) else type(number).__name__} {number} into Go struct field "
                "EndpointPort.ports.port of type int32")


def _address_errors(address: Any, address_type: Any, field: str) -> list[FieldError]:
    if not isinstance(address, str):
        return [FieldError("Invalid", field, address, "must be a string")]
    if address_type in ("IPv4", "IPv6"):
        return ips.syntax_errors(address, address_type, field) + ips.endpoint_ip_errors(address, field)
    if address_type == "FQDN":
        return formats.fqdn(address, field)
    return []  # an unknown type is reported once, on addressType


def _hints_errors(hints: Any, field: str) -> list[FieldError]:
    """validateHints: at most 8 zones, each a unique label value."""
    zones = (hints.get("forZones") if isinstance(hints, dict) else None) or []
    if len(zones) > MAX_ZONE_HINTS:
        return [FieldError("TooMany", f"{field}.forZones", len(zones), f"must have at most {MAX_ZONE_HINTS} items")]
    found: list[FieldError] = []
    seen: set[str] = set()
    for i, zone in enumerate(zones):
        path = f"{field}.forZones[{i}].name"
        name = zone.get("name", "") if isinstance(zone, dict) else ""
        if name in seen:
            found.append(FieldError("Duplicate", path, name))
        seen.add(name)
        found += formats.check(formats.label_value, name, path)
    return found


def _endpoint_errors(endpoint: Any, address_type: Any, path: str) -> list[FieldError]:
    if not isinstance(endpoint, dict):
        return [FieldError("Invalid", path, endpoint, "must be an object")]
    found: list[FieldError] = []
    addresses = endpoint.get("addresses") or []
    if not addresses:
        found.append(FieldError("Required", f"{path}.addresses", None, "must contain at least 1 address"))
    elif len(addresses) > MAX_ADDRESSES:
        found.append(FieldError("TooMany", f"{path}.addresses", len(addresses),
                                f"must have at most {MAX_ADDRESSES} items"))
    for j, address in enumerate(addresses):
        found += _address_errors(address, address_type, f"{path}.addresses[{j}]")
    if endpoint.get("nodeName") is not None:
        found += formats.check(formats.dns1123_subdomain, endpoint["nodeName"], f"{path}.nodeName")
    topology = endpoint.get("deprecatedTopology") or {}
    if len(topology) > MAX_TOPOLOGY_LABELS:
        found.append(FieldError("TooMany", f"{path}.deprecatedTopology", len(topology),
                                f"must have at most {MAX_TOPOLOGY_LABELS} items"))
    if topology:
        found += formats.labels_errors(topology, f"{path}.deprecatedTopology")
    if endpoint.get("hostname") is not None:
        found += formats.check(formats.dns1123_label, endpoint["hostname"], f"{path}.hostname")
    if endpoint.get("hints") is not None:
        found += _hints_errors(endpoint["hints"], f"{path}.hints")
    return found


def _slice_port_errors(ports: list[Any]) -> list[FieldError]:
    """validatePorts: names optional, each a DNS-1123 label, unique (the empty one too)."""
    if len(ports) > MAX_PORTS:
        return [FieldError("TooMany", "ports", len(ports), f"must have at most {MAX_PORTS} items")]
    found: list[FieldError] = []
    names: set[str] = set()
    for i, port in enumerate(ports):
        if not isinstance(port, dict):
            found.append(FieldError("Invalid", f"ports[{i}]", port, "must be an object"))
            continue
        name = port.get("name") or ""
        if name:
            found += formats.check(formats.dns1123_label, name, f"ports[{i}].name")
        if name in names:
            found.append(FieldError("Duplicate", f"ports[{i}].name", name))
        names.add(str(name))
        found += protocol_errors(port, f"ports[{i}].protocol")
        if port.get("appProtocol") is not None:
            found += formats.check(formats.label_key, port["appProtocol"], f"ports[{i}].appProtocol")
    return found


def validate_endpoint_slice(obj: JSON, old: JSON | None) -> list[FieldError]:
    """ValidateEndpointSlice (ValidateEndpointSliceUpdate: addressType is immutable)."""
    found: list[FieldError] = []
    address_type = obj.get("addressType")
    if not address_type:
        found.append(FieldError("Required", "addressType"))
    elif address_type not in ADDRESS_TYPES:
        found.append(FieldError("NotSupported", "addressType", address_type,
                                'supported values: "FQDN", "IPv4", "IPv6"'))
    endpoints = obj.get("endpoints") or []
    if len(endpoints) > MAX_ENDPOINTS:
        found.append(FieldError("TooMany", "endpoints", len(endpoints), f"must have at most {MAX_ENDPOINTS} items"))
    else:
        for i, endpoint in enumerate(endpoints):
            found += _endpoint_errors(endpoint, address_type, f"endpoints[{i}]")
    found += _slice_port_errors(obj.get("ports") or [])
    if old is not None and old.get("addressType") != address_type:
        found.append(FieldError("Invalid", "addressType", address_type, "field is immutable"))
    return found
