"""The controllers a real cluster runs for these resources, run synchronously after each write.

- `EndpointsController` does the work of kube-controller-manager's EndpointSlice and
  Endpoints controllers: for every Service with a selector (and not ExternalName) it keeps
  EndpointSlices and the legacy Endpoints object in step with the matching Pods of the
  Service's namespace. The rules (who is listed, ready/serving/terminating, hostname,
  named target ports, one slice per address family and port set, at most 100 endpoints per
  slice, a placeholder slice when there are no endpoints) follow
  `pkg/controller/endpointslice` and `pkg/controller/endpoint`.
- `NamespaceLifecycle` removes a Terminating namespace once its last object is gone.

Both are driven by the store's change feed inside the store lock, so by the time a write
returns to its client the slices already reflect it: tests need no waiting. They write only
what differs from the desired state, so an unrelated write does not churn resourceVersions,
and they ignore the change events their own writes produce.

Known simplifications: there are no Node objects, so endpoints carry no `zone`; slice and
Endpoints objects carry no `last-change-trigger-time` annotation; packing of endpoints into
slices keeps endpoints where they are and fills gaps, but does not rebalance like the real
controller.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bridge.testing.kube.allocation import ServiceAllocator
from bridge.testing.kube.errors import StatusError
from bridge.testing.kube.jsonvalue import clone
from bridge.testing.kube.resources import NAMESPACES
from bridge.testing.kube.watchers import DELETED, Change

if TYPE_CHECKING:
    from bridge.testing.kube.store import Store

JSON = dict[str, Any]

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
MAX_ENDPOINTS_ADDRESSES = 1000


def install(store: Store, *, max_endpoints_per_slice: int = 100) -> None:
    """Wire the default admission hook and controllers into a store."""
    store.admission.append(ServiceAllocator())
    store.controllers.append(EndpointsController(max_endpoints_per_slice))
    store.controllers.append(NamespaceLifecycle())


class NamespaceLifecycle:
    """Finishes deleting a Terminating namespace when its last object disappears."""

    def handle(self, store: Store, change: Change) -> None:
        if change.type != DELETED or not change.namespace:
            return
        ns = store.peek(NAMESPACES, None, change.namespace)
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            store.finalize_namespace(change.namespace)


# --- pod facts ----------------------------------------------------------------------------


def pod_ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_ips(pod: JSON) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(e["ip"]) for e in status.get("podIPs") or [] if isinstance(e, dict) and e.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def ip_family(ip: str) -> str:
    # Pod IPs are validated on write, so the separator alone tells the families apart.
    return "IPv6" if ":" in ip else "IPv4"


def should_be_listed(pod: JSON, *, include_terminating: bool) -> bool:
    """endpointutil.ShouldPodBeInEndpoints: not terminal, has an IP, maybe not terminating."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if not pod_ips(pod):
        return False
    return include_terminating or not pod["metadata"].get("deletionTimestamp")


def should_set_hostname(pod: JSON, service: JSON) -> bool:
    spec = pod.get("spec") or {}
    return (
        bool(spec.get("hostname"))
        and spec.get("subdomain") == service["metadata"]["name"]
        and (pod["metadata"].get("namespace") == service["metadata"].get("namespace"))
    )


