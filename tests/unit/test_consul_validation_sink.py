"""Isolation in the Consul sink and its planner: a registration Consul refuses fails alone,
is reported once with Consul's text, and is not sent again until it changes or a resync;
what Consul refused because of the state it was in is failed, to be read and retried.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.catalog.plan import Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.catalog.to_consul import META_ANNOTATION_PREFIX, SyncOptions
from bridge.consul.client import TxnRefused, TxnRolledBack
from bridge.consul.sink import ConsulSink, registration_item
from bridge.errors import Transient
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import ConsulPlanner
from bridge.reconcile.trigger import Trigger
from bridge.rejections import Rejections

NODE = "k8s-sync-c1"
TAKEN = "taken by someone else"


def regs(count: int, *, prefix: str = "web") -> tuple[Registration, ...]:
    return tuple(Registration(service_id=f"{prefix}-{i:03d}", name=prefix, address=f"10.0.0.{i}",
                              port=80, meta=(("external-k8s-ns", "shop"),))
                 for i in range(count))


def service_ids(ops: list[dict[str, Any]]) -> list[str]:
    return [op["Service"]["Service"]["ID"] for op in ops if "Service" in op]


class Consul:
    """A stand-in for the Consul client with Consul's txn outcomes: each registration in
    `refuse` fails its operations with the text given, a batch naming one in `too_big` is a
    413, and `down` 500s come first."""

    def __init__(self, *, refuse: dict[str, str] | None = None, too_big: set[str] | None = None,
                 down: int = 0, node: bool = True, lose_node: bool = False) -> None:
        self.refuse = refuse or {}
        self.too_big = too_big or set()
        self.down = down
        self.node = node
        self.lose_node = lose_node  # the node is deleted just before the first txn
        self.txns: list[list[dict[str, Any]]] = []
        self.held: dict[str, dict[str, Any]] = {}

    def node_services(self, node: str) -> dict[str, Any] | None:
        if not self.node:
            return None
        return {"Node": {"Node": node}, "Services": {sid: svc for sid, svc in self.held.items()}}

    def node_checks(self, node: str) -> list[dict[str, Any]]:
        return []

    def txn(self, operations: list[dict[str, Any]], *, timeout: float | None = None) -> list[dict[str, Any]]:
        self.txns.append(operations)
        if self.down:
            self.down -= 1
            raise Transient("txn: 500 No cluster leader")
        if self.lose_node:
            self.node, self.lose_node = False, False
        if any(sid in self.too_big for sid in service_ids(operations)):
            raise TxnRefused(413, "txn: 413 Request body too large, max size: 524288 bytes")
        errors: list[tuple[int, str]] = []
        refused: set[str] = set()
        node = self.node or any("Node" in op for op in operations)
        for index, op in enumerate(operations):
            if "Service" in op:
                sid = op["Service"]["Service"]["ID"]
                if not node:
                    errors.append((index, "Missing node registration"))
                elif sid in self.refuse:
                    errors.append((index, self.refuse[sid]))
                    refused.add(sid)
            elif "Check" in op and op["Check"]["Check"].get("ServiceID") in refused:
                errors.append((index, "Missing service registration"))
        if errors:
            raise TxnRolledBack(errors, "; ".join(f"op {i}: {w}" for i, w in errors))
        if any("Node" in op for op in operations):
            self.node = True
        for op in operations:
            if "Service" in op and op["Service"]["Verb"] == "set":
                svc = op["Service"]["Service"]
                self.held[svc["ID"]] = svc
        return []


def sink(consul: Consul, rejections: Rejections | None = None, stop: threading.Event | None = None,
         batch_size: int = 64) -> ConsulSink:
    made = ConsulSink(consul, node=NODE, cluster_id="c1", stop=stop or threading.Event(),  # type: ignore[arg-type]
                      batch_size=batch_size, rejections=rejections or Rejections())
    made.actual()
    return made


# --- the sink -------------------------------------------------------------------------------


def test_a_refused_operation_is_taken_out_and_the_rest_of_its_batch_resent():
    consul = Consul(refuse={"web-003": "Invalid Service Meta for node n and serviceID web-003: bad"})
    rejections = Rejections()
    result = sink(consul, rejections).apply(Plan(create=regs(6)))
    assert result.rejected == {"web-003": "Invalid Service Meta for node n and serviceID web-003: bad"}
    assert sorted(result.written) == [f"web-{i:03d}" for i in (0, 1, 2, 4, 5)] and not result.failed
    assert [service_ids(t) for t in consul.txns] == [
        [f"web-{i:03d}" for i in range(6)], [f"web-{i:03d}" for i in (0, 1, 2, 4, 5)]]
    assert rejections.held("consul") == {registration_item("web-003"): (
        "meta", "Invalid Service Meta for node n and serviceID web-003: bad")}


def test_each_refused_registration_of_a_batch_is_named_and_other_batches_go_on():
    consul = Consul(refuse={"web-001": "Permission denied", "web-009": TAKEN})
    result = sink(consul, batch_size=8).apply(Plan(create=regs(12)))
    assert set(result.rejected) == {"web-001", "web-009"}
    assert len(result.written) == 10 and not result.failed
    assert len(consul.txns) == 5, "4 per batch: 3 batches, 2 of them sent again"


def test_a_check_missing_its_refused_service_is_that_registrations_fault():
    consul = Consul(refuse={"web-000": "Invalid service address"})
    result = sink(consul).apply(Plan(create=tuple(
        Registration(r.service_id, r.name, r.address, r.port, meta=r.meta, check_status="passing")
        for r in regs(2))))
    assert result.rejected == {"web-000": "Invalid service address"} and result.written == ["web-001"]


def test_state_errors_fail_the_registration_to_be_tried_again_not_rejected():
    consul = Consul(refuse={"web-001": "failed to set service \"web-001\" on node \"n\", index is stale"})
    result = sink(consul).apply(Plan(create=regs(3)))
    assert set(result.failed) == {"web-001"} and not result.rejected
    assert sorted(result.written) == ["web-000", "web-002"]


def test_a_node_deleted_under_us_is_registered_again_in_the_same_apply():
    consul = Consul(lose_node=True)
    result = sink(consul).apply(Plan(create=regs(3)))
    assert sorted(result.written) == ["web-000", "web-001", "web-002"], result
    assert "Node" not in consul.txns[0][0] and "Node" in consul.txns[1][0]


def test_a_batch_too_large_for_consul_is_halved_until_the_registration_is_found():
    consul = Consul(too_big={"web-005"})
    result = sink(consul).apply(Plan(create=regs(8)))
    assert list(result.rejected) == ["web-005"] and "413" in result.rejected["web-005"]
    assert sorted(result.written) == [f"web-{i:03d}" for i in range(8) if i != 5]
    assert len(consul.txns) <= 1 + 2 * 3 + 1, "a halving per level: log2(8) levels"


def test_transient_failures_are_retried_after_a_wait_never_at_once():
    waits: list[float] = []

    class Recording(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            return False

    consul = Consul(down=2)
    result = sink(consul, stop=Recording()).apply(Plan(create=regs(2)))
    assert sorted(result.written) == ["web-000", "web-001"]
    assert len(waits) == 2 and waits[0] > 0 and waits[1] > waits[0] / 2, waits


def test_registrations_are_batched_under_consuls_body_limit():
    fat = tuple(Registration(f"fat-{i}", "fat", f"10.1.0.{i}", 80,
                             meta=tuple((f"k{j:02d}", "v" * 500) for j in range(60)))
                for i in range(30))
    consul = Consul()
    sink(consul).apply(Plan(create=fat))
    sizes = [len(json.dumps(t)) for t in consul.txns]
    assert max(sizes) <= 512 * 1024 and len(consul.txns) > 1, sizes


# --- the planner ------------------------------------------------------------------------------

ORIGIN = Origin(OriginKind.KUBERNETES, "c1")


def web(*addresses: str, annotations: dict[str, str] | None = None, name: str = "web") -> Service:
    return Service(key=ServiceKey("shop", name), type=ServiceType.HEADLESS, ports=(Port("http", 80),),
                   instances=tuple(Instance(address=a, ports=(Port("http", 8080),), origin=ORIGIN)
                                   for a in addresses),
                   annotations=tuple(sorted((annotations or {}).items())))


def snapshot(*services: Service) -> Snapshot:
    return Snapshot.of(list(services), synced=True)


class Pass:
    """Plans and applies like the reconciler, counting Consul's requests."""

    def __init__(self, consul: Consul, rejections: Rejections) -> None:
        self.consul = consul
        self.sink = sink(consul, rejections)
        self.reads = 0
        original = self.sink.actual

        def counted() -> dict[str, Registration]:
            self.reads += 1
            return original()

        self.sink.actual = counted  # type: ignore[method-assign]
        self.planner = ConsulPlanner(self.sink, SyncOptions(cluster_id="c1"), rejections=rejections)

    def run(self, snap: Snapshot, *, reread: bool = False) -> tuple[Plan, ApplyResult[str]]:
        plan = self.planner.plan(snap, Snapshot(synced=True), reread=reread).plan
        result = self.sink.apply(plan) if not plan.empty else ApplyResult[str]()
        self.planner.applied(plan, result)
        return plan, result


