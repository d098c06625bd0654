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
  `bridge.rejections`, as are the sink's rejections. With `adopt_from` (`sync.adopt_node`)
  it also keeps a record of consul-k8s's registrations on that node, read as the other,
  and adds to the plan those `catalog/adopt.takeover` says go now; while some wait for
  this plan's writes, the decision asks for a `follow_up` plan once they are applied.
- `KubePlanner`: Consul services -> headless Services and EndpointSlices
  (`materialise.plan_for`), against the Kubernetes source's caches, which are current
  and free to read, so they are read every pass. A write the API server rejected is not
  sent again while the same write is wanted: only once the object's body changes, or at
  the periodic resync; so a bad object costs one request per resync, not one per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter

from bridge.catalog.adopt import takeover
from bridge.catalog.model import Snapshot
from bridge.catalog.plan import Plan, Registration, diff
from bridge.catalog.sink import ApplyResult, Sink, SinkPlan
from bridge.catalog.to_consul import Memo, Refusal, SyncOptions, desired, synced_services
from bridge.consul.sink import SINK as CONSUL_SINK
from bridge.consul.sink import registration_item
from bridge.kube.materialise import Held, KubePlan, ObjectKey, object_item, plan_for
from bridge.kube.sink import SINK
from bridge.rejections import REJECTIONS, Rejections

log = logging.getLogger(__name__)

P = TypeVar("P", bound=SinkPlan)

LEFT_ALONE = Counter("bridge_adopt_left_alone_total", "consul-k8s registrations on sync.adopt_node left "
                     "in place because the bridge syncs no Service of their name and namespace "
                     "(counted once each)")


@dataclass(frozen=True)
class Decision(Generic[P]):
    """A plan, and why anything the sources ask for is not in it (one line each).
    `follow_up`: the plan is a first step; plan again as soon as it is applied."""

    plan: P
    skipped: tuple[str, ...] = ()
    follow_up: bool = False


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
                 *, upsert_only: bool = False, rejections: Rejections = REJECTIONS,
                 adopt_from: Callable[[], dict[str, Registration]] | None = None) -> None:
        """`adopt_from`: reads consul-k8s's registrations on `sync.adopt_node`, by
        service ID (None: nothing is adopted)."""
        self._sink = sink
        self._options = options
        self._upsert_only = upsert_only
        self._rejections = rejections
        self._adopt_from = adopt_from
        # Our record of consul-k8s's registrations, kept as `_actual` is (None: read it).
        self._leftovers: dict[str, Registration] | None = None
        self._leftovers_against: dict[str, Registration] = {}
        self._left_alone: set[str] = set()  # the IDs reported as left alone, in force
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
        if self._adopt_from is None:
            return Decision(plan, wanted.skipped)
        plan, waiting = self._adopt(plan, kube, wanted.registrations, actual, reread=reread)
        # Those waiting for our writes go in the next plan: at once, not at the next change.
        return Decision(plan, wanted.skipped, follow_up=waiting and bool(plan.create or plan.update))

    def _adopt(self, plan: Plan, kube: Snapshot, wanted: Mapping[str, Registration],
               actual: Mapping[str, Registration], *, reread: bool) -> tuple[Plan, bool]:
        """`plan` with consul-k8s's registrations whose Services the bridge has in place;
        and whether some wait for ours to be written."""
        assert self._adopt_from is not None
        leftovers = self._leftovers
        if reread or leftovers is None:
            leftovers = self._adopt_from()
        self._leftovers, self._leftovers_against = None, leftovers
        if not leftovers:
            self._left_alone = set()
            return plan, False
        namespaces = {reg.namespace for reg in leftovers.values()}
        found = takeover(leftovers, wanted, actual, synced_services(kube, self._options, namespaces))
        self._report_left_alone(found.kept)
        if found.remove:
            plan = Plan(plan.create, plan.update, plan.delete, plan.replaced, adopt=found.remove)
        return plan, bool(found.waiting)

    def _report_left_alone(self, kept: tuple[Registration, ...]) -> None:
        """consul-k8s's registrations of Services the bridge does not sync: logged and
        counted once while they last."""
        ids = {reg.service_id for reg in kept}
        news: dict[tuple[str, str], list[str]] = {}
        for reg in kept:
            if reg.service_id not in self._left_alone:
                news.setdefault((reg.namespace, reg.name), []).append(reg.service_id)
        for (namespace, name), sids in sorted(news.items()):
            LEFT_ALONE.inc(len(sids))
            log.warning("consul: leaving consul-k8s's %d registration%s of %s (namespace %s) in place: "
                        "the bridge syncs no such Service: %s", len(sids), "" if len(sids) == 1 else "s",
                        name, namespace, ", ".join(sorted(sids)))
        self._left_alone = ids

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
            return  # some writes may have landed: the records are read again
        if self._adopt_from is not None:
            adopted = {reg.service_id for reg in plan.adopt}
            self._leftovers = {sid: reg for sid, reg in self._leftovers_against.items()
                               if sid not in adopted}
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