def find_port(pod: JSON, service_port: JSON) -> int | None:
    """The pod's port for a Service port: a numeric targetPort, or a named containerPort."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    protocol = service_port.get("protocol", "TCP")
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def _selector_matches(selector: dict[str, str], obj: JSON | None) -> bool:
    if obj is None:
        return False
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _ports_key(ports: list[JSON] | None) -> tuple[tuple[Any, ...], ...]:
    return tuple((p.get("name"), p.get("protocol"), p.get("port"), p.get("appProtocol")) for p in ports or [])


def _address_types(service: JSON) -> list[str]:
    spec = service.get("spec") or {}
    families = [f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    if families:
        return families
    ips = [ip for ip in spec.get("clusterIPs") or [] if ip and ip != "None"]
    if ips:
        return [ip_family(ip) for ip in ips]
    return ["IPv4", "IPv6"]


class EndpointsController:
    """Maintains EndpointSlices and Endpoints for Services with selectors."""

    def __init__(self, max_endpoints_per_slice: int = 100) -> None:
        self.max_per_slice = max_endpoints_per_slice
        self._own_writes: set[int] = set()

    # --- change routing ------------------------------------------------------------------

    def handle(self, store: Store, change: Change) -> None:
        if change.rv in self._own_writes:
            self._own_writes.discard(change.rv)
            return
        if change.resource == "services":
            if change.type == DELETED:
                self._cleanup(store, change.namespace, change.name, endpoints_too=True)
            else:
                self.sync(store, change.namespace, change.name)
        elif change.resource == "pods":
            for service in list(store.live("services", change.namespace)):
                selector = (service.get("spec") or {}).get("selector")
                if selector and (_selector_matches(selector, change.obj) or _selector_matches(selector, change.prev)):
                    self.sync(store, change.namespace, service["metadata"]["name"])
        elif change.resource == "endpointslices":
            # Someone else edited or deleted a slice we manage: put it back, as the real one does.
            labels = change.obj["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME and labels.get(SERVICE_NAME_LABEL):
                self.sync(store, change.namespace, labels[SERVICE_NAME_LABEL])
        elif change.resource == "endpoints":
            owner = store.peek("services", change.namespace, change.name)
            if owner is not None and (owner.get("spec") or {}).get("selector"):
                self.sync(store, change.namespace, change.name)

    def sync(self, store: Store, namespace: str, name: str) -> None:
        """Bring one Service's slices and Endpoints in line with its pods."""
        service = store.peek("services", namespace, name)
        if service is None:
            self._cleanup(store, namespace, name, endpoints_too=True)
            return
        spec = service.get("spec") or {}
        selector = spec.get("selector")
        if not selector or spec.get("type") == "ExternalName":
            # No managed slices; a selector-less Service's Endpoints belong to the user.
            self._cleanup(store, namespace, name, endpoints_too=False)
            return
        pods = [p for p in store.live("pods", namespace) if _selector_matches(selector, p)]
        self._sync_slices(store, service, pods)
        self._sync_endpoints(store, service, pods)

    # --- writes --------------------------------------------------------------------------

    def _write(
        self, action: str, store: Store, resource: str, namespace: str, body: JSON | None = None, name: str = ""
    ) -> None:
        try:
            if action == "create":
                assert body is not None
                result = store.create(resource, namespace, body, detach=False)
            elif action == "update":
                assert body is not None
                result, _ = store.put(resource, namespace, name, body, detach=False)
            else:
                result, _ = store.delete(resource, namespace, name, detach=False)
        except StatusError as exc:
            # A real controller would log and retry; here the cause is always a concurrent
            # cleanup (e.g. a namespace being deleted), which makes the write moot.
            log.debug("endpoints controller: %s %s %s/%s: %s", action, resource, namespace, name, exc)
            return
        self._own_writes.add(int(result["metadata"]["resourceVersion"]))

    def _managed_slices(self, store: Store, namespace: str, name: str) -> list[JSON]:
        return [
            s
            for s in store.live("endpointslices", namespace)
            if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == CONTROLLER_NAME
        ]

    def _cleanup(self, store: Store, namespace: str, name: str, *, endpoints_too: bool) -> None:
        for piece in self._managed_slices(store, namespace, name):
            self._write("delete", store, "endpointslices", namespace, name=piece["metadata"]["name"])
        if endpoints_too and store.peek("endpoints", namespace, name) is not None:
            self._write("delete", store, "endpoints", namespace, name=name)

    # --- EndpointSlices ------------------------------------------------------------------

    def _slice_meta(self, service: JSON) -> JSON:
        meta = service["metadata"]
        labels = {
            k: v
            for k, v in (meta.get("labels") or {}).items()
            if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)
        }
        labels[SERVICE_NAME_LABEL] = meta["name"]
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        if (service.get("spec") or {}).get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        return {
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }

    def _service_ports(self, service: JSON, pod: JSON) -> list[JSON] | None:
        spec = service.get("spec") or {}
        ports: list[JSON] = []
        for service_port in spec.get("ports") or []:
            number = find_port(pod, service_port)
            if number is None:
                continue  # the real controller logs and leaves this port out for this pod
            port: JSON = {
                "name": service_port.get("name", ""),
                "protocol": service_port.get("protocol", "TCP"),
                "port": number,
            }
            if service_port.get("appProtocol"):
                port["appProtocol"] = service_port["appProtocol"]
            ports.append(port)
        return ports

    def _slice_endpoint(self, service: JSON, pod: JSON, address_type: str) -> JSON | None:
        addresses = [ip for ip in pod_ips(pod) if ip_family(ip) == address_type]
        if not addresses:
            return None
        serving = pod_ready(pod)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
        # Never ready while terminating, unless the Service publishes not-ready addresses.
        ready = publish or (serving and not terminating)
        endpoint: JSON = {
            "addresses": addresses[:1],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        }
        if should_set_hostname(pod, service):
            endpoint["hostname"] = pod["spec"]["hostname"]
        meta = pod["metadata"]
        endpoint["targetRef"] = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            endpoint["nodeName"] = node
        return endpoint

    def _sync_slices(self, store: Store, service: JSON, pods: list[JSON]) -> None:
        namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
        address_types = _address_types(service)
        desired: dict[tuple[str, Any], list[JSON]] = {}
        ports_of: dict[tuple[str, Any], list[JSON]] = {}
        for pod in pods:
            if not should_be_listed(pod, include_terminating=True):
                continue
            ports = self._service_ports(service, pod) or []
            for address_type in address_types:
                endpoint = self._slice_endpoint(service, pod, address_type)
                if endpoint is None:
                    continue
                key = (address_type, _ports_key(ports))
                desired.setdefault(key, []).append(endpoint)
                ports_of[key] = ports
        meta = self._slice_meta(service)
        existing = self._managed_slices(store, namespace, name)

        if not desired:
            # With nothing to list the controller still keeps one empty placeholder slice.
            keep = next(
                (
                    s
                    for s in existing
                    if s.get("addressType") == address_types[0] and not s.get("endpoints") and not s.get("ports")
                ),
                None,
            )
            for piece in existing:
                if piece is not keep:
                    self._write("delete", store, "endpointslices", namespace, name=piece["metadata"]["name"])
            self._put_slice(store, keep, meta, address_types[0], None, None)
            return

        grouped: dict[tuple[str, Any], list[JSON]] = {}
        for piece in existing:
            key = (piece.get("addressType", ""), _ports_key(piece.get("ports")))
            if key in desired:
                grouped.setdefault(key, []).append(piece)
            else:
                self._write("delete", store, "endpointslices", namespace, name=piece["metadata"]["name"])
        for key, endpoints in desired.items():
            self._pack(store, key, endpoints, grouped.get(key, []), meta, ports_of[key])

    def _pack(
        self,
        store: Store,
        key: tuple[str, Any],
        endpoints: list[JSON],
        slices: list[JSON],
        meta: JSON,
        ports: list[JSON],
    ) -> None:
        def identity(endpoint: JSON) -> str:
            return str((endpoint.get("targetRef") or {}).get("uid") or endpoint["addresses"][0])

        # Endpoints stay in the slice they are already in; new ones fill gaps, then new slices.
        pending = {identity(e): e for e in endpoints}
        plans: list[tuple[JSON | None, list[JSON]]] = []
        for piece in slices:
            kept = []
            for old in piece.get("endpoints") or []:
                found = pending.pop(identity(old), None)
                if found is not None:
                    kept.append(found)
            plans.append((piece, kept))
        leftover = [e for e in endpoints if identity(e) in pending]
        for _, kept in plans:
            room = self.max_per_slice - len(kept)
            if room > 0 and leftover:
                kept.extend(leftover[:room])
                leftover = leftover[room:]
        while leftover:
            plans.append((None, leftover[: self.max_per_slice]))
            leftover = leftover[self.max_per_slice :]
        for target, kept in plans:
            if not kept and target is not None:
                self._write("delete", store, "endpointslices", meta["namespace"], name=target["metadata"]["name"])
            elif kept:
                self._put_slice(store, target, meta, key[0], kept, ports or None)

    def _put_slice(
        self,
        store: Store,
        current: JSON | None,
        meta: JSON,
        address_type: str,
        endpoints: list[JSON] | None,
        ports: list[JSON] | None,
    ) -> None:
        body: JSON = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": clone(meta),
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": ports,
        }
        if current is None:
            self._write("create", store, "endpointslices", meta["namespace"], body)
            return
        cur_meta = current["metadata"]
        same = (
            current.get("addressType") == address_type
            and current.get("endpoints") == endpoints
            and current.get("ports") == ports
            and cur_meta.get("labels") == meta["labels"]
            and cur_meta.get("ownerReferences") == meta["ownerReferences"]
        )
        if same:
            return
        # Shallow copies suffice: the store clones what it is given and nothing here mutates
        # the stored object's nested values.
        updated = {**current, "addressType": address_type, "endpoints": endpoints, "ports": ports}
        updated["metadata"] = {**cur_meta, "labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}
        self._write("update", store, "endpointslices", meta["namespace"], updated, cur_meta["name"])

    # --- legacy Endpoints ---------------------------------------------------------------

    def _sync_endpoints(self, store: Store, service: JSON, pods: list[JSON]) -> None:
        spec = service.get("spec") or {}
        meta = service["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        publish = bool(spec.get("publishNotReadyAddresses"))
        family = _address_types(service)[0]
        headless = spec.get("clusterIP") == "None"
        subsets: dict[Any, JSON] = {}
        for pod in pods:
            if not should_be_listed(pod, include_terminating=publish):
                continue
            ip = next((i for i in pod_ips(pod) if ip_family(i) == family), None)
            if ip is None:
                continue
            address: JSON = {"ip": ip}
            if should_set_hostname(pod, service):
                address["hostname"] = pod["spec"]["hostname"]
            if (pod.get("spec") or {}).get("nodeName"):
                address["nodeName"] = pod["spec"]["nodeName"]
            address["targetRef"] = {
                "kind": "Pod",
                "namespace": namespace,
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
            ports = []
            for port in self._service_ports(service, pod) or []:
                entry: JSON = {"port": port["port"], "protocol": port["protocol"]}
                if port["name"]:
                    entry = {"name": port["name"], **entry}
                if port.get("appProtocol"):
                    entry["appProtocol"] = port["appProtocol"]
                ports.append(entry)
            if not ports and not (headless and not spec.get("ports")):
                continue
            subset = subsets.setdefault(_ports_key(ports), {"addresses": [], "notReadyAddresses": [], "ports": ports})
            ready = publish or pod_ready(pod)
            subset["addresses" if ready else "notReadyAddresses"].append(address)

        total = 0
        truncated = False
        result: list[JSON] = []
        for key in sorted(subsets, key=repr):
            subset = subsets[key]
            out: JSON = {}
            for field in ("addresses", "notReadyAddresses"):
                listed = sorted(subset[field], key=lambda a: (a["ip"], a["targetRef"]["uid"]))
                room = MAX_ENDPOINTS_ADDRESSES - total
                if len(listed) > room:
                    listed, truncated = listed[: max(room, 0)], True
                total += len(listed)
                if listed:
                    out[field] = listed
            if subset["ports"]:
                out["ports"] = subset["ports"]
            if "addresses" in out or "notReadyAddresses" in out:
                result.append(out)

        labels = dict(meta.get("labels") or {})
        labels.pop(HEADLESS_LABEL, None)
        if headless:
            labels[HEADLESS_LABEL] = ""
        current = store.peek("endpoints", namespace, name)
        annotations = dict((current or {}).get("metadata", {}).get("annotations") or {})
        if truncated:
            annotations[OVER_CAPACITY_ANNOTATION] = "truncated"
        else:
            annotations.pop(OVER_CAPACITY_ANNOTATION, None)
        if current is None:
            body: JSON = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace}}
        else:
            body = {**current, "metadata": dict(current["metadata"])}
        if labels:
            body["metadata"]["labels"] = labels
        else:
            body["metadata"].pop("labels", None)
        if annotations:
            body["metadata"]["annotations"] = annotations
        else:
            body["metadata"].pop("annotations", None)
        if result:
            body["subsets"] = result
        else:
            body.pop("subsets", None)
        if current is None:
            self._write("create", store, "endpoints", namespace, body)
        elif body != current:
            self._write("update", store, "endpoints", namespace, body, name)