def _refused_sid(snap: Snapshot, address: str) -> str:
    [reg] = [r for r in ConsulPlanner(sink(Consul()), SyncOptions(cluster_id="c1")).plan(
        snap, Snapshot(synced=True), reread=True).plan.create if r.address == address]
    return reg.service_id


def _taken(snap: Snapshot, address: str) -> tuple[str, Consul, Rejections, Pass]:
    """The registration of `address` is refused (its ID is someone else's): its ID, and
    the Consul, rejections and passes that see it so."""
    bad = _refused_sid(snap, address)
    consul = Consul(refuse={bad: TAKEN})
    rejections = Rejections()
    return bad, consul, rejections, Pass(consul, rejections)


def test_a_rejected_registration_is_held_back_until_it_changes_or_a_resync():
    snap = snapshot(web("10.0.0.1", "10.0.0.2"))
    bad, consul, rejections, passes = _taken(snap, "10.0.0.2")
    _, result = passes.run(snap)
    assert list(result.rejected) == [bad] and len(result.written) == 1
    txns = len(consul.txns)
    for _ in range(3):
        plan, _ = passes.run(snap)
        assert plan.empty, "an unchanged rejected registration is not sent again"
    assert len(consul.txns) == txns and passes.reads == 1, "and costs Consul nothing"
    plan, result = passes.run(snap, reread=True)
    assert [r.service_id for r in plan.create] == [bad], "the periodic resync tries it again"
    assert list(result.rejected) == [bad]
    assert passes.run(snap)[0].empty, "and holds it back again after"
    del consul.refuse[bad]
    plan, result = passes.run(snap, reread=True)
    assert bad in result.written and not result.rejected, "accepted at a resync once Consul takes it"
    assert rejections.held("consul") == {}, "written: forgotten, a later refusal is news again"


