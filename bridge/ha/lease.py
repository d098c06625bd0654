"""The Lease object: its spec as a record, and the store that reads and writes it.

`LeaseRecord` is client-go's `LeaderElectionRecord` over a `coordination.k8s.io/v1` Lease
spec (resourcelock/leaselock.go: `LeaseSpecToLeaderElectionRecord` and back). Timestamps
are kept as the text the server holds: they are compared for change, never for time, since
another replica's clock is not ours (client-go's leaderelection.go says the same).

`LeaseStore` is the seam the elector talks through; `KubeLeaseStore` is it on `KubeClient`.
Every write is a replace of the object last read or stored, so its resourceVersion makes
the write optimistic: a 409 (`Conflict`) means someone else wrote first.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bridge.errors import Transient

if TYPE_CHECKING:  # the kubernetes package is loaded only where a Kubernetes client is built
    from bridge.kube.client import KubeClient


def micro_time(wall: float) -> str:
    """A `metav1.MicroTime` as the API server writes it (RFC 3339, microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """Who holds the Lease, for how long they claim it, and how often it changed hands."""

    holder: str = ""
    duration: int = 0  # leaseDurationSeconds
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @staticmethod
    def of(lease: Mapping[str, Any]) -> LeaseRecord:
        """The record in a Lease object; absent fields read as empty, as in client-go."""
        spec = lease.get("spec")
        if not isinstance(spec, Mapping):
            spec = {}
        return LeaseRecord(
            holder=_str(spec.get("holderIdentity")),
            duration=_int(spec.get("leaseDurationSeconds")),
            acquire_time=_str(spec.get("acquireTime")),
            renew_time=_str(spec.get("renewTime")),
            transitions=_int(spec.get("leaseTransitions")),
        )

    def spec(self) -> dict[str, Any]:
        """The Lease spec for this record (`LeaderElectionRecordToLeaseSpec`)."""
        spec: dict[str, Any] = {"holderIdentity": self.holder,
                                "leaseDurationSeconds": self.duration,
                                "leaseTransitions": self.transitions}
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


class LeaseStore(Protocol):
    """One Lease on one API server. Raises bridge.errors: Conflict when the object changed
    or already exists, Transient or Rejected otherwise."""

    def describe(self) -> str: ...

    def get(self) -> dict[str, Any] | None:
        """The Lease object, None if there is none."""
        ...

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Creates the Lease with this spec; returns it as stored."""
        ...

    def replace(self, lease: Mapping[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """Writes `lease` (as last read or stored, resourceVersion included) with a new spec."""
        ...


class KubeLeaseStore:
    """The Lease `name` in `namespace`, through the bridge's Kubernetes client."""

    def __init__(self, client: KubeClient, namespace: str, name: str, timeout: float) -> None:
        self._client = client
        self.namespace = namespace
        self.name = name
        self._timeout = timeout

    def describe(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    def get(self) -> dict[str, Any] | None:
        return self._client.read("leases", self.namespace, self.name, timeout=self._timeout)

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        return self._stored(self._client.write("create", "leases", self.namespace, self.name, body,
                                               timeout=self._timeout))

    def replace(self, lease: Mapping[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        body = {**lease, "spec": spec}
        return self._stored(self._client.write("replace", "leases", self.namespace, self.name, body,
                                               timeout=self._timeout))

    @staticmethod
    def _stored(obj: dict[str, Any] | None) -> dict[str, Any]:
        if obj is None:  # create and replace always answer the object
            raise Transient("the API server answered a Lease write without the object")
        return obj
