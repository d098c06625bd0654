"""Registrations as values, and the difference between two sets of them.

PURE. `to_consul.desired()` says what Consul should hold for this cluster; `diff()`
compares that with what the Consul sink reports as ours and yields only the writes
needed. An unchanged world gives an empty plan, which is what makes restarts and
periodic resyncs write nothing. A plan may also carry `adopt`: registrations consul-k8s
left on its own node that the bridge has taken over (`catalog/adopt.py`), deregistered
from that node.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace

OWNER_META = "bridge-owner"
EXTERNAL_SOURCE = "kubernetes"
CHECK_NAME = "Kubernetes Readiness Check"
CHECK_TYPE = "kubernetes-readiness"


@dataclass(frozen=True, slots=True, order=True)
class Registration:
    """One service instance on our synthetic node, with its readiness check."""

    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    check_status: str = "passing"  # passing | critical | "" for no check (as consul-k8s)
    weight: int = 1  # Weights.Passing; Warning stays 1

    @property
    def namespace(self) -> str:
        return dict(self.meta).get("external-k8s-ns", "")

    @property
    def check_id(self) -> str:
        return f"{self.namespace}/{self.service_id}"

    def same_service(self, other: Registration) -> bool:
        """Equal but for the check's status: a readiness flip, one check write."""
        return self.check_id == other.check_id and \
            replace(self, check_status=other.check_status) == other


@dataclass(frozen=True)
class Plan:
    create: tuple[Registration, ...] = ()
    update: tuple[Registration, ...] = ()
    delete: tuple[Registration, ...] = ()
    # service ID -> what Consul holds now, for each update (so a write can be the minimum)
    replaced: Mapping[str, Registration] = field(default_factory=dict, compare=False)
    # consul-k8s's registrations on `sync.adopt_node` taken over: deregistered from there
    adopt: tuple[Registration, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete or self.adopt)

    def __len__(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete) + len(self.adopt)

    def counts(self) -> dict[str, int]:
        counts = {"create": len(self.create), "update": len(self.update), "delete": len(self.delete)}
        if self.adopt:
            counts["adopt"] = len(self.adopt)
        return counts

    def describe(self) -> Iterator[str]:
        for verb, regs in (("register", (*self.create, *self.update)), ("deregister", self.delete),
                           ("deregister consul-k8s's", self.adopt)):
            for reg in regs:
                yield f"{verb} {reg.service_id} ({reg.name} {reg.address}:{reg.port})"


def diff(wanted: Mapping[str, Registration], actual: Mapping[str, Registration],
         only: Collection[str] | None = None) -> Plan:
    """Only the writes that make `actual` equal `wanted`. `only`: the service IDs that can
    differ (the caller knows the rest are equal); None: any."""
    create: list[Registration] = []
    update: list[Registration] = []
    replaced: dict[str, Registration] = {}
    pairs = wanted.items() if only is None else \
        [(sid, wanted[sid]) for sid in only if sid in wanted]
    for sid, reg in pairs:
        held = actual.get(sid)
        if held is None:
            create.append(reg)
        elif held is not reg and held != reg:  # the same object after our own write: equal
            update.append(reg)
            replaced[sid] = held
    if only is not None:
        delete = [actual[sid] for sid in only if sid in actual and sid not in wanted]
    elif len(wanted) - len(create) == len(actual):
        delete = []  # every registration of `actual` matched one of `wanted`
    else:
        delete = [actual[sid] for sid in actual.keys() - wanted.keys()]  # a set operation in C
    return Plan(tuple(sorted(create)), tuple(sorted(update)), tuple(sorted(delete)), replaced)
