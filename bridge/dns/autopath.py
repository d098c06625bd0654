"""Autopath: a pod's search-path walk done by the server on its first step (`Autopath`).

A pod with `ndots: 5` asks for `api.example.com` as `api.example.com.<ns>.svc.<zone>`,
then `.svc.<zone>`, then `.<zone>`, then the name itself: four NXDOMAIN round trips (eight
with A and AAAA) before the answer. When the server knows the client's namespace (a
sidecar's own: `dns.autopath_namespace`; the central bridge's: the pod at the client's
address, with `dns.pods: verified`), it answers the first expansion that is NXDOMAIN by
trying the rest of the search path itself, and gives the first answer that is not NXDOMAIN
with a CNAME from the asked name to the found one (CoreDNS `autopath`, checklist 60). The
server (`server.py`) walks the `candidates`, asking its table, its cache, or upstream.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from bridge.dns.encode import wire
from bridge.dns.packet import walk_name
from bridge.dns.query import Name, zone_labels
from bridge.dns.zone_index import ZoneIndex


class Autopath:
    """The search path of the cluster's pods: `<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`,
    then `search` (the server's own resolv.conf search domains outside the zone, as
    CoreDNS appends its own), then the name itself."""

    def __init__(self, zone: str, namespace: str = "", search: Sequence[str] = ()) -> None:
        self.zone: Name = zone_labels(zone)
        self.namespace = namespace.lower()
        tried = {self.zone, ("svc", *self.zone)}
        self.search: tuple[Name, ...] = tuple(
            labels for labels in (zone_labels(domain) for domain in search if domain.strip("."))
            if labels not in tried and labels[-len(self.zone):] != self.zone)

    def namespace_of(self, index: ZoneIndex, address: str) -> str | None:
        """The client's namespace: the configured one, else that of the pod at `address`."""
        if self.namespace:
            return self.namespace
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return index.pod_namespace(str(ip))

    def candidates(self, packet: bytes, namespace: str) -> list[bytes] | None:
        """The queries to try after `packet`'s NXDOMAIN, in order: `packet` with its name's
        `<namespace>.svc.<zone>` replaced by each later search element. None when the name
        is not below `<namespace>.svc.<zone>` (then it is not a search expansion)."""
        walked = walk_name(packet)
        if walked is None:
            return None
        end, offsets = walked
        first = (namespace, "svc", *self.zone)
        base = len(offsets) - len(first)
        if base < 1:
            return None
        tail = packet[offsets[base]:end].lower()
        if tail != wire(first):
            return None
        head, asked, rest = packet[:12], packet[12:offsets[base]], packet[end:]
        out = []
        for element in (("svc", *self.zone), self.zone, *self.search, ()):
            name = asked + wire(element)
            if len(name) <= 255:
                out.append(head + name + rest)
        return out
