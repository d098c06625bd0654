"""Per-type create/update rules: defaulting, validation, and what an update may change. Pure.

This is the fake's counterpart of the apiserver's registry strategies (`PrepareForCreate`,
`PrepareForUpdate`, `Validate`, defaulting). It only covers what clients of these resources
can observe: names, the defaults `kubectl get -o yaml` shows, the required fields the official
Python models insist on, status handling, and `generation`. Cluster-IP and node-port
allocation live in `allocation.py` because they need the store's other Services.

Deliberate departure: a `status` sent with a *create* is kept for Pods, Services, Nodes and
Ingresses (a real server drops it). There is no kubelet to report pod IPs and readiness and no
cloud or ingress controller to fill `status.loadBalancer`, so manifests carry them instead.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bridge.testing.kube import errors, formats, servicekinds
from bridge.testing.kube.errors import FieldError
from bridge.testing.kube.formats import DNS1035_LABEL_MSG, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG
from bridge.testing.kube.jsonvalue import clone
from bridge.testing.kube.resources import ResourceType

JSON = dict[str, Any]

# The patterns pods and ingresses still match against; the messages their errors carry.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

# Fields an update to metadata may not touch; the server keeps the stored values.
_SERVER_OWNED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "selfLink",
    "managedFields",
)


def now() -> str:
    """An RFC 3339 timestamp with second precision, as metav1.Time serializes."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(value: str) -> str:
    """Normalize an RFC 3339 time to metav1.MicroTime's six fractional digits in UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # fromisoformat before 3.11 rejects arbitrary fraction lengths; pad/trim to microseconds.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if not match:
        raise ValueError(value)
    fraction = (match.group(2) or ".0")[1:7].ljust(6, "0")
    parsed = datetime.fromisoformat(f"{match.group(1)}.{fraction}{match.group(3)}")
    if parsed.tzinfo is None:
        raise ValueError(value)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- names ------------------------------------------------------------------------------


def name_errors(rt: ResourceType, name: str, field: str = "metadata.name") -> list[FieldError]:
    """Validate an object name with the rule the real type uses: `NameIsDNS1035Label` for
    Services, `ValidateNamespaceName` (a DNS-1123 label) for namespaces, the path-segment rule
    for RBAC objects, `NameIsDNSSubdomain` for the rest (EndpointSlices and Leases too)."""
    if rt.group == "rbac.authorization.k8s.io":
        return [FieldError("Invalid", field, name, msg) for msg in path_segment_errors(name)]
    if rt.plural == "services":
        return formats.invalid(field, name, formats.dns1035_label(name))
    if rt.plural == "namespaces":
        return formats.invalid(field, name, formats.dns1123_label(name))
    return formats.invalid(field, name, formats.dns1123_subdomain(name))


def path_segment_errors(name: str) -> list[str]:
    """apimachinery's path.IsValidPathSegmentName, the name rule of RBAC objects (`system:masters` is valid)."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in name]


def _metadata_errors(rt: ResourceType, obj: JSON) -> list[FieldError]:
    """ValidateObjectMeta's name, label and annotation checks."""
    meta = obj["metadata"]
    found = name_errors(rt, meta.get("name", ""))
    found += formats.labels_errors(meta.get("labels") or {}, "metadata.labels")
    found += formats.annotations_errors(meta.get("annotations") or {}, "metadata.annotations")
    return found


# --- create / update ----------------------------------------------------------------------


# With no kubelet or cloud controller here, a status given on create stands in for theirs.
KEEPS_STATUS = ("pods", "services", "nodes", "ingresses")


