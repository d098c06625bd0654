"""Taking over what consul-k8s's catalog sync registered (`sync.adopt_node`).

PURE. consul-k8s registers every instance on one node of its own (`k8s-sync` unless its
`-consul-node-name` says otherwise), marked `external-source: kubernetes` with the
Service's namespace in `external-k8s-ns`; the bridge computes the same names and IDs
(`naming.py`), so it registers the same instances again on its own node. What consul-k8s
left on its node is deregistered only for a Service the bridge syncs, and only once every
registration the bridge wants for that Service is in Consul as wanted: the instance is
then answered from the bridge's node before it goes from consul-k8s's, and a passing
instance is never missing from `/v1/health/service/<name>?passing`. The rest is left
alone: the bridge never deletes what it does not own, and consul-k8s's node is the one
exception, the user's to opt into.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bridge.catalog.plan import Registration


@dataclass(frozen=True)
class Takeover:
    """consul-k8s's registrations sorted by what happens to them now."""

    remove: tuple[Registration, ...] = ()  # the bridge's own are in place: deregister
    waiting: tuple[Registration, ...] = ()  # synced, the bridge's own not all in place yet
    kept: tuple[Registration, ...] = ()  # no Service the bridge syncs: never touched


def takeover(leftovers: Mapping[str, Registration], wanted: Mapping[str, Registration],
             actual: Mapping[str, Registration], synced: Collection[tuple[str, str]]) -> Takeover:
    """Which of consul-k8s's registrations (`leftovers`, by service ID) go now: those of a
    Service in `synced` (Consul name, namespace) whose `wanted` registrations are all in
    `actual`, what Consul holds on the bridge's node, exactly as wanted."""
    kept = [reg for reg in leftovers.values() if (reg.name, reg.namespace) not in synced]
    if len(kept) == len(leftovers):
        return Takeover(kept=tuple(sorted(kept)))
    # A Service with any registration missing or different (not written yet, held back
    # after Consul rejected it, a write that failed) keeps consul-k8s's for now.
    unsettled = {(reg.name, reg.namespace) for sid, reg in wanted.items()
                 if not _in_place(actual.get(sid), reg)}
    remove: list[Registration] = []
    waiting: list[Registration] = []
    for reg in leftovers.values():
        service = (reg.name, reg.namespace)
        if service in synced:
            (waiting if service in unsettled else remove).append(reg)
    return Takeover(tuple(sorted(remove)), tuple(sorted(waiting)), tuple(sorted(kept)))


def _in_place(held: Registration | None, reg: Registration) -> bool:
    # The same object after our own write: equal without comparing field by field.
    return held is reg or (held is not None and held == reg)
