"""Registrations as values, and the difference between two sets of them.

PURE. `to_consul.desired()` says what Consul should hold for this cluster; `diff()`
compares that with what the Consul sink reports as ours and yields only the writes
needed. An unchanged world gives an empty plan, which is what makes restarts and
periodic resyncs write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
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

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def __len__(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


def diff(wanted: Mapping[str, Registration], actual: Mapping[str, Registration]) -> Plan:
    """Only the writes that make `actual` equal `wanted`."""
    create: list[Registration] = []
    update: list[Registration] = []
    replaced: dict[str, Registration] = {}
    for sid, reg in wanted.items():
        held = actual.get(sid)
        if held is None:
            create.append(reg)
        elif held is not reg and held != reg:  # the same object after our own write: equal
            update.append(reg)
            replaced[sid] = held
    delete = [r for sid, r in actual.items() if sid not in wanted]
    return Plan(tuple(sorted(create)), tuple(sorted(update)), tuple(sorted(delete)), replaced)