def prepare_create(rt: ResourceType, body: JSON, *, keep_status: bool) -> JSON:
    """The object as it will be stored, before naming, allocation and validation."""
    obj = clone(body)
    meta = obj.get("metadata")
    if meta is None:
        meta = obj["metadata"] = {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    for key in (*_SERVER_OWNED_META, "resourceVersion"):
        meta.pop(key, None)
    if rt.status_subresource and not (keep_status and rt.plural in KEEPS_STATUS):
        obj.pop("status", None)
    apply_defaults(rt, obj)
    if rt.has_generation:
        meta["generation"] = 1
    return obj


def prepare_update(rt: ResourceType, old: JSON, body: JSON, *, subresource: str | None) -> JSON:
    """Merge an update request onto the stored object the way the registry would."""
    if subresource == "status":
        # The status endpoint changes status only; everything else stays as stored.
        obj = clone(old)
        if "status" in body:
            obj["status"] = clone(body["status"])
        else:
            obj.pop("status", None)
        apply_defaults(rt, obj)
        return obj
    obj = clone(body)
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    for key in _SERVER_OWNED_META:
        if key in old["metadata"]:
            meta[key] = clone(old["metadata"][key])
        else:
            meta.pop(key, None)
    if rt.status_subresource:
        if "status" in old:
            obj["status"] = clone(old["status"])
        else:
            obj.pop("status", None)
    if rt.plural == "services":
        _service_update_fixups(old, obj)
    apply_defaults(rt, obj)
    if rt.has_generation:
        changed = _without_meta_status(old) != _without_meta_status(obj)
        meta["generation"] = old["metadata"].get("generation", 1) + (1 if changed else 0)
    return obj


_NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def _service_update_fixups(old: JSON, new: JSON) -> None:
    """The service REST's `patchAllocatedValues` and `dropTypeDependentFields`.

    A replace that leaves out allocated values (cluster IPs, node ports) keeps the allocated
    ones, which is what lets `kubectl apply` and create-or-replace work without echoing them;
    fields that only make sense for the old type are dropped when the type changes, unless
    the client set them to something new.
    """
    o, n = old.get("spec") or {}, new.get("spec")
    if not isinstance(n, dict):
        return
    otype, ntype = o.get("type", "ClusterIP"), n.get("type", "ClusterIP")
    if otype != "ExternalName" and ntype != "ExternalName":
        if not n.get("clusterIP") and not n.get("clusterIPs"):
            for key in ("clusterIP", "clusterIPs"):
                if o.get(key):
                    n[key] = clone(o[key])
        elif n.get("clusterIP") == o.get("clusterIP") and not n.get("clusterIPs") and o.get("clusterIPs"):
            n["clusterIPs"] = clone(o["clusterIPs"])
        if n.get("clusterIP") == o.get("clusterIP"):
            for key in ("ipFamilies", "ipFamilyPolicy"):
                if not n.get(key) and o.get(key):
                    n[key] = clone(o[key])
    if otype in _NODE_PORT_TYPES and ntype in _NODE_PORT_TYPES:
        for port in n.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                for before in o.get("ports") or []:
                    if (
                        before.get("port") == port.get("port")
                        and before.get("nodePort")
                        and before.get("protocol", "TCP") == port.get("protocol", "TCP")
                    ):
                        port["nodePort"] = before["nodePort"]
                        break
        if not n.get("healthCheckNodePort") and o.get("healthCheckNodePort"):
            n["healthCheckNodePort"] = o["healthCheckNodePort"]
    if otype in _NODE_PORT_TYPES and ntype not in _NODE_PORT_TYPES:
        old_node_ports = {p.get("nodePort") for p in o.get("ports") or []}
        for port in n.get("ports") or []:
            if isinstance(port, dict) and port.get("nodePort") in old_node_ports:
                port.pop("nodePort")
        for key in ("healthCheckNodePort", "externalTrafficPolicy", "allocateLoadBalancerNodePorts"):
            if key in n and n.get(key) == o.get(key):
                n.pop(key)
    if ntype == "ExternalName" and otype != "ExternalName":
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
            if key in n and n.get(key) == o.get(key):
                n.pop(key)


def _without_meta_status(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def validate(rt: ResourceType, obj: JSON, old: JSON | None = None) -> list[FieldError]:
    """All validation failures for the object as it would be stored."""
    found = _metadata_errors(rt, obj)
    check = _rules()[1].get(rt.plural)
    if check is not None:
        found += check(obj, old)
    return found


# --- defaults ---------------------------------------------------------------------------


def apply_defaults(rt: ResourceType, obj: JSON) -> None:
    fill = _rules()[0].get(rt.plural)
    if fill is not None:
        fill(obj)


def _default_namespace(obj: JSON) -> None:
    meta = obj["metadata"]
    # The apiserver stamps this label on every namespace so selectors can pick namespaces.
    labels = meta.get("labels") or {}
    labels["kubernetes.io/metadata.name"] = meta.get("name", "")
    meta["labels"] = labels
    spec = obj.get("spec") or {}
    spec.setdefault("finalizers", ["kubernetes"])
    obj["spec"] = spec
    status = obj.get("status") or {}
    status.setdefault("phase", "Active")
    obj["status"] = status


def _default_service(obj: JSON) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    if spec.get("selector") == {}:
        # An empty map does not survive the round trip through etcd: it reads back as absent.
        spec.pop("selector")
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            if not port.get("protocol"):
                port["protocol"] = "TCP"
            # SetDefaults_Service: an unset, 0 or "" targetPort is the port.
            if kind != "ExternalName" and port.get("targetPort") in (None, 0, "") and "port" in port:
                port["targetPort"] = port["port"]
    if kind != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if kind in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if kind == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    status.setdefault("loadBalancer", {})


def _pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_pod(obj: JSON) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        spec = obj["spec"] = {}
    default_pod_spec(spec)
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    # The kubelet keeps podIP and podIPs[0] in step; manifests often give only one of them.
    if status.get("podIP") and not status.get("podIPs"):
        status["podIPs"] = [{"ip": status["podIP"]}]
    elif status.get("podIPs") and not status.get("podIP"):
        first = status["podIPs"][0]
        if isinstance(first, dict) and first.get("ip"):
            status["podIP"] = first["ip"]
    if "phase" not in status:
        ready = any(c.get("type") == "Ready" for c in status.get("conditions") or [] if isinstance(c, dict))
        status["phase"] = "Running" if status.get("podIP") or ready else "Pending"
    status.setdefault("qosClass", "BestEffort")


def default_pod_spec(spec: JSON) -> None:
    """The PodSpec defaults, shared by Pods and the pod templates of workloads."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("imagePullPolicy", _pull_policy(str(container.get("image", ""))))
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            container.setdefault("resources", {})
            for port in container.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _default_endpoint_slice(obj: JSON) -> None:
    servicekinds.decode_endpoint_slice(obj)
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            if port.get("name") is None:
                port["name"] = ""
            if port.get("protocol") is None:  # a pointer: only a missing one is defaulted
                port["protocol"] = "TCP"


def _default_endpoints(obj: JSON) -> None:
    for subset in obj.get("subsets") or []:
        if isinstance(subset, dict):
            for port in subset.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


def _default_ingress(obj: JSON) -> None:
    # IngressStatus and its loadBalancer are structs, not pointers: they always serialize.
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    if not isinstance(status.get("loadBalancer"), dict):
        status["loadBalancer"] = {}


def _default_lease(obj: JSON) -> None:
    spec = obj.get("spec") or {}
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if isinstance(value, str):
            try:
                spec[key] = micro_time(value)
            except ValueError:
                raise errors.bad_request(
                    f'Lease in version "v1" cannot be handled as a Lease: parsing time "{value}" '
                    'as "2006-01-02T15:04:05.000000Z07:00": cannot parse'
                ) from None


_DEFAULTERS = {
    "namespaces": _default_namespace,
    "services": _default_service,
    "pods": _default_pod,
    "endpointslices": _default_endpoint_slice,
    "endpoints": _default_endpoints,
    "ingresses": _default_ingress,
    "leases": _default_lease,
}


# --- validation -------------------------------------------------------------------------

def _port_number_errors(value: Any, field: str) -> list[FieldError]:
    if not isinstance(value, int) or isinstance(value, bool):
        return (
            [FieldError("Required", field)]
            if value in (None, 0)
            else [FieldError("Invalid", field, value, "must be between 1 and 65535, inclusive")]
        )
    if not 1 <= value <= 65535:
        return [FieldError("Invalid", field, value, "must be between 1 and 65535, inclusive")]
    return []


def _validate_pod(obj: JSON, old: JSON | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    found = pod_spec_errors(spec, "spec")
    for i, entry in enumerate((obj.get("status") or {}).get("podIPs") or []):
        ip = entry.get("ip") if isinstance(entry, dict) else None
        if not _is_ip(ip):
            found.append(FieldError("Invalid", f"status.podIPs[{i}].ip", ip, "must be a valid IP address"))
    if old is not None and _mutable_pod_spec(old.get("spec") or {}, spec) != spec:
        found.append(
            FieldError(
                "Forbidden",
                "spec",
                None,
                "pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                "(allow it to be set to 1 if it was previously negative)",
            )
        )
    return found


def pod_spec_errors(spec: JSON, where: str) -> list[FieldError]:
    """ValidatePodSpec's checks that manifests trip over; `where` is the spec's field path."""
    found: list[FieldError] = []
    containers = spec.get("containers") or []
    if not containers:
        found.append(FieldError("Required", f"{where}.containers"))
    seen: set[str] = set()
    for i, container in enumerate(containers):
        path = f"{where}.containers[{i}]"
        if not isinstance(container, dict):
            found.append(FieldError("Invalid", path, container, "must be an object"))
            continue
        name = container.get("name", "")
        if not name:
            found.append(FieldError("Required", f"{path}.name"))
        elif not _DNS1123_LABEL.fullmatch(name):
            found.append(FieldError("Invalid", f"{path}.name", name, DNS1123_LABEL_MSG))
        elif name in seen:
            found.append(FieldError("Duplicate", f"{path}.name", name))
        seen.add(name)
        if not container.get("image"):
            found.append(FieldError("Required", f"{path}.image"))
        for j, port in enumerate(container.get("ports") or []):
            ppath = f"{path}.ports[{j}]"
            found += _port_number_errors(port.get("containerPort"), f"{ppath}.containerPort")
            found += servicekinds.protocol_errors(port, f"{ppath}.protocol")
            if port.get("name"):
                found += formats.check(formats.port_name, port["name"], f"{ppath}.name")
    for key in ("hostname", "subdomain"):
        value = spec.get(key)
        if value and not _DNS1123_LABEL.fullmatch(value):
            found.append(FieldError("Invalid", f"{where}.{key}", value, DNS1123_LABEL_MSG))
    return found


def _mutable_pod_spec(old: JSON, new: JSON) -> JSON:
    """The old spec with only the fields a pod update may change taken from the new one."""
    merged = clone(old)
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        if key in new:
            merged[key] = clone(new[key])
        else:
            merged.pop(key, None)
    for key in ("containers", "initContainers"):
        olds, news = merged.get(key) or [], new.get(key) or []
        if len(olds) == len(news):
            for o, n in zip(olds, news, strict=True):
                if isinstance(o, dict) and isinstance(n, dict) and "image" in n:
                    o["image"] = n["image"]
    return merged


def _is_ip(value: Any, family: str | None = None) -> bool:
    if not isinstance(value, str):
        return False
    return _parses_as_ip(value, family)


@functools.lru_cache(maxsize=65536)
def _parses_as_ip(value: str, family: str | None) -> bool:
    # Cached: controllers re-validate the same endpoint addresses on every slice rewrite.
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return False
    return family is None or (family == "IPv4") == (parsed.version == 4)


def _validate_endpoints(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    for i, subset in enumerate(obj.get("subsets") or []):
        for key in ("addresses", "notReadyAddresses"):
            for j, address in enumerate(subset.get(key) or []):
                ip = address.get("ip") if isinstance(address, dict) else None
                if not ip:
                    found.append(FieldError("Required", f"subsets[{i}].{key}[{j}].ip"))
                elif not _is_ip(ip):
                    found.append(FieldError("Invalid", f"subsets[{i}].{key}[{j}].ip", ip, "must be a valid IP address"))
        ports = subset.get("ports") or []
        for j, port in enumerate(ports):
            found += _port_number_errors(port.get("port"), f"subsets[{i}].ports[{j}].port")
            found += servicekinds.protocol_errors(port, f"subsets[{i}].ports[{j}].protocol")
            if len(ports) > 1 and not port.get("name"):
                found.append(FieldError("Required", f"subsets[{i}].ports[{j}].name"))
    return found


_PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _ingress_host_errors(host: Any, field: str) -> list[FieldError]:
    """A rule or TLS host: a DNS-1123 subdomain, optionally with a leading `*.` label."""
    if not isinstance(host, str):
        return [FieldError("Invalid", field, host, "must be a string")]
    found: list[FieldError] = []
    if _parses_as_ip(host, None):
        found.append(FieldError("Invalid", field, host, "must be a DNS name, not an IP address"))
    if host.startswith("*."):
        if len(host) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(host[2:]):
            found.append(
                FieldError(
                    "Invalid",
                    field,
                    host,
                    "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS "
                    "subdomain, which must consist of lower case alphanumeric characters, '-' or "
                    "'.' and end with an alphanumeric character (e.g. '*.example.com', regex used "
                    "for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                )
            )
    elif len(host) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(host):
        found.append(FieldError("Invalid", field, host, DNS1123_SUBDOMAIN_MSG))
    return found


def _ingress_backend_errors(backend: Any, field: str) -> list[FieldError]:
    """networking/validation's validateIngressBackend: one Service (name, port) or a resource."""
    if not isinstance(backend, dict):
        return [FieldError("Invalid", field, "", "resource or service backend is required")]
    service, resource = backend.get("service"), backend.get("resource")
    if service is not None and resource is not None:
        return [FieldError("Invalid", field, "", "cannot set both resource and service backends")]
    if resource is not None:
        if not isinstance(resource, dict) or not resource.get("kind"):
            return [FieldError("Required", f"{field}.resource.kind", None, "kind is required")]
        if not resource.get("name"):
            return [FieldError("Required", f"{field}.resource.name", None, "name is required")]
        return []
    if not isinstance(service, dict):
        return [FieldError("Invalid", field, "", "resource or service backend is required")]
    found: list[FieldError] = []
    name = service.get("name")
    if not name:
        found.append(FieldError("Required", f"{field}.service.name"))
    elif not isinstance(name, str) or len(name) > 63 or not _DNS1035_LABEL.fullmatch(name):
        found.append(FieldError("Invalid", f"{field}.service.name", name, DNS1035_LABEL_MSG))
    port = service.get("port") or {}
    if not isinstance(port, dict):
        port = {}
    port_name, number = port.get("name") or "", port.get("number") or 0
    if port_name and number:
        found.append(FieldError("Invalid", field, "", "cannot set both port name & port number"))
    elif port_name:
        found += formats.check(formats.port_name, port_name, f"{field}.service.port.name")
    elif number:
        found += _port_number_errors(number, f"{field}.service.port.number")
    else:
        found.append(FieldError("Required", field, None, "port name or number is required"))
    return found


def _validate_ingress(obj: JSON, old: JSON | None) -> list[FieldError]:
    """The parts of ValidateIngressSpec a client of Ingresses can trip over."""
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return [FieldError("Invalid", "spec", spec, "must be an object")]
    found: list[FieldError] = []
    rules = spec.get("rules") or []
    default = spec.get("defaultBackend")
    if not rules and default is None:
        found.append(FieldError("Invalid", "spec", None, "either `defaultBackend` or `rules` must be specified"))
    if default is not None:
        found += _ingress_backend_errors(default, "spec.defaultBackend")
    if not isinstance(rules, list):
        return [*found, FieldError("Invalid", "spec.rules", rules, "must be a list")]
    for i, rule in enumerate(rules):
        where = f"spec.rules[{i}]"
        if not isinstance(rule, dict):
            found.append(FieldError("Invalid", where, rule, "must be an object"))
            continue
        if rule.get("host"):
            found += _ingress_host_errors(rule["host"], f"{where}.host")
        http = rule.get("http")
        if http is None:
            continue
        paths = http.get("paths") if isinstance(http, dict) else None
        if not paths:
            found.append(FieldError("Required", f"{where}.http.paths"))
            continue
        for j, path in enumerate(paths):
            at = f"{where}.http.paths[{j}]"
            if not isinstance(path, dict):
                found.append(FieldError("Invalid", at, path, "must be an object"))
                continue
            path_type, value = path.get("pathType"), path.get("path") or ""
            if path_type is None:
                found.append(FieldError("Required", f"{at}.pathType", None, "pathType must be specified"))
                continue
            if path_type not in _PATH_TYPES:
                found.append(
                    FieldError(
                        "NotSupported",
                        f"{at}.pathType",
                        path_type,
                        'supported values: "Exact", "ImplementationSpecific", "Prefix"',
                    )
                )
            elif (path_type != "ImplementationSpecific" or value) and not str(value).startswith("/"):
                found.append(FieldError("Invalid", f"{at}.path", value, "must be an absolute path"))
            found += _ingress_backend_errors(path.get("backend"), f"{at}.backend")
    for i, tls in enumerate(spec.get("tls") or []):
        for j, host in enumerate((tls.get("hosts") if isinstance(tls, dict) else None) or []):
            found += _ingress_host_errors(host, f"spec.tls[{i}].hosts[{j}]")
    for i, entry in enumerate(((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []):
        ip = entry.get("ip") if isinstance(entry, dict) else None
        if ip and not _is_ip(ip):
            found.append(
                FieldError("Invalid", f"status.loadBalancer.ingress[{i}].ip", ip, "must be a valid IP address")
            )
    return found


def _validate_lease(obj: JSON, old: JSON | None) -> list[FieldError]:
    """coordination/validation.ValidateLeaseSpec."""
    spec = obj.get("spec") or {}
    found: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        found.append(FieldError("Invalid", "spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        found.append(FieldError("Invalid", "spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    strategy = spec.get("strategy")
    if strategy is not None:
        # ValidateCoordinatedLeaseStrategy; upstream names the field twice (".strategy.strategy").
        if "/" not in strategy and strategy != "OldestEmulationVersion":
            found.append(FieldError("NotSupported", "spec.strategy.strategy", strategy,
                                    'supported values: "OldestEmulationVersion"'))
        elif "/" in strategy:
            found += formats.check(formats.label_key, strategy, "spec.strategy.strategy")
    if spec.get("preferredHolder") and not strategy:
        found.append(FieldError("Forbidden", "spec.preferredHolder", None,
                                "may only be specified if `strategy` is defined"))
    return found


def _validate_node(obj: JSON, old: JSON | None) -> list[FieldError]:
    found: list[FieldError] = []
    addresses = (obj.get("status") or {}).get("addresses") or []
    for i, address in enumerate(addresses):
        if not isinstance(address, dict) or not address.get("type"):
            found.append(FieldError("Required", f"status.addresses[{i}].type"))
        elif address.get("type") in ("InternalIP", "ExternalIP") and not _is_ip(address.get("address")):
            found.append(FieldError("Invalid", f"status.addresses[{i}].address", address.get("address"),
                                    "must be a valid IP address"))
    return found


_VALIDATORS = {
    "nodes": _validate_node,
    "services": servicekinds.validate_service,
    "pods": _validate_pod,
    "endpointslices": servicekinds.validate_endpoint_slice,
    "endpoints": _validate_endpoints,
    "ingresses": _validate_ingress,
    "leases": _validate_lease,
}


@functools.cache
def _rules() -> tuple[dict[str, Callable[[JSON], None]], dict[str, Callable[[JSON, JSON | None], list[FieldError]]]]:
    """(defaulters, validators) by plural, including the kinds whose rules live in their own modules.

    Imported here, not at the top: those modules build on the helpers in this one.
    """
    from bridge.testing.kube import appkinds, configkinds, rbackinds

    defaulters: dict[str, Callable[[JSON], None]] = {
        **_DEFAULTERS,
        "configmaps": configkinds.default_config_map,
        "secrets": configkinds.default_secret,
        "deployments": appkinds.default_deployment,
        "poddisruptionbudgets": appkinds.default_pod_disruption_budget,
        "rolebindings": rbackinds.default_binding,
        "clusterrolebindings": rbackinds.default_binding,
    }
    validators: dict[str, Callable[[JSON, JSON | None], list[FieldError]]] = {
        **_VALIDATORS,
        "configmaps": configkinds.validate_config_map,
        "secrets": configkinds.validate_secret,
        "serviceaccounts": configkinds.validate_service_account,
        "deployments": appkinds.validate_deployment,
        "poddisruptionbudgets": appkinds.validate_pod_disruption_budget,
        "roles": rbackinds.validate_role,
        "clusterroles": rbackinds.validate_cluster_role,
        "rolebindings": rbackinds.validate_role_binding,
        "clusterrolebindings": rbackinds.validate_cluster_role_binding,
    }
    return defaulters, validators
