"""Addresses as record data: IP literals read, and turned into A and AAAA data (pure).

The catalog holds addresses as text; the answerers (`answer.py`, `consul_domain.py`, and
`zone_index.py` for the cluster zone's index) turn them into `A`/`AAAA` data once per
catalog with these helpers, and leave out what is not an address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from bridge.dns.query import IPAddress
from bridge.dns.records import AAAA, A, QType

Address = A | AAAA  # an address as its record data: built once per catalog, shared

# A dotted quad as `ipaddress` writes it (no leading zeros): the usual address, matched
# much faster than `ipaddress` parses it.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def ip_address(value: str) -> IPAddress | None:
    """An IP address literal, None if `value` is not one (or is a scoped IPv6 address)."""
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id:
        return None
    return parsed


def address_record(address: IPAddress) -> Address:
    return A(str(address)) if address.version == 4 else AAAA(str(address))


def address_data(value: str) -> Address | None:
    """`address_record(ip_address(value))`: the record data of an address, None if it is
    not one."""
    if _IPV4.fullmatch(value):
        return A(value)
    parsed = ip_address(value)
    return None if parsed is None else address_record(parsed)


def address_records(values: Sequence[str]) -> tuple[Address, ...]:
    """The record data of the addresses among `values` (the others are left out)."""
    return tuple(address_record(ip) for ip in map(ip_address, values) if ip)


def of_family(addresses: Sequence[Address], qtype: int) -> list[Address]:
    """The addresses of the qtype's family (A or AAAA), each once, in order (13, 16)."""
    kind = A if qtype == QType.A else AAAA
    return [a for a in {a.address: a for a in addresses}.values() if type(a) is kind]
