"""The reconciler drives every sink alike; the planners are the only per-sink part."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.plan import Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.catalog.to_consul import SyncOptions
from bridge.errors import Transient
from bridge.ha.gate import NOT_WRITER
from bridge.kube.materialise import Held, actual_service
from bridge.kube.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import ConsulPlanner, Decision, KubePlanner
from bridge.reconcile.trigger import Trigger
from tests.conftest import eventually

# --- fakes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePlan:
    items: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.items

    def counts(self) -> dict[str, int]:
        return {"create": len(self.items)}

    def describe(self) -> Iterator[str]:
        return (f"create {item}" for item in self.items)


class FakeSink:
    """Writes every item but those in `refuse` (each refused `times` times, then written)."""

    def __init__(self, refuse: tuple[str, ...] = (), times: int = 1_000_000) -> None:
        self.refuse, self.times = set(refuse), times
        self.plans: list[FakePlan] = []

    def actual(self) -> None:
        return None

    def apply(self, plan: FakePlan) -> ApplyResult[str]:
        self.plans.append(plan)
        result: ApplyResult[str] = ApplyResult()
        for item in plan.items:
            if item in self.refuse and len(self.plans) <= self.times:
                result.failed[item] = "refused"
            else:
                result.written.append(item)
        return result


class FakePlanner:
    def __init__(self, items: tuple[str, ...] = (), skipped: tuple[str, ...] = ()) -> None:
        self.items, self.skipped = items, skipped
        self.outcomes: list[tuple[FakePlan, ApplyResult[str]]] = []
        self.broken = False

    def plan(self, kube: Snapshot, consul: Snapshot, *, reread: bool) -> Decision[FakePlan]:
        if self.broken:
            raise RuntimeError("a bug in this planner")
        return Decision(FakePlan(self.items), self.skipped)

    def applied(self, plan: FakePlan, result: ApplyResult[str]) -> None:
        self.outcomes.append((plan, result))


class Source:
    def __init__(self, synced: bool = True) -> None:
        self.synced = synced

    def snapshot(self) -> Snapshot:
        return Snapshot(synced=self.synced)


class Gate:
    """A write gate a test opens and closes."""

    def __init__(self, open_: bool = True) -> None:
        self.open = open_

    def may_write(self) -> bool:
        return self.open

    def may_write_until(self) -> float:
        return float("inf") if self.open else float("-inf")


def reconciler(*lanes: Lane, kube: Source | None = None, dry_run: bool = False,
               stop: threading.Event | None = None, gate: Gate | None = None) -> Reconciler:
    return Reconciler(kube=kube or Source(), consul=Source(), lanes=lanes,
                      trigger=Trigger(0.0, 0.0), stop=stop or threading.Event(),
                      resync_period=3600, dry_run=dry_run, gate=gate)


def lane(name: str, planner: FakePlanner, sink: FakeSink) -> Lane:
    return Lane(name, planner, sink)


# --- the reconciler ---------------------------------------------------------------------


def test_every_lane_is_planned_applied_and_told_the_outcome_alike():
    a, b = FakePlanner(("a1", "a2")), FakePlanner(("b1",))
    sink_a, sink_b = FakeSink(), FakeSink()
    rec = reconciler(lane("one", a, sink_a), lane("two", b, sink_b))
    assert rec.step() is True
    assert sink_a.plans == [FakePlan(("a1", "a2"))] and sink_b.plans == [FakePlan(("b1",))]
    assert [r.written for _, r in a.outcomes] == [["a1", "a2"]]
    assert [r.written for _, r in b.outcomes] == [["b1"]]
    assert rec.in_sync and all(lane.in_sync for lane in rec.lanes)


def test_an_empty_plan_writes_nothing_and_settles_the_lane():
    planner, sink = FakePlanner(()), FakeSink()
    rec = reconciler(lane("one", planner, sink))
    assert rec.step() is True
    assert sink.plans == [], "an empty plan must not reach the sink"
    assert [(p.items, r.ok) for p, r in planner.outcomes] == [((), True)]
    assert rec.in_sync


def test_a_failed_item_unsettles_only_its_lane_and_its_planner_hears_why():
    a, b = FakePlanner(("a1", "bad")), FakePlanner(("b1",))
    rec = reconciler(lane("one", a, FakeSink(refuse=("bad",))), lane("two", b, FakeSink()))
    assert rec.step() is False, "a failed item must make the pass be retried"
    assert [lane.in_sync for lane in rec.lanes] == [False, True]
    (_, result), = a.outcomes
    assert result.written == ["a1"] and result.failed == {"bad": "refused"}, result
    assert not rec.converged


def test_nothing_is_written_before_both_sources_listed():
    planner, sink = FakePlanner(("x",)), FakeSink()
    rec = reconciler(lane("one", planner, sink), kube=Source(synced=False))
    assert rec.step() is True, "not listed yet is not a failure: the listing pokes again"
    assert sink.plans == [] and planner.outcomes == []
    assert not rec.in_sync


def test_a_bug_in_one_lane_does_not_keep_the_other_from_its_pass(caplog):
    broken, fine = FakePlanner(("a",)), FakePlanner(("b",))
    broken.broken = True
    sink = FakeSink()
    rec = reconciler(lane("one", broken, FakeSink()), lane("two", fine, sink))
    assert rec.step() is False
    assert sink.plans == [FakePlan(("b",))]
    assert "one: reconcile pass failed" in caplog.text


def test_skip_reasons_are_logged_and_counted_once_while_they_last(caplog):
    caplog.set_level(logging.WARNING, logger="bridge.reconcile.loop")
    planner = FakePlanner((), skipped=("svc a: no port",))
    rec = reconciler(lane("one", planner, FakeSink()))
    before = REGISTRY.get_sample_value("bridge_sync_skipped_total") or 0
    rec.step()
    rec.step()
    assert caplog.text.count("one: not written: svc a: no port") == 1, caplog.text
    assert (REGISTRY.get_sample_value("bridge_sync_skipped_total") or 0) == before + 1
    planner.skipped = ()
    rec.step()
    planner.skipped = ("svc a: no port",)
    rec.step()
    assert caplog.text.count("one: not written: svc a: no port") == 2, \
        "a reason that went away and came back is news again"


def test_dry_run_logs_the_plan_and_writes_nothing(caplog):
    caplog.set_level(logging.INFO, logger="bridge.reconcile.loop")
    planner, sink = FakePlanner(("a",)), FakeSink()
    rec = reconciler(lane("one", planner, sink), dry_run=True)
    assert rec.step() is True
    assert sink.plans == []
    assert "dry-run: would create a" in caplog.text


def test_a_failing_pass_is_retried_with_backoff_until_it_settles():
    sink = FakeSink(refuse=("a",), times=2)
    stop = threading.Event()
    rec = reconciler(lane("one", FakePlanner(("a",)), sink), stop=stop)
    rec.start()
    try:
        rec._trigger.poke()
        eventually(lambda: rec.converged, what="the refused item written on a retry")
        assert len(sink.plans) == 3, f"two refusals then a success, got {len(sink.plans)} applies"
    finally:
        stop.set()
        rec._trigger.close()


def test_a_stop_ends_the_retries_and_nothing_is_applied_after_it():
    sink = FakeSink(refuse=("a",))
    stop = threading.Event()
    rec = reconciler(lane("one", FakePlanner(("a",)), sink), stop=stop)
    rec.start()
    rec._trigger.poke()
    eventually(lambda: len(sink.plans) >= 1, what="a first failed apply")
    stop.set()
    rec._trigger.close()
    assert rec.thread is not None
    # Generous: the thread only has to notice the closed trigger; it must not sit out
    # the backoff (up to 60 s).
    applies = len(sink.plans)
    rec.thread.join(5)
    assert not rec.thread.is_alive(), "the reconciler kept waiting after the stop"
    assert len(sink.plans) == applies, "a retry was applied after the stop"


# --- the Consul planner ------------------------------------------------------------------

ORIGIN = Origin(OriginKind.KUBERNETES, "c1")


def web(*addresses: str) -> Snapshot:
    instances = tuple(Instance(address=a, ports=(Port("http", 8080),), origin=ORIGIN)
                      for a in addresses)
    svc = Service(key=ServiceKey("shop", "web"), type=ServiceType.HEADLESS,
                  ports=(Port("http", 80),), instances=instances)
    return Snapshot.of([svc], synced=True)


class ConsulStore:
    """What the Consul sink holds, with a count of the reads of it."""

    def __init__(self) -> None:
        self.held: dict[str, Registration] = {}
        self.reads = 0
        self.applies = 0
        self.refuse = False

    def actual(self) -> dict[str, Registration]:
        self.reads += 1
        return dict(self.held)

    def apply(self, plan: Plan) -> ApplyResult[str]:
        self.applies += 1
        result: ApplyResult[str] = ApplyResult()
        for reg in (*plan.create, *plan.update):
            if self.refuse:
                result.failed[reg.service_id] = "refused"
                continue
            self.held[reg.service_id] = reg
            result.written.append(reg.service_id)
        for reg in plan.delete:
            self.held.pop(reg.service_id)
            result.written.append(reg.service_id)
        return result


def run(planner: ConsulPlanner, store: ConsulStore, snapshot: Snapshot, *, reread: bool = False
        ) -> Plan:
    plan = planner.plan(snapshot, Snapshot(synced=True), reread=reread).plan
    planner.applied(plan, store.apply(plan))
    return plan


def test_consul_planner_reads_consul_once_then_keeps_its_record():
    store = ConsulStore()
    planner = ConsulPlanner(store, SyncOptions(cluster_id="c1"))
    assert len(run(planner, store, web("10.0.0.1")).create) == 1
    plan = run(planner, store, web("10.0.0.1", "10.0.0.2"))
    assert [r.address for r in plan.create] == ["10.0.0.2"]
    assert run(planner, store, web("10.0.0.1", "10.0.0.2")).empty
    assert store.reads == 1, "between resyncs the planner trusts its record of the writes"
    run(planner, store, web("10.0.0.1", "10.0.0.2"), reread=True)
    assert store.reads == 2, "a resync reads Consul again"


def test_consul_planner_reads_again_after_a_failure():
    store = ConsulStore()
    planner = ConsulPlanner(store, SyncOptions(cluster_id="c1"))
    store.refuse = True
    run(planner, store, web("10.0.0.1"))
    store.refuse = False
    assert len(run(planner, store, web("10.0.0.1")).create) == 1
    assert store.reads == 2, "after a failed write the record is not trusted"


def test_consul_planner_reads_again_when_a_pass_ended_without_an_outcome():
    store = ConsulStore()
    planner = ConsulPlanner(store, SyncOptions(cluster_id="c1"))
    planner.plan(web("10.0.0.1"), Snapshot(synced=True), reread=False)  # then an exception
    run(planner, store, web("10.0.0.1"))
    assert store.reads == 2


def test_consul_planner_upsert_only_plans_no_deletes():
    store = ConsulStore()
    planner = ConsulPlanner(store, SyncOptions(cluster_id="c1"), upsert_only=True)
    run(planner, store, web("10.0.0.1", "10.0.0.2"))
    plan = run(planner, store, web("10.0.0.1"))
    assert plan.empty and len(store.held) == 2, plan


def test_consul_planner_returns_the_skip_reasons_of_desired():
    store = ConsulStore()
    planner = ConsulPlanner(store, SyncOptions(cluster_id="c1"))
    bad = Service(key=ServiceKey("shop", "bad"), type=ServiceType.HEADLESS,
                  ports=(Port("http", 80),),
                  instances=(Instance(address="10.0.0.9", ports=(), origin=ORIGIN),))
    decision = planner.plan(Snapshot.of([bad], synced=True), Snapshot(synced=True), reread=False)
    assert len(decision.skipped) == 1 and "10.0.0.9" in decision.skipped[0], decision.skipped


# --- the Kubernetes planner -----------------------------------------------------------------

CONSUL_ORIGIN = Origin(OriginKind.CONSUL, "vm-1")


def consul_services(*names: str) -> Snapshot:
    return Snapshot.of([Service(key=ServiceKey("consul", name), type=ServiceType.HEADLESS,
                                ports=(Port("", 8080),),
                                instances=(Instance(address="192.0.2.1", ports=(Port("", 8080),),
                                                    origin=CONSUL_ORIGIN),))
                        for name in names], synced=True)


class KubeHeld:
    def __init__(self, held: Held) -> None:
        self.held = held

    def actual(self) -> Held:
        return self.held

    def apply(self, plan: object) -> ApplyResult[tuple[str, str, str]]:
        raise AssertionError("the planner never writes")


def test_kube_planner_materialises_each_consul_service_with_its_bodies():
    planner = KubePlanner(KubeHeld(Held({}, frozenset())))
    decision = planner.plan(Snapshot(synced=True), consul_services("billing"), reread=False)
    keys = [d.key for d in decision.plan.create]
    assert ("services", "consul", "billing") in keys
    assert any(k[0] == "endpointslices" for k in keys), keys
    assert set(decision.plan.bodies) == set(keys), "every create carries its body"
    assert decision.skipped == ()


def test_kube_planner_leaves_someone_elses_service_alone_and_says_why():
    theirs = frozenset({("services", "consul", "billing")})
    planner = KubePlanner(KubeHeld(Held({}, theirs)))
    decision = planner.plan(Snapshot(synced=True), consul_services("billing"), reread=False)
    assert all(d.key != ("services", "consul", "billing") for d in decision.plan.create)
    assert any("not managed by the bridge" in reason for reason in decision.skipped), decision.skipped


def test_kube_planner_deletes_ours_when_the_consul_service_is_gone():
    ours = Service(key=ServiceKey("consul", "gone"), type=ServiceType.HEADLESS, ports=(),
                   instances=(), labels=((MANAGED_BY_LABEL, MANAGED_BY_VALUE),))
    held = actual_service(ours)
    planner = KubePlanner(KubeHeld(Held({held.key: held}, frozenset())))
    decision = planner.plan(Snapshot(synced=True), consul_services(), reread=False)
    assert [d.key for d in decision.plan.delete] == [("services", "consul", "gone")]


# --- the write gate (high availability) -----------------------------------------------


class World(Source):
    """A Kubernetes source whose snapshot a test sets."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.now = snapshot

    def snapshot(self) -> Snapshot:
        return self.now


