"""Cluster-IP and node-port allocation for Services, as the apiserver's service REST does it.

Runs as an admission hook inside the store's write path, before a Service is stored, so a
create answers with its `clusterIP`/`clusterIPs`/`ipFamilies`/`ipFamilyPolicy` and node ports
already set, exactly like a real server. The fake cluster is dual-stack: IPv4 from
10.96.0.0/12 (primary) and IPv6 from fd00:10:96::/112 (kind's default).

Allocations are derived from the Services currently stored rather than kept in a separate
bitmap, so a deleted Service frees its addresses with no bookkeeping that could drift.
Dynamic picks are random (seeded by the store) from the upper part of each range, leaving the
lower band for addresses users ask for explicitly, as KEP-3070 does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.testing.kube.errors import FieldError
from bridge.testing.kube.resources import ResourceType

if TYPE_CHECKING:
    from bridge.testing.kube.store import Store

JSON = dict[str, Any]

FAMILIES = ("IPv4", "IPv6")
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


def _family(ip: str) -> str | None:
    try:
        return "IPv4" if ipaddress.ip_address(ip).version == 4 else "IPv6"
    except ValueError:
        return None


class ServiceAllocator:
    """Assigns and validates `spec.clusterIP(s)`, IP families and node ports."""

    def __init__(
        self,
        *,
        ipv4_range: str = "10.96.0.0/12",
        ipv6_range: str = "fd00:10:96::/112",
        node_ports: tuple[int, int] = (30000, 32767),
    ) -> None:
        self.ranges = {"IPv4": ipaddress.ip_network(ipv4_range), "IPv6": ipaddress.ip_network(ipv6_range)}
        self.node_ports = node_ports

    def admit(self, store: Store, rt: ResourceType, old: JSON | None, new: JSON) -> list[FieldError]:
        if rt.plural != "services":
            return []
        spec = new["spec"]
        if spec.get("type", "ClusterIP") == "ExternalName":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
            return []
        meta = new["metadata"]

        def others() -> list[JSON]:
            # Only a Service that takes a cluster IP or a node port needs the others (a scan
            # of every Service): a headless ClusterIP one, the common kind in bulk, does not.
            return [
                s
                for s in store.live("services")
                if (s["metadata"]["namespace"], s["metadata"]["name"]) != (meta.get("namespace"), meta["name"])
            ]

        found = self._cluster_ips(store, spec, others)
        found += self._node_ports(store, spec, others)
        return found

    # --- cluster IPs ---------------------------------------------------------------------

    def _cluster_ips(self, store: Store, spec: JSON, others: Callable[[], list[JSON]]) -> list[FieldError]:
        found: list[FieldError] = []
        cluster_ip = spec.get("clusterIP") or ""
        given: list[str] = list(spec.get("clusterIPs") or ([cluster_ip] if cluster_ip else []))
        if cluster_ip and given and given[0] != cluster_ip:
            return [FieldError("Invalid", "spec.clusterIPs", given, "element [0] must match clusterIP")]
        headless = bool(given) and given[0] == "None"
        families: list[str] = list(spec.get("ipFamilies") or [])
        policy = spec.get("ipFamilyPolicy")
        for i, family in enumerate(families):
            if family not in FAMILIES:
                found.append(
                    FieldError("NotSupported", f"spec.ipFamilies[{i}]", family, 'supported values: "IPv4", "IPv6"')
                )
        if len(set(families)) != len(families):
            found.append(FieldError("Duplicate", "spec.ipFamilies", families))
        if policy is not None and policy not in POLICIES:
            found.append(
                FieldError(
                    "NotSupported",
                    "spec.ipFamilyPolicy",
                    policy,
                    'supported values: "PreferDualStack", "RequireDualStack", "SingleStack"',
                )
            )
        if found:
            return found

        if headless:
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            if policy is None:
                # Headless Services without a selector default to both families.
                policy = "SingleStack" if spec.get("selector") else "RequireDualStack"
        else:
            given_families = [_family(ip) for ip in given]
            for i, fam in enumerate(given_families):
                if fam is None:
                    found.append(
                        FieldError(
                            "Invalid",
                            f"spec.clusterIPs[{i}]",
                            given[i],
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )
                    )
            if found:
                return found
            if not families:
                families = [f for f in given_families if f is not None]
            if policy is None:
                policy = "SingleStack" if len(families) <= 1 else "RequireDualStack"
        if not families:
            families = ["IPv4"]
        if policy == "SingleStack" and len(families) > 1:
            return [
                FieldError(
                    "Invalid",
                    "spec.ipFamilyPolicy",
                    policy,
                    "must be 'RequireDualStack' or 'PreferDualStack' when multiple 'ipFamilies' are specified",
                )
            ]
        if policy != "SingleStack" and len(families) == 1:
            families.append("IPv6" if families[0] == "IPv4" else "IPv4")
        spec["ipFamilies"], spec["ipFamilyPolicy"] = families, policy
        if headless:
            return []

        used = {ip for s in others() for ip in (s.get("spec") or {}).get("clusterIPs") or []}
        ips: list[str] = []
        for i, family in enumerate(families):
            if i < len(given):
                ip = given[i]
                problem = self._check_ip(ip, family, i, used)
                if problem:
                    return [FieldError("Invalid", "spec.clusterIPs", given, problem)]
            else:
                ip = self._pick_ip(store, family, used)
            used.add(ip)
            ips.append(ip)
        spec["clusterIP"], spec["clusterIPs"] = ips[0], ips
        return []

    def _check_ip(self, ip: str, family: str, index: int, used: set[str]) -> str | None:
        if _family(ip) != family:
            return f"expected an {family} value as indicated by `ipFamilies[{index}]`"
        network = self.ranges[family]
        if ipaddress.ip_address(ip) not in network:
            return (
                f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {network}"
            )
        if ip in used:
            return f"failed to allocate IP {ip}: provided IP is already allocated"
        return None

    def _pick_ip(self, store: Store, family: str, used: set[str]) -> str:
        network = self.ranges[family]
        size = network.num_addresses
        static_band = min(max(16, size // 16), 256)
        low, high = static_band, size - (2 if family == "IPv4" else 1)
        for _ in range(10_000):
            candidate = str(network.network_address + store.random.randint(low, high))
            if candidate not in used:
                return candidate
        raise RuntimeError(f"the {family} service range {network} is full")

    # --- node ports ----------------------------------------------------------------------

    def _node_ports(self, store: Store, spec: JSON, others: Callable[[], list[JSON]]) -> list[FieldError]:
        kind = spec.get("type", "ClusterIP")
        wants = kind == "NodePort" or (kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True))
        if kind not in ("NodePort", "LoadBalancer"):
            spec.pop("healthCheckNodePort", None)
            return []
        used: set[int] = set()
        for s in others():
            other = s.get("spec") or {}
            used.update(p["nodePort"] for p in other.get("ports") or [] if p.get("nodePort"))
            if other.get("healthCheckNodePort"):
                used.add(other["healthCheckNodePort"])
        low, high = self.node_ports
        found: list[FieldError] = []
        for i, port in enumerate(spec.get("ports") or []):
            requested = port.get("nodePort")
            if requested:
                problem = None
                if not low <= requested <= high:
                    problem = f"provided port is not in the valid range. The range of valid ports is {low}-{high}"
                elif requested in used:
                    problem = "provided port is already allocated"
                if problem:
                    found.append(FieldError("Invalid", f"spec.ports[{i}].nodePort", requested, problem))
                used.add(requested)
            elif wants:
                port["nodePort"] = self._pick_port(store, used)
                used.add(port["nodePort"])
        if kind == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local":
            if not spec.get("healthCheckNodePort"):
                spec["healthCheckNodePort"] = self._pick_port(store, used)
        else:
            spec.pop("healthCheckNodePort", None)
        return found

    def _pick_port(self, store: Store, used: set[int]) -> int:
        low, high = self.node_ports
        size = high - low + 1
        # Kubernetes' portallocator (calculateRangeOffset): the lowest min(max(16, size/32), 128)
        # ports are a band for Services that name their port; picks come from above it first,
        # so a Service asking for 30000 does not find it taken by a random pick.
        offset = 0 if size <= 16 else min(max(16, size // 32), 128)
        for first, last in ((low + offset, high), (low, low + offset - 1)):
            if sum(1 for port in used if first <= port <= last) >= last - first + 1:
                continue  # this band is full (or empty)
            while True:
                candidate = store.random.randint(first, last)
                if candidate not in used:
                    return candidate
        raise RuntimeError("the node port range is full")
