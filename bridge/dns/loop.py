"""Forwarding loops: a query this server forwarded that comes back to it (`LoopGuard`).

An upstream that forwards to us again (resolv.conf naming a node cache that forwards to the
bridge, `dns.upstreams` naming the bridge's own Service) would bounce every outside query
until the timeouts end it. A query is our own come back when it carries the ID and the
question of a query we have out upstream (`Forwarder.sent`), or when it is one of the probes
sent once at start through each forward zone: `<random>.<random>.<zone>` HINFO, as CoreDNS's
`loop` plugin sends, recognised by every worker. Either way it is answered SERVFAIL (never
forwarded again) and counted; the first one is logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Container, Iterable

from bridge.dns.forward_zones import zone_wire
from bridge.dns.packet import HEADER, RD, question_end

log = logging.getLogger(__name__)

HINFO = 13
_HINFO_IN = HINFO.to_bytes(2, "big") + b"\x00\x01"


def new_token() -> str:
    """The two random numbers of the probe names (shared by every worker process)."""
    return f"{secrets.randbits(63)}.{secrets.randbits(63)}"


class LoopGuard:
    """Recognises our own queries coming back; counts them and reports the first."""

    def __init__(self, token: str, zones: Iterable[str]) -> None:
        self.token = token
        self.probes: dict[bytes, str] = {}
        for zone in zones:
            name = token if zone in (".", "") else f"{token}.{zone}"
            self.probes[zone_wire(name)] = zone
        self.count = 0
        self.reported = False

    def probe_queries(self) -> list[tuple[str, bytes]]:
        """(zone, query) of each probe: `HINFO IN <token>.<zone>`, recursion desired."""
        return [(zone, os.urandom(2) + HEADER.pack(RD, 1, 0, 0, 0) + name + _HINFO_IN)
                for name, zone in self.probes.items()]

    def came_back(self, packet: bytes, sent: Container[bytes]) -> bool:
        """True when `packet` is a query we forwarded (same ID and question as one out
        upstream now) or one of our probes."""
        end = question_end(packet)
        if not end:
            return False
        question = packet[12:end].lower()
        if packet[:2] + question in sent:
            return True
        return question.endswith(_HINFO_IN) and question[:-4] in self.probes

    def report(self, packet: bytes, peer: object) -> None:
        """Count one loop; log the first."""
        self.count += 1
        if self.reported:
            return
        self.reported = True
        end = question_end(packet)
        name = _text(packet[12:end - 4]) if end else "?"
        log.warning("dns forwarding loop: the query for %s this server forwarded came back "
                    "to it (from %s); answered SERVFAIL instead of forwarding it again. An "
                    "upstream in dns.upstreams, dns.forward_zones or resolv.conf forwards "
                    "to this server (reported once)", name, peer)


def _text(wire: bytes) -> str:
    labels, at = [], 0
    while at < len(wire) and wire[at]:
        labels.append(wire[at + 1:at + 1 + wire[at]].decode("latin-1"))
        at += wire[at] + 1
    return ".".join(labels) + "."