def consul_lane(store: ConsulStore) -> Lane:
    return Lane("consul", ConsulPlanner(store, SyncOptions(cluster_id="c1")), store)


def test_a_replica_that_is_not_the_writer_neither_reads_nor_writes_the_sinks():
    store, gate = ConsulStore(), Gate(open_=False)
    rec = reconciler(consul_lane(store), kube=World(web("10.0.0.1")), gate=gate)
    assert rec.step() is True, "nothing to retry: the gate's opening wakes the reconciler"
    assert (store.reads, store.applies) == (0, 0) and not rec.in_sync
    gate.open = True
    assert rec.step() is True
    assert store.reads == 1 and [r.address for r in store.held.values()] == ["10.0.0.1"]
    assert rec.in_sync


def test_a_new_writer_starts_from_what_the_sink_holds_and_writes_nothing_unchanged():
    world = World(web("10.0.0.1"))
    store = ConsulStore()
    first, second = Gate(), Gate(open_=False)
    a = reconciler(consul_lane(store), kube=world, gate=first)
    b = reconciler(consul_lane(store), kube=world, gate=second)
    a.step()
    b.step()
    assert (store.reads, store.applies) == (1, 1), "only the writer read and wrote"
    first.open, second.open = False, True  # b takes over
    a.step()
    assert b.step() is True
    assert (store.reads, store.applies) == (2, 1), "b read what Consul holds and wrote nothing"
    world.now = web("10.0.0.1", "10.0.0.2")
    b.step()
    assert {r.address for r in store.held.values()} == {"10.0.0.1", "10.0.0.2"}
    second.open, first.open = False, True  # a leads again: what it remembers is stale
    store.held.clear()  # (drift while a did not write)
    a.step()
    assert store.reads == 3, "a writer again reads the sink before planning"
    assert {r.address for r in store.held.values()} == {"10.0.0.1", "10.0.0.2"}


