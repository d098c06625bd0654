"""The sink seam: what the reconciler asks of anything it writes to.

PURE. A sink says what it holds (`actual()`) and applies a plan (`apply()`), returning
the outcome of every item of the plan: written, failed with the reason (it may go through
if tried again: a timeout, a conflict, the bridge stopping before it was sent), or rejected
with the server's reason (the server refused it as it is: it is tried again only once it
changes, or at the periodic resync, so one bad item never holds up the pass or the rest).
Nothing is swallowed. The Consul and Kubernetes sinks both implement it, and the reconciler
drives them alike; only how each one's plan is built differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

K = TypeVar("K")  # how the sink names one item: a service ID, an object's key
A_co = TypeVar("A_co", covariant=True)  # what `actual()` reports
P_contra = TypeVar("P_contra", contravariant=True)  # the plan `apply()` takes


@dataclass
class ApplyResult(Generic[K]):
    """Per-item outcome of one apply: the items written, the failed ones (worth retrying
    soon) and the rejected ones (refused as they are), each with why."""

    written: list[K] = field(default_factory=list)
    failed: dict[K, str] = field(default_factory=dict)
    rejected: dict[K, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing to retry soon (rejected items wait for a change)."""
        return not self.failed


class SinkPlan(Protocol):
    """What the reconciler reads of a plan, whichever sink it is for."""

    @property
    def empty(self) -> bool: ...

    def counts(self) -> Mapping[str, int]:
        """Planned writes by operation: create, update, delete."""
        ...

    def describe(self) -> Iterator[str]:
        """One line per planned write, for logs and dry runs."""
        ...


class Sink(Protocol[A_co, P_contra, K]):
    def actual(self) -> A_co:
        """What the sink holds of ours (and what it must know of others' to plan)."""
        ...

    def apply(self, plan: P_contra) -> ApplyResult[K]:
        """Make the writes of `plan`; the outcome of each, never raising for one item."""
        ...
