"""Where a name outside our zones is forwarded: its zone's upstreams, healthy ones first.

`ForwardZones` maps each zone of `dns.forward_zones` (and `.`, every other name:
`dns.upstreams` or resolv.conf's) to a `Group`; the most specific zone containing the
question wins (`route`). A group orders its upstreams for each query by `dns.forward_policy`
(sequential or random), with those that failed `MAX_FAILS` times in a row (`Health.down`)
after the rest: a failing upstream is skipped until it answers again, as CoreDNS's
`forward` does. The forwarder (`forwarder.py`) reports what each upstream did.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence

from bridge.dns.packet import walk_name
from bridge.dns.upstream import Upstream, format_upstream

log = logging.getLogger(__name__)

MAX_FAILS = 2  # CoreDNS forward: max_fails 2
SEQUENTIAL, RANDOM = "sequential", "random"
ROOT = "."


class Health:
    """One upstream's record: failures in a row, and whether it counts as down."""

    __slots__ = ("address", "down", "fails")

    def __init__(self, address: Upstream) -> None:
        self.address = address
        self.fails = 0
        self.down = False

    def __repr__(self) -> str:
        return f"Health({format_upstream(self.address)}, fails={self.fails}, down={self.down})"

    def failed(self) -> bool:
        """One more failure; True when this one makes it down."""
        self.fails += 1
        if self.fails >= MAX_FAILS and not self.down:
            self.down = True
            log.warning("dns upstream %s failed %d times in a row: skipped until it answers "
                        "again", format_upstream(self.address), self.fails)
            return True
        return False

    def answered(self) -> None:
        if self.down:
            log.info("dns upstream %s answers again", format_upstream(self.address))
        self.fails = 0
        self.down = False


class Group:
    """The upstreams of one zone, in the order a query tries them (`order`)."""

    def __init__(self, zone: str, upstreams: Sequence[Health], policy: str = SEQUENTIAL,
                 rng: random.Random | None = None) -> None:
        if not upstreams:
            raise ValueError(f"zone {zone!r}: no upstream")
        if policy not in (SEQUENTIAL, RANDOM):
            raise ValueError(f"policy must be {SEQUENTIAL} or {RANDOM}, not {policy!r}")
        self.zone = zone
        self.upstreams = tuple(upstreams)
        self.policy = policy
        self._rng = rng or random.Random()

    def order(self) -> list[Health]:
        """Healthy upstreams (in policy order), then those that are down: when all are
        down, they are still tried, as CoreDNS does when every health check fails."""
        healthy = [u for u in self.upstreams if not u.down]
        down = [u for u in self.upstreams if u.down]
        if self.policy == RANDOM:
            self._rng.shuffle(healthy)
            self._rng.shuffle(down)
        return healthy + down


def zone_wire(zone: str) -> bytes:
    """A zone name in lower-case wire form (`.` is the root: one zero byte)."""
    labels = [label for label in zone.lower().strip(".").split(".") if label]
    return b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\0"


class ForwardZones:
    """Zone -> `Group`; `route` finds the group of a query's question."""

    def __init__(self, zones: Mapping[str, Sequence[Upstream]], policy: str = SEQUENTIAL,
                 rng: random.Random | None = None) -> None:
        health: dict[Upstream, Health] = {}  # one record per address, shared by zones
        self.groups: dict[bytes, Group] = {}
        for zone, upstreams in zones.items():
            if not upstreams:
                continue
            members = [health.setdefault(u, Health(u)) for u in dict.fromkeys(upstreams)]
            self.groups[zone_wire(zone)] = Group(ROOT if zone.strip(".") == "" else
                                                 zone.lower().strip("."), members, policy, rng)
        self.health: tuple[Health, ...] = tuple(health.values())

    def __bool__(self) -> bool:
        return bool(self.groups)

    @property
    def zones(self) -> list[str]:
        return [group.zone for group in self.groups.values()]

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return tuple(h.address for h in self.health)

    def route(self, packet: bytes) -> Group | None:
        """The group of the most specific zone holding the query's question name, or None
        (no zone holds it, or the question cannot be read)."""
        walked = walk_name(packet)
        if walked is None:
            return None
        end, offsets = walked
        name = packet[12:end].lower()
        groups = self.groups
        for at in offsets:
            group = groups.get(name[at - 12:])
            if group is not None:
                return group
        return groups.get(b"\0")


def zones_from(forward_zones: Mapping[str, Iterable[Upstream]], default: Sequence[Upstream]
               ) -> dict[str, tuple[Upstream, ...]]:
    """`dns.forward_zones` with `.` filled in from the default upstreams (unless given)."""
    zones = {zone: tuple(upstreams) for zone, upstreams in forward_zones.items()}
    if ROOT not in zones and default:
        zones[ROOT] = tuple(default)
    return zones