def test_a_changed_rejected_registration_is_sent_at_once():
    snap = snapshot(web("10.0.0.1", "10.0.0.2"))
    bad, consul, rejections, passes = _taken(snap, "10.0.0.2")
    passes.run(snap)
    del consul.refuse[bad]
    changed = snapshot(web("10.0.0.1", "10.0.0.2", annotations={META_ANNOTATION_PREFIX + "v": "2"}))
    _, result = passes.run(changed)
    assert bad in result.written and not result.rejected, "a changed registration is sent at once"
    assert rejections.held("consul") == {}


def test_another_services_change_does_not_resend_a_rejected_registration():
    snap = snapshot(web("10.0.0.1"), web("10.0.1.1", name="api"))
    _, _, _, passes = _taken(snap, "10.0.0.1")
    passes.run(snap)
    plan, _ = passes.run(snapshot(web("10.0.0.1"), web("10.0.1.1", "10.0.1.2", name="api")))
    assert [r.address for r in plan.create] == ["10.0.1.2"], plan


def test_a_rejected_registration_no_longer_wanted_is_forgotten():
    snap = snapshot(web("10.0.0.1", "10.0.0.2"))
    _, _, rejections, passes = _taken(snap, "10.0.0.2")
    passes.run(snap)
    assert rejections.held("consul")
    plan, _ = passes.run(snapshot(web("10.0.0.1")))
    assert plan.empty and rejections.held("consul") == {}, "nothing to delete: Consul never held it"


def test_refusals_of_desired_are_reported_once_and_forgotten_when_fixed(caplog):
    rejections = Rejections()
    passes = Pass(Consul(), rejections)
    bad = snapshot(web("10.0.0.1", annotations={META_ANNOTATION_PREFIX + "a.b": "x"}))
    with caplog.at_level(logging.WARNING, logger="bridge.rejections"):
        for _ in range(3):
            passes.run(bad)
    lines = [r.getMessage() for r in caplog.records if "shop/web" in r.getMessage()]
    assert len(lines) == 1 and "service-meta-a.b" in lines[0] and "meta_key" in lines[0], lines
    assert set(rejections.held("consul")) == {"Service shop/web: meta_key"}
    passes.run(snapshot(web("10.0.0.1")))
    assert rejections.held("consul") == {}


# --- the reconciler: a rejection settles the pass --------------------------------------------


class Static:
    """A source whose snapshot never changes."""

    synced = True

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self) -> Snapshot:
        return self.snap


@pytest.mark.parametrize("rejected", [True, False])
def test_a_pass_with_only_rejections_is_settled_a_failure_is_not(rejected):
    snap = snapshot(web("10.0.0.1", "10.0.0.2"))
    bad = _refused_sid(snap, "10.0.0.2")
    consul = Consul(refuse={bad: TAKEN if rejected else "Missing service registration"})
    made = sink(consul)
    rec = Reconciler(kube=Static(snap), consul=Static(Snapshot(synced=True)),
                     lanes=[Lane("consul", ConsulPlanner(made, SyncOptions(cluster_id="c1"),
                                                         rejections=Rejections()), made)],
                     trigger=Trigger(0.0, 0.0), stop=threading.Event(), resync_period=3600)
    assert rec.step() is rejected
    assert rec.in_sync is rejected
