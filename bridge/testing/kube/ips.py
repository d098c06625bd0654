"""IP address rules of endpoint addresses, as the API server applies them. Pure.

Two upstream checks run on every address of an IPv4 or IPv6 EndpointSlice
(`pkg/apis/discovery/validation.validateEndpoints`), each adding its own errors:

- the syntax, `apimachinery/pkg/util/validation.IsValidIPv4Address` / `IsValidIPv6Address`
  in their strict form (KEP-4858, `isValidIPInternal`): no leading zeros in IPv4 octets,
  no IPv4-mapped IPv6 (`::ffff:1.2.3.4`), no zone (`%eth0`), and the family of the slice.
  Servers before the strict form accepted leading zeros and, in IPv4 slices, mapped
  addresses; whatever passes here passes there too;
- the ranges, `pkg/apis/core/validation.ValidateEndpointIP` (once `ValidateNonSpecialIP`):
  not unspecified, not loopback (127.0.0.0/8, ::1), not link-local unicast (169.254.0.0/16,
  fe80::/10), not link-local multicast (224.0.0.0/24, ff02::/16 and the other flag nibbles,
  as Go's `net.IP.IsLinkLocalMulticast`).
"""

from __future__ import annotations

import functools
import ipaddress
import re

from bridge.testing.kube.errors import FieldError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_DOTTED_QUAD = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


def _sloppy(value: str) -> IP | None:
    """netutils.ParseIPSloppy: Go 1.17's net.ParseIP, which reads IPv4 octets with leading
    zeros as decimal and knows no zones."""
    quad = _DOTTED_QUAD.fullmatch(value)
    if quad:
        octets = [int(o) for o in quad.groups()]
        return ipaddress.IPv4Address(".".join(map(str, octets))) if max(octets) <= 255 else None
    if "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def _syntax(value: str, family: str) -> tuple[str, ...]:
    # Cached: an EndpointSlice is validated whole on every rewrite.
    try:
        ip = ipaddress.ip_address(value)  # like netip.ParseAddr: strict octets, zones allowed
    except ValueError:
        if _sloppy(value) is not None:
            return ("IP address cannot have leading 0s",)
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
                return ("expected an IP address (e.g. 10.9.8.7 or 2001:db8::ffff), got CIDR value",)
            except ValueError:
                pass
        return ("must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)",)
    found: list[str] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            found.append("IP address with zone specifier is not allowed")
        if ip.ipv4_mapped is not None:
            found.append("IPv4-mapped IPv6 address is not allowed")
    if not found and (ip.version == 4) != (family == "IPv4"):
        found.append(f"must be an {family} address")
    return tuple(found)


def syntax_errors(value: str, family: str, field: str) -> list[FieldError]:
    """IsValidIPv4Address (`family` "IPv4") or IsValidIPv6Address ("IPv6"), strict form."""
    if not value:
        return [FieldError("Required", field, None, "expected an IP address")]
    return [FieldError("Invalid", field, value, msg) for msg in _syntax(value, family)]


_V4_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_V4_LL_UNICAST = ipaddress.ip_network("169.254.0.0/16")
_V4_LL_MULTICAST = ipaddress.ip_network("224.0.0.0/24")
_V6_LL_UNICAST = ipaddress.ip_network("fe80::/10")


def _refusal(ip: IP, text: str) -> str | None:
    """Why ValidateEndpointIP refuses `ip` (written `text`), or None. The ranges are
    disjoint, so at most one applies; Go's net.IP sees an IPv4-mapped address as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    v4 = isinstance(ip, ipaddress.IPv4Address)
    if ip.is_unspecified:
        return f"may not be unspecified ({text})"
    if ip in _V4_LOOPBACK if v4 else ip.is_loopback:
        return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if ip in (_V4_LL_UNICAST if v4 else _V6_LL_UNICAST):
        return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    if ip in _V4_LL_MULTICAST if v4 else (ip.packed[0] == 0xFF and ip.packed[1] & 0x0F == 0x02):
        return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
    return None


def endpoint_ip_errors(value: str, field: str) -> list[FieldError]:
    """ValidateEndpointIP: an address an endpoint may not have."""
    ip = _sloppy(value)
    if ip is None:
        return [FieldError("Invalid", field, value, "must be a valid IP address")]
    detail = _refusal(ip, value)
    return [FieldError("Invalid", field, value, detail)] if detail else []
