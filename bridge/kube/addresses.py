"""Which instance addresses an EndpointSlice may hold, and in which form. Pure.

The API server refuses, in an EndpointSlice, the addresses no endpoint can have
(`ValidateEndpointIP` in kubernetes pkg/apis/core/validation): unspecified (0.0.0.0, ::),
loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10) and link-local
multicast (224.0.0.0/24, ff02::/16 with any flags: Go's `IsLinkLocalMulticast`); and, since
KEP-4858, an IPv4-mapped IPv6 address or one with a zone (`%eth0`). A Consul instance may
register any of these (a local agent's 127.0.0.1 is common), so the bridge leaves them out
of what it writes to Kubernetes (DNS still answers them) and says why; an IPv4-mapped
address is written as the IPv4 address it holds.
"""

from __future__ import annotations

import ipaddress

_V4_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_V4_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
_V4_LINK_LOCAL_MULTICAST = ipaddress.ip_network("224.0.0.0/24")
_V6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")


def _refused_range(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, ipaddress.IPv4Address):
        ranges = ((_V4_LOOPBACK, "loopback"), (_V4_LINK_LOCAL, "link-local"),
                  (_V4_LINK_LOCAL_MULTICAST, "link-local multicast"))
        return next((what for network, what in ranges if ip in network), None)
    if ip.is_loopback:
        return "loopback"
    if ip in _V6_LINK_LOCAL:
        return "link-local"
    if ip.packed[0] == 0xFF and ip.packed[1] & 0x0F == 0x02:
        return "link-local multicast"
    return None


def endpoint_address(address: str) -> tuple[str, str] | str:
    """(family, address as written) for an address an EndpointSlice may hold, else the
    reason it may not, to be logged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "an address with a zone"
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    refused = _refused_range(ip)
    if refused:
        return f"the Kubernetes API refuses {refused} addresses in EndpointSlices"
    return ("IPv4" if ip.version == 4 else "IPv6"), str(ip)