def test_a_gate_closing_during_a_pass_leaves_the_rest_to_the_next_writer(caplog):
    gate = Gate()

    class Closing(FakeSink):
        def apply(self, plan: FakePlan) -> ApplyResult[str]:
            self.plans.append(plan)
            gate.open = False  # another replica took over while this one was writing
            return ApplyResult(written=["a"], failed={"b": NOT_WRITER})

    sink = Closing()
    rec = reconciler(lane("one", FakePlanner(("a", "b")), sink), gate=gate)
    with caplog.at_level(logging.INFO):
        assert rec.step() is False, "unsettled: the pass is retried"
    assert "no longer the writer; 1 left to the next" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        "losing the gate is not a write failure"
    assert rec.step() is True and len(sink.plans) == 1, "the retry ends at the gate"


class RecordingStop(threading.Event):
    """A stop event that records the waits asked of it (and returns at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_a_server_that_said_when_to_come_back_is_waited_for_exactly_changes_or_not():
    sink = FakeSink()
    stop = RecordingStop()
    rec = reconciler(lane("consul", FakePlanner(("a",)), sink), stop=stop)
    sink.throttled_until = time.monotonic() + 2.0  # type: ignore[attr-defined]
    rec._trigger.poke()  # a change arrives meanwhile: it must not cut the wait short
    rec._retry_wait(45.0)  # what the exponential backoff had grown to
    assert len(stop.waits) == 1, f"one wait for Consul's Retry-After, got {stop.waits}"
    waited = stop.waits[0]
    assert waited is not None and 1.5 < waited <= 2.2, \
        f"the Retry-After (about 2 s, plus up to 10% jitter), not the backoff's 45 s: {waited}"
    sink.throttled_until = 0.0  # type: ignore[attr-defined]
    rec._retry_wait(45.0)  # no throttle: the backoff, which the pending change cuts short
    assert len(stop.waits) == 1, "without a Retry-After the trigger's wait is used"


def test_a_429_reading_what_the_sink_holds_is_waited_out_and_said_once(caplog):
    planner = FakePlanner(("a",))
    calls = []

    def throttled(kube: Snapshot, consul: Snapshot, *, reread: bool) -> None:
        calls.append(reread)
        raise Transient("catalog node k8s-sync-c1: 429 rate limit exceeded", retry_after=1.5)

    planner.plan = throttled  # type: ignore[method-assign,assignment]
    one = lane("consul", planner, FakeSink())
    rec = reconciler(one)
    for _ in range(3):
        assert rec.step() is False
    assert one.not_before > time.monotonic() + 1.0, "the Retry-After is what the retry waits for"
    warned = [r for r in caplog.records if "reading what the sink holds failed" in r.getMessage()
              and r.levelno >= logging.WARNING]
    assert len(warned) == 1, f"one warning while Consul throttles, got {len(warned)}"
