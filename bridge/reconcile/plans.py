"""How each sink's plan is built: the only part of reconciling that differs per sink.

A planner turns the sources' snapshots, and what its sink holds, into a `Decision`: the
plan, and the reasons for anything left out of it. The reconciler hands the plan to the
sink and the outcome back to the planner (`applied`), the same way for every sink.

- `ConsulPlanner`: Kubernetes Services -> registrations (`to_consul.desired`, memoised),
  diffed against a record of what Consul holds. The record is read from Consul on the
  first pass, on every periodic resync (which is how drift made by others is repaired)
  and after anything went wrong; in between it is kept from each apply's outcome. With
  `upsert_only` nothing is deleted. A registration Consul rejected is not sent again
  while the same one is wanted: only once it changes, or at the periodic resync. What
  `desired` left out because Consul would refuse it is reported (once) through
  `bridge.rejections`, as are the sink's rejections.
- `KubePlanner`: Consul services -> headless Services and EndpointSlices
  (`materialise.plan_for`), against the Kubernetes source's caches, which are current
  and free to read, so they are read every pass. A write the API server rejected is not
  sent again while the same write is wanted: only once the object's body changes, or at
  the periodic resync; so a bad object costs one request per resync, not one per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from bridge.catalog.model import Snapshot
from bridge.catalog.plan import Plan, Registration, diff
from bridge.catalog.sink import ApplyResult, Sink, SinkPlan
from bridge.catalog.to_consul import Memo, Refusal, SyncOptions, desired
from bridge.consul.sink import SINK as CONSUL_SINK
from bridge.consul.sink import registration_item
from bridge.kube.materialise import Held, KubePlan, ObjectKey, object_item, plan_for
from bridge.kube.sink import SINK
from bridge.rejections import REJECTIONS, Rejections

log = logging.getLogger(__name__)

P = TypeVar("P", bound=SinkPlan)


@dataclass(frozen=True)
class Decision(Generic[P]):
    """A plan, and why anything the sources ask for is not in it (one line each)."""

    plan: P
    skipped: tuple[str, ...] = ()


class Planner(Protocol[P]):
    def plan(self, kube: Snapshot, consul: Snapshot, *, reread: bool) -> Decision[P]:
        """The writes that bring the sink in line; `reread`: trust nothing remembered of
        the sink (a periodic resync). Raises BridgeError when the sink cannot be read."""
        ...

    def applied(self, plan: P, result: ApplyResult[Any]) -> None:
        """How the last plan went (an empty result: nothing needed writing)."""
        ...


class ConsulPlanner:
    def __init__(self, sink: Sink[dict[str, Registration], Plan, str], options: SyncOptions,
                 *, upsert_only: bool = False, rejections: Rejections = REJECTIONS) -> None:
        self._sink = sink
        self._options = options
        self._upsert_only = upsert_only
        self._rejections = rejections
        # The registrations Consul rejected, as sent (held back while wanted unchanged).
        self._rejected: dict[str, Registration] = {}
        self._refusals: set[str] = set()  # the refusal items of `desired` reported, in force
        self._memo = Memo()  # registrations of the Services unchanged since the last pass
        # Our record of what Consul holds; None: read it before the next plan. It is None
        # from each plan until `applied` says how the writes went, so a pass that ended
        # any other way (an exception) leaves it to be read again.
        self._actual: dict[str, Registration] | None = None
        self._against: dict[str, Registration] = {}  # the record the last plan was made on
        # The registrations the last plan was made for.
        self._wanted: MappingProxyType[str, Registration] = MappingProxyType({})
        self._actual_is_last = False  # the record holds exactly the last `desired()` result

    def plan(self, kube: Snapshot, consul: Snapshot, *, reread: bool) -> Decision[Plan]:
        wanted = desired(kube, self._options, self._memo)
        self._report(wanted.refused)
        actual = self._actual
        if reread or actual is None:
            actual = self._sink.actual()
            self._actual_is_last = False
        self._actual = None
        # Our record equals the last result (`_settled`): only what the memo touched since
        # can differ. Else (reread, first pass, upsert-only extras) compare everything.
        only = self._memo.touched if self._actual_is_last else None
        plan = diff(wanted.registrations, actual, only)
        self._actual_is_last = False
        if self._upsert_only and plan.delete:
            log.info("upsert-only: keeping %d registrations Kubernetes no longer has",
                     len(plan.delete))
            plan = Plan(plan.create, plan.update, (), plan.replaced)
        if self._rejected:  # the periodic resync tries them again
            plan = self._hold_back(plan, wanted.registrations, hold=not reread)
        self._against, self._wanted = actual, wanted.registrations
        return Decision(plan, wanted.skipped)

    def record(self) -> tuple[Mapping[str, Registration], dict[str, Registration]]:
        """For the operator's view: the registrations the last plan wanted, and a copy of
        what Consul held by our record then (or since, after the last apply)."""
        held = self._actual if self._actual is not None else self._against
        return self._wanted, held.copy()  # dict.copy: one step the reconciler cannot split

    def applied(self, plan: Plan, result: ApplyResult[Any]) -> None:
        for sid in result.written:
            if self._rejected.pop(sid, None) is not None:
                self._rejections.forget(registration_item(sid), CONSUL_SINK)
        if result.rejected:
            sent = {reg.service_id: reg for reg in (*plan.create, *plan.update)}
            self._rejected.update((sid, sent[sid]) for sid in result.rejected if sid in sent)
        if result.failed:
            return  # some writes may have landed: the record is read again
        actual = self._against
        for reg in plan.delete:  # everything was written: creates and updates are in
            if reg.service_id not in result.rejected:  # `wanted`, the deletes are gone
                actual.pop(reg.service_id, None)
        settled = _settled(self._wanted, actual)
        # Apart from what Consul rejected (not diffed again until it changes or a resync).
        self._actual_is_last = len(settled) == len(self._wanted)
        for sid in (*self._rejected, *result.rejected):  # Consul holds what it held
            if sid in actual:
                settled[sid] = actual[sid]
            else:
                settled.pop(sid, None)
        self._actual = settled

    def _hold_back(self, plan: Plan, wanted: Mapping[str, Registration], *, hold: bool) -> Plan:
        """`plan` without (`hold`) the registrations Consul rejected as they are still
        wanted; the rejections of registrations no longer wanted so are dropped."""
        for sid, reg in list(self._rejected.items()):
            if wanted.get(sid) != reg:
                del self._rejected[sid]
                self._rejections.forget(registration_item(sid), CONSUL_SINK)
        held = self._rejected
        if not (hold and held):
            return plan
        return Plan(tuple(r for r in plan.create if r.service_id not in held),
                    tuple(r for r in plan.update if r.service_id not in held),
                    plan.delete, plan.replaced)

    def _report(self, refused: tuple[Refusal, ...]) -> None:
        """What `desired` left out because Consul would refuse it: logged and counted once
        while it lasts (each Service and reason is one item)."""
        items = set()
        for refusal in refused:
            item = f"Service {refusal.service}: {refusal.reason}"
            self._rejections.rejected(CONSUL_SINK, item, refusal.reason, refusal.message)
            items.add(item)
        for item in self._refusals - items:
            self._rejections.forget(item, CONSUL_SINK)
        self._refusals = items


def _settled(wanted: MappingProxyType[str, Registration], actual: Mapping[str, Registration]
             ) -> dict[str, Registration]:
    """Our record of Consul once it holds all of `wanted`: `wanted`'s own objects, so that
    the next diff finds the unchanged ones by identity rather than field by field, plus
    what Consul holds beyond them (what upsert-only keeps)."""
    settled = wanted.copy()  # of the dict behind the view: much faster than dict(view)
    if len(actual) != len(wanted):
        settled.update((sid, reg) for sid, reg in actual.items() if sid not in wanted)
    return settled


class KubePlanner:
    def __init__(self, sink: Sink[Held, KubePlan, ObjectKey], rejections: Rejections = REJECTIONS) -> None:
        self._sink = sink
        self._rejections = rejections
        # The writes the API server rejected, as sent: object -> (verb, body).
        self._rejected: dict[ObjectKey, tuple[str, dict[str, Any] | None]] = {}

    def plan(self, kube: Snapshot, consul: Snapshot, *, reread: bool) -> Decision[KubePlan]:
        found = plan_for(consul.services, self._sink.actual())
        writes = {d.key: (verb, found.bodies.get(d.key) if verb != "delete" else None)
                  for verb, d in found.writes()}
        held_back: set[ObjectKey] = set()
        for key, write in list(self._rejected.items()):
            if key not in writes:  # no longer wanted, or someone made it right
                del self._rejected[key]
                self._rejections.forget(object_item(key), SINK)
            elif writes[key] == write and not reread:
                held_back.add(key)
        if held_back:
            found = found.without(held_back)
        return Decision(found, found.clashes + found.skipped)

    def applied(self, plan: KubePlan, result: ApplyResult[Any]) -> None:
        """Remembers what was rejected, to hold it back; the watches bring our writes back
        into the caches."""
        for key in result.written:
            self._rejected.pop(key, None)
        if result.rejected:
            verbs = {d.key: verb for verb, d in plan.writes()}
            for key in result.rejected:
                verb = verbs.get(key, "create")
                self._rejected[key] = (verb, plan.bodies.get(key) if verb != "delete" else None)
