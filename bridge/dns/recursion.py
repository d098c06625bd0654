"""Who may have names outside our zones forwarded for them (`dns.allow_recursion`).

A DNS server on a public address that forwards for anyone is an open resolver, used for
amplification attacks. `ClientNetworks` says whether a client address is in the allowed
networks (by default loopback and the non-public ranges); the others get REFUSED for names
outside our zones and our zones' answers as usual.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MAX_VERDICTS = 4096  # client addresses remembered; emptied when full


class ClientNetworks:
    """Allowed client networks, with the verdict for each address seen remembered."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._verdicts: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts = {}
            verdict = self._verdicts[address] = self._check(address)
        return verdict

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack socket
        return any(ip in network for network in self.networks if network.version == ip.version)
