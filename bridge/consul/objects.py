"""Raw Consul JSON <-> the bridge's values.

PURE: no I/O. Reads: health entries become `Instance`s (an empty ServiceAddress means the
node's Address, as Consul documents), and the services on our node become `Registration`s
so the sink can diff them. Writes: a `Plan` becomes `/v1/txn` operations. Malformed
entries raise `BadEntry`, which the caller logs and counts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from bridge.catalog.model import Instance, Origin, OriginKind, Port, frozen_map
from bridge.catalog.plan import (
    CHECK_NAME,
    CHECK_TYPE,
    EXTERNAL_SOURCE,
    OWNER_META,
    Plan,
    Registration,
)

NODE_ADDRESS = "127.0.0.1"


class BadEntry(ValueError):
    """A Consul entry the bridge cannot use; the message says why."""


def _get(raw: Mapping[str, Any], key: str, default: Any = None) -> Any:
    # Consul matches JSON keys case-insensitively; be as lenient when reading.
    if key in raw:
        return raw[key]
    lowered = key.lower()
    for k, v in raw.items():
        if k.lower() == lowered:
            return v
    return default


def is_ours(service: Mapping[str, Any], node: str, our_node: str, cluster_id: str) -> bool:
    meta = _get(service, "Meta") or {}
    return node == our_node or meta.get(OWNER_META) == cluster_id


def is_consul_k8s(service: Mapping[str, Any]) -> bool:
    """Registered by consul-k8s's catalog sync: meta `external-source: kubernetes` and
    `external-k8s-ns` (its `ConsulSourceKey` and `ConsulK8SNS`), and no bridge's owner."""
    meta = _get(service, "Meta") or {}
    return isinstance(meta, dict) and meta.get("external-source") == EXTERNAL_SOURCE \
        and bool(meta.get("external-k8s-ns")) and OWNER_META not in meta


def instance_from_health(entry: Mapping[str, Any], passing_only: bool = True) -> Instance:
    """One `/v1/health/service/<name>` entry as an Instance."""
    node = _get(entry, "Node") or {}
    service = _get(entry, "Service") or {}
    if not isinstance(node, dict) or not isinstance(service, dict):
        raise BadEntry("Node or Service is not an object")
    node_name = str(_get(node, "Node") or "")
    address = str(_get(service, "Address") or "") or str(_get(node, "Address") or "")
    if not address:
        raise BadEntry(f"instance {_get(service, 'ID')!r} on {node_name!r} has no address")
    try:
        address = str(ipaddress.ip_address(address))
    except ValueError:
        raise BadEntry(f"instance {_get(service, 'ID')!r} has a non-IP address "
                       f"{address!r}") from None
    port = _get(service, "Port") or 0
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise BadEntry(f"instance {_get(service, 'ID')!r} has a bad port {port!r}")
    meta = _get(service, "Meta") or {}
    if not isinstance(meta, dict):
        raise BadEntry(f"instance {_get(service, 'ID')!r} has Meta that is not an object")
    checks = _get(entry, "Checks") or []
    if not isinstance(checks, list):
        raise BadEntry(f"instance {_get(service, 'ID')!r} has Checks that is not a list")
    statuses = [str(_get(c, "Status") or "") for c in checks if isinstance(c, dict)]
    allowed = {"passing"} if passing_only else {"passing", "warning"}
    return Instance(
        address=address,
        ports=_ports(port, meta),
        origin=Origin(OriginKind.CONSUL, node_name),
        ready=all(s in allowed for s in statuses),
        node_name=node_name,
        consul_id=str(_get(service, "ID") or ""),
        tags=tuple(str(t) for t in (_get(service, "Tags") or [])),
        meta=frozen_map({str(k): str(v) for k, v in meta.items()}),
    )


def failing_checks(entry: Mapping[str, Any], passing_only: bool = True) -> str:
    """The checks of a health entry that keep its instance from being healthy, as
    `name (status), ...` (the node's checks count too, as Consul's own filter counts them)."""
    allowed = {"passing"} if passing_only else {"passing", "warning"}
    failing = [f"{_get(c, 'Name') or _get(c, 'CheckID') or '?'} ({_get(c, 'Status') or '?'})"
               for c in (_get(entry, "Checks") or []) if isinstance(c, dict)
               and str(_get(c, "Status") or "") not in allowed]
    return ", ".join(failing) or "none named"


def _ports(port: int, meta: Mapping[str, Any]) -> tuple[Port, ...]:
    """The instance's ports. `port-<name>` meta names them for services registered by
    hand or by tools; for Kubernetes-origin entries it holds the Service's ports, not the
    pod's (consul-k8s convention), so there only the registered port is true."""
    if meta.get("external-source") != "kubernetes":
        named = tuple(Port(k[5:], int(v)) for k, v in sorted(meta.items())
                      if isinstance(k, str) and k.startswith("port-") and len(k) > 5
                      and isinstance(v, str | int) and str(v).isascii() and str(v).isdigit()
                      and 0 < int(v) < 65536)
        if named:
            return named
    return (Port("", port),) if port else ()


def registrations_on_node(node_view: Mapping[str, Any] | None, checks: Iterable[Mapping[str, Any]],
                          cluster_id: str) -> dict[str, Registration]:
    """Our registrations as Consul holds them: services on our node carrying our marker."""
    return _registrations(node_view, checks, lambda svc: (_get(svc, "Meta") or {}).get(OWNER_META) == cluster_id)


