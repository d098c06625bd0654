"""Registrations as values, and the difference between two sets of them.

PURE. `to_consul.desired()` says what Consul should hold for this cluster; `diff()`
compares that with what the Consul sink reports as ours and yields only the writes
needed. An unchanged world gives an empty plan, which is what makes restarts and
periodic resyncs write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Plan:
    create: tuple[Registration, ...] = ()
    update: tuple[Registration, ...] = ()
    delete: tuple[Registration, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def __len__(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)


def diff(wanted: Mapping[str, Registration], actual: Mapping[str, Registration]) -> Plan:
    """Only the writes that make `actual` equal `wanted`."""
    create = [r for sid, r in wanted.items() if sid not in actual]
    update = [r for sid, r in wanted.items() if sid in actual and actual[sid] != r]
    delete = [r for sid, r in actual.items() if sid not in wanted]
    return Plan(tuple(sorted(create)), tuple(sorted(update)), tuple(sorted(delete)))
