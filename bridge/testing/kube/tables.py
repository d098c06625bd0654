"""Server-side printing: `meta.k8s.io/v1` Table responses for `kubectl get`. Pure.

`kubectl get` asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints whatever
columns the server defines, so the columns and cell formats here copy the apiserver's printers
(`pkg/printers/internalversion/printers.go`) for the resources the fake serves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bridge.testing.kube.resources import ResourceType

JSON = dict[str, Any]

_DESCRIPTIONS = {
    "Name": "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "Age": "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is "
    "in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
}


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration, which kubectl's AGE column uses."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: JSON) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    created = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - created).total_seconds())


def _column(name: str, description: str = "", *, fmt: str = "", priority: int = 0, type_: str = "string") -> JSON:
    return {
        "name": name,
        "type": type_,
        "format": fmt,
        "description": _DESCRIPTIONS.get(name, description),
        "priority": priority,
    }


def _join_or(values: list[str], empty: str) -> str:
    return ",".join(values) if values else empty


def _service_cells(obj: JSON) -> list[Any]:
    spec = obj.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    external = list(spec.get("externalIPs") or [])
    if kind == "ExternalName":
        external_cell = spec.get("externalName", "")
    elif kind == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        found = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        external_cell = _join_or(found + external, "<pending>")
    else:
        external_cell = _join_or(external, "<none>")
    ports = []
    for port in spec.get("ports") or []:
        number = f"{port.get('port')}:{port['nodePort']}" if port.get("nodePort") else str(port.get("port"))
        ports.append(f"{number}/{port.get('protocol', 'TCP')}")
    selector = sorted(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    return [
        obj["metadata"]["name"],
        kind,
        spec.get("clusterIP") or "<none>",
        external_cell,
        _join_or(ports, "<none>"),
        _age(obj),
        _join_or(selector, "<none>"),
    ]


def _endpoints_cells(obj: JSON) -> list[Any]:
    listed: list[str] = []
    total = 0
    for subset in obj.get("subsets") or []:
        addresses = subset.get("addresses") or []
        ports = subset.get("ports") or [{}]
        for address in addresses:
            for port in ports:
                total += 1
                if len(listed) < 3:
                    listed.append(f"{address['ip']}:{port['port']}" if port.get("port") else address["ip"])
    cell = ",".join(listed) + (f" + {total - 3} more..." if total > 3 else "")
    return [obj["metadata"]["name"], cell or "<none>", _age(obj)]


def _pod_cells(obj: JSON) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses")
    if statuses:
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    else:
        # No kubelet reports container statuses here; infer them from the pod's Ready condition.
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        ready, restarts = (len(containers) if is_ready else 0), 0
    reason = status.get("reason") or status.get("phase") or "Unknown"
    if obj["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        obj["metadata"]["name"],
        f"{ready}/{len(containers)}",
        reason,
        restarts,
        _age(obj),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _node_cells(obj: JSON) -> list[Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions if isinstance(c, dict))
    return [obj["metadata"]["name"], "Ready" if ready else "NotReady", _age(obj)]


def _namespace_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", ""), _age(obj)]


def _slice_cells(obj: JSON) -> list[Any]:
    ports = [str(p["port"]) if p.get("port") is not None else "<unset>" for p in obj.get("ports") or []]
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    cell = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [
        obj["metadata"]["name"],
        obj.get("addressType", ""),
        _join_or(ports, "<unset>"),
        cell or "<unset>",
        _age(obj),
    ]


def _ingress_cells(obj: JSON) -> list[Any]:
    """printIngress: class, up to three hosts ("*" when none), LB addresses clipped to 16
    bytes (not wide), and "80, 443" once any TLS entry exists."""
    spec = obj.get("spec") or {}
    rules = spec.get("rules") or []
    hosts: list[str] = []
    more = False
    for rule in rules:
        if len(hosts) == 3:
            more = True
        if not more and isinstance(rule, dict) and rule.get("host"):
            hosts.append(rule["host"])
    hosts_cell = ",".join(hosts) if hosts else "*"
    if more:
        hosts_cell += f" + {len(rules) - 3} more..."
    lb = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    addresses = sorted({e.get("ip") or e.get("hostname") for e in lb if e.get("ip") or e.get("hostname")})
    address = ",".join(addresses)
    if len(address) > 16:
        address = address[:13] + "..."
    return [
        obj["metadata"]["name"],
        spec.get("ingressClassName") or "<none>",
        hosts_cell,
        address,
        "80, 443" if spec.get("tls") else "80",
        _age(obj),
    ]


def _lease_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("spec") or {}).get("holderIdentity", ""), _age(obj)]


def _config_map_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), _age(obj)]


def _secret_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], obj.get("type", ""), len(obj.get("data") or {}), _age(obj)]


def _service_account_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("secrets") or []), _age(obj)]


def _deployment_cells(obj: JSON) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    containers = template.get("containers") or []
    selector = ",".join(f"{k}={v}" for k, v in sorted(((spec.get("selector") or {}).get("matchLabels") or {}).items()))
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
        selector or "<none>",
    ]


def _pdb_cells(obj: JSON) -> list[Any]:
    spec = obj.get("spec") or {}
    return [
        obj["metadata"]["name"],
        str(spec["minAvailable"]) if spec.get("minAvailable") is not None else "N/A",
        str(spec["maxUnavailable"]) if spec.get("maxUnavailable") is not None else "N/A",
        (obj.get("status") or {}).get("disruptionsAllowed", 0),
        _age(obj),
    ]


def _role_cells(obj: JSON) -> list[Any]:
    return [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")]


def _binding_cells(obj: JSON) -> list[Any]:
    ref = obj.get("roleRef") or {}
    subjects = [s for s in obj.get("subjects") or [] if isinstance(s, dict)]

    def names(kind: str) -> str:
        return ", ".join(
            (f"{s.get('namespace', '')}/{s.get('name', '')}" if kind == "ServiceAccount" else s.get("name", ""))
            for s in subjects
            if s.get("kind") == kind
        )

    return [
        obj["metadata"]["name"],
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _age(obj),
        names("User"),
        names("Group"),
        names("ServiceAccount"),
    ]


_BINDING_COLUMNS = [
    _column("Name", fmt="name"),
    _column("Role", "Role of the binding."),
    _column("Age"),
    _column("Users", "Users in the binding.", priority=1),
    _column("Groups", "Groups in the binding.", priority=1),
    _column("ServiceAccounts", "ServiceAccounts in the binding.", priority=1),
]
_ROLE_COLUMNS = [_column("Name", fmt="name"), _column("Created At", "Time when the role was created.", fmt="date")]

_LAYOUTS: dict[str, tuple[list[JSON], Callable[[JSON], list[Any]]]] = {
    "configmaps": (
        [
            _column("Name", fmt="name"),
            _column("Data", "Data contains the configuration data.", type_="integer"),
            _column("Age"),
        ],
        _config_map_cells,
    ),
    "secrets": (
        [
            _column("Name", fmt="name"),
            _column("Type", "Used to facilitate programmatic handling of secret data."),
            _column("Data", "Data contains the secret data.", type_="integer"),
            _column("Age"),
        ],
        _secret_cells,
    ),
    "serviceaccounts": (
        [
            _column("Name", fmt="name"),
            _column(
                "Secrets",
                "Secrets is a list of the secrets in the same namespace "
                "that pods running using this ServiceAccount are allowed to use.",
                type_="integer",
            ),
            _column("Age"),
        ],
        _service_account_cells,
    ),
    "deployments": (
        [
            _column("Name", fmt="name"),
            _column("Ready", "Number of the pod with ready state"),
            _column(
                "Up-to-date",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                type_="integer",
            ),
            _column(
                "Available",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                type_="integer",
            ),
            _column("Age"),
            _column("Containers", "Names of each container in the template.", priority=1),
            _column("Images", "Images referenced by each container in the template.", priority=1),
            _column(
                "Selector",
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will "
                "be the ones affected by this deployment.",
                priority=1,
            ),
        ],
        _deployment_cells,
    ),
    "poddisruptionbudgets": (
        [
            _column("Name", fmt="name"),
            _column("Min Available", "The minimum number of pods that must be available simultaneously."),
            _column("Max Unavailable", "The maximum number of pods that may be unavailable simultaneously."),
            _column(
                "Allowed Disruptions", "Calculated number of pods that may be disrupted at this time.", type_="integer"
            ),
            _column("Age"),
        ],
        _pdb_cells,
    ),
    "roles": (_ROLE_COLUMNS, _role_cells),
    "clusterroles": (_ROLE_COLUMNS, _role_cells),
    "rolebindings": (_BINDING_COLUMNS, _binding_cells),
    "clusterrolebindings": (_BINDING_COLUMNS, _binding_cells),
    "namespaces": (
        [_column("Name", fmt="name"), _column("Status", "The status of the namespace"), _column("Age")],
        _namespace_cells,
    ),
    "nodes": (
        [_column("Name", fmt="name"), _column("Status", "The status of the node"), _column("Age")],
        _node_cells,
    ),
    "services": (
        [
            _column("Name", fmt="name"),
            _column("Type", "type determines how the Service is exposed."),
            _column("Cluster-IP", "clusterIP is the IP address of the service."),
            _column(
                "External-IP",
                "externalIPs is a list of IP addresses for which nodes in the "
                "cluster will also accept traffic for this service.",
            ),
            _column("Port(s)", "The list of ports that are exposed by this service."),
            _column("Age"),
            _column(
                "Selector",
                "Route service traffic to pods with label keys and values matching this selector.",
                priority=1,
            ),
        ],
        _service_cells,
    ),
    "endpoints": (
        [
            _column("Name", fmt="name"),
            _column("Endpoints", "The set of all endpoints is the union of all subsets."),
            _column("Age"),
        ],
        _endpoints_cells,
    ),
    "pods": (
        [
            _column("Name", fmt="name"),
            _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            _column("Status", "The aggregate status of the containers in this pod."),
            _column(
                "Restarts",
                "The number of times the containers in this pod have been "
                "restarted and when the last container in this pod has restarted.",
                type_="string",
            ),
            _column("Age"),
            _column(
                "IP",
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
                priority=1,
            ),
            _column("Node", "NodeName is a request to schedule this pod onto a specific node.", priority=1),
            _column(
                "Nominated Node",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
                priority=1,
            ),
            _column(
                "Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness.", priority=1
            ),
        ],
        _pod_cells,
    ),
    "endpointslices": (
        [
            _column("Name", fmt="name"),
            _column("AddressType", "The IP protocol for this slice"),
            _column("Ports", "The list of ports on this slice"),
            _column("Endpoints", "The list of endpoints on this slice"),
            _column("Age"),
        ],
        _slice_cells,
    ),
    "ingresses": (
        [
            _column("Name", fmt="name"),
            _column("Class", "The name of the IngressClass resource that should be used for additional configuration"),
            _column("Hosts", "Hosts that incoming requests are matched against before the ingress rule"),
            _column("Address", "Address is a list containing ingress points for the load-balancer"),
            _column("Ports", "Ports of TLS configurations that open"),
            _column("Age"),
        ],
        _ingress_cells,
    ),
    "leases": (
        [_column("Name", fmt="name"), _column("Holder", "The holder of the lease"), _column("Age")],
        _lease_cells,
    ),
}


def _row(obj: JSON, cells: Callable[[JSON], list[Any]], include: str) -> JSON:
    row: JSON = {"cells": cells(obj)}
    if include == "Object":
        row["object"] = obj
    elif include != "None":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {},
        }
    return row


def to_table(
    rt: ResourceType,
    objects: list[JSON],
    list_meta: JSON,
    *,
    api_version: str,
    include_object: str = "Metadata",
    headers: bool = True,
) -> JSON:
    """A Table for a list (or, with one object, a get or a watch event)."""
    columns, cells = _LAYOUTS[rt.plural]
    table: JSON = {"kind": "Table", "apiVersion": api_version, "metadata": dict(list_meta)}
    table["columnDefinitions"] = columns if headers else None
    table["rows"] = [_row(obj, cells, include_object) for obj in objects]
    return table