def consul_k8s_registrations(node_view: Mapping[str, Any] | None) -> dict[str, Registration]:
    """consul-k8s's registrations on its node (`is_consul_k8s`), without their checks'
    status: what adoption may deregister there once the bridge's own are in place."""
    return _registrations(node_view, (), is_consul_k8s)


def _registrations(node_view: Mapping[str, Any] | None, checks: Iterable[Mapping[str, Any]],
                   keep: Callable[[Mapping[str, Any]], bool]) -> dict[str, Registration]:
    """The services of a `/v1/catalog/node/<node>` answer that `keep` accepts, by ID."""
    if not node_view:
        return {}
    services = _get(node_view, "Services") or {}
    if isinstance(services, dict):
        services = list(services.values())
    status = {str(_get(c, "CheckID")): str(_get(c, "Status") or "") for c in checks}
    out: dict[str, Registration] = {}
    for svc in services:
        if not isinstance(svc, dict) or not keep(svc):
            continue
        meta = _get(svc, "Meta") or {}
        sid = str(_get(svc, "ID") or "")
        weights = _get(svc, "Weights") or {}
        reg = Registration(
            service_id=sid,
            name=str(_get(svc, "Service") or ""),
            address=str(_get(svc, "Address") or ""),
            port=int(_get(svc, "Port") or 0),
            tags=tuple(str(t) for t in (_get(svc, "Tags") or [])),
            meta=frozen_map({str(k): str(v) for k, v in meta.items()}),
            weight=int(_get(weights, "Passing") or 1) if isinstance(weights, dict) else 1,
        )
        out[sid] = dataclasses.replace(reg, check_status=status.get(reg.check_id, ""))
    return out


def node_operation(node: str, cluster_id: str) -> dict[str, Any]:
    return {"Node": {"Verb": "set", "Node": {
        "Node": node, "Address": NODE_ADDRESS,
        "Meta": {"external-source": EXTERNAL_SOURCE, OWNER_META: cluster_id},
    }}}


def _set_operations(node: str, reg: Registration, held: Registration | None = None, *,
                    update: bool) -> list[dict[str, Any]]:
    """The service op, then the check's. `held` (what Consul has, on update) spares the
    check delete when neither had one, and removes a check left under another ID."""
    service = {"ID": reg.service_id, "Service": reg.name, "Address": reg.address,
               "Port": reg.port, "Tags": list(reg.tags), "Meta": dict(reg.meta),
               "Weights": {"Passing": reg.weight, "Warning": 1}}
    ops: list[dict[str, Any]] = [{"Service": {"Verb": "set", "Node": node, "Service": service}}]
    # On update with nothing known of before, a check may be left from another type.
    had_check = update and (held is None or bool(held.check_status))
    if reg.check_status or had_check:
        ops.append(_check_operation(node, reg))
    if held is not None and held.check_status and held.check_id != reg.check_id:
        ops.append({"Check": {"Verb": "delete",
                              "Check": {"Node": node, "CheckID": held.check_id}}})
    return ops


def _check_operation(node: str, reg: Registration) -> dict[str, Any]:
    """The txn op that gives `reg` its readiness check as desired (none: deleted)."""
    if not reg.check_status:
        return {"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": reg.check_id}}}
    check = {"Node": node, "CheckID": reg.check_id, "Name": CHECK_NAME, "Type": CHECK_TYPE,
             "Status": reg.check_status, "ServiceID": reg.service_id,
             # Consul's txn ACL check authorises a service check by its ServiceName.
             "ServiceName": reg.name,
             "Output": "Kubernetes health checks "
                       + ("passing" if reg.check_status == "passing" else "failing")}
    return {"Check": {"Verb": "set", "Check": check}}


def plan_operations(plan: Plan, node: str, adopt_node: str = "") -> list[list[dict[str, Any]]]:
    """The plan as txn operations, grouped so one registration's service and check
    always land in the same transaction; `plan.adopt` is deregistered from `adopt_node`."""
    return list(iter_plan_operations(plan, node, adopt_node))


def iter_plan_operations(plan: Plan, node: str, adopt_node: str = "") -> Iterator[list[dict[str, Any]]]:
    """`plan_operations` one group at a time, in the order of create, update, delete,
    adopt (a first sync of 10,000 instances would otherwise hold 20,000 operations at once)."""
    if plan.adopt and not adopt_node:
        raise ValueError("a plan that adopts needs the node to deregister from")
    for reg in plan.create:
        yield _set_operations(node, reg, update=False)
    for reg in plan.update:
        held = plan.replaced.get(reg.service_id)
        if held is not None and held.same_service(reg):
            yield [_check_operation(node, reg)]  # a readiness flip: the check alone
            continue
        yield _set_operations(node, reg, held, update=True)
    for reg in plan.delete:
        yield [_delete_operation(node, reg)]
    for reg in plan.adopt:
        yield [_delete_operation(adopt_node, reg)]


def _delete_operation(node: str, reg: Registration) -> dict[str, Any]:
    # Deleting a service deletes its checks with it. Consul vets every service op, a
    # delete too, and refuses an ID without a name.
    return {"Service": {"Verb": "delete", "Node": node,
                        "Service": {"ID": reg.service_id, "Service": reg.name}}}
