"""Both sinks report every item's outcome, retry what is transient, and send nothing once
the bridge stops or the write gate closes."""

from __future__ import annotations

import threading
import time
from typing import Any

from bridge.catalog.model import Service, ServiceKey, ServiceType
from bridge.catalog.plan import Plan, Registration
from bridge.consul.sink import TXN_TIMEOUT, ConsulSink
from bridge.errors import Conflict, Transient
from bridge.ha.gate import NOT_WRITER
from bridge.kube.materialise import Desired, KubePlan
from bridge.kube.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from bridge.kube.sink import WRITE_TIMEOUT, KubeSink


def regs(count: int) -> tuple[Registration, ...]:
    return tuple(Registration(service_id=f"web-{i:03d}", name="web", address=f"10.0.0.{i}",
                              port=80, meta=(("external-k8s-ns", "shop"),))
                 for i in range(count))


class FakeConsul:
    """Records each transaction; `outcomes` says what the n-th one does (default: apply)."""

    def __init__(self, outcomes: list[Exception | None] | None = None,
                 on_txn: Any = None) -> None:
        self.outcomes = list(outcomes or [])
        self.txns: list[list[dict[str, Any]]] = []
        self.timeouts: list[float | None] = []
        self.on_txn = on_txn

    def node_services(self, node: str) -> dict[str, Any] | None:
        return {"Node": {"Node": node}, "Services": {}}

    def node_checks(self, node: str) -> list[dict[str, Any]]:
        return []

    def txn(self, operations: list[dict[str, Any]], *, timeout: float | None = None
            ) -> list[dict[str, Any]]:
        self.txns.append(operations)
        self.timeouts.append(timeout)
        if self.on_txn:
            self.on_txn()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return []


def ids(ops: list[dict[str, Any]]) -> list[str]:
    return [op["Service"]["Service"]["ID"] for op in ops if "Service" in op]


class Gate:
    """A write gate open until `until` (monotonic), which a test moves."""

    def __init__(self, open_for: float = 3600.0) -> None:
        self.until = time.monotonic() + open_for

    def close(self) -> None:
        self.until = float("-inf")

    def may_write(self) -> bool:
        return time.monotonic() < self.until

    def may_write_until(self) -> float:
        return self.until


def consul_sink(client: FakeConsul, stop: threading.Event | None = None,
                gate: Gate | None = None) -> ConsulSink:
    sink = ConsulSink(client, node="k8s-sync-c1", cluster_id="c1",
                      stop=stop or threading.Event(), batch_size=8, gate=gate)
    sink.actual()  # the node exists: no node operation in the batches
    return sink


def test_consul_sink_reports_each_item_and_a_refused_batch_fails_only_its_items():
    client = FakeConsul([None, Conflict("txn rolled back: op 0: bad"), None])
    result = consul_sink(client).apply(Plan(create=regs(12)))
    assert len(client.txns) == 3, "12 registrations of 2 operations each, 8 per batch"
    refused = set(ids(client.txns[1]))
    assert set(result.failed) == refused and all("rolled back" in why for why in result.failed.values())
    assert set(result.written) == {r.service_id for r in regs(12)} - refused


def test_consul_sink_retries_a_transient_failure():
    client = FakeConsul([Transient("500 No cluster leader")])
    result = consul_sink(client).apply(Plan(create=regs(2)))
    assert result.ok and len(client.txns) == 2, "the same batch again after the 500"
    assert client.txns[0] == client.txns[1]


def test_consul_sink_gives_up_after_three_attempts():
    client = FakeConsul([Transient("down")] * 3)
    result = consul_sink(client).apply(Plan(create=regs(2)))
    assert len(client.txns) == 3 and set(result.failed) == {"web-000", "web-001"}


def test_consul_sink_sends_no_batch_once_the_bridge_stops():
    stop = threading.Event()
    client = FakeConsul(on_txn=stop.set)  # the stop comes while the first batch is in flight
    result = consul_sink(client, stop).apply(Plan(create=regs(12)))
    assert len(client.txns) == 1, "the batch in flight completes; no other is sent"
    assert result.written == ids(client.txns[0])
    assert len(result.failed) == 12 - len(result.written)
    assert all(why.startswith("not sent") for why in result.failed.values()), result.failed


def test_consul_sink_sends_no_batch_once_the_gate_closes_and_does_not_retry_for_it():
    gate = Gate()
    client = FakeConsul(on_txn=gate.close)  # another replica takes over during the first batch
    result = consul_sink(client, gate=gate).apply(Plan(create=regs(12)))
    assert len(client.txns) == 1, "the batch in flight completes; no other is sent, none again"
    assert result.written == ids(client.txns[0])
    assert set(result.failed) == {r.service_id for r in regs(12)} - set(result.written)
    assert set(result.failed.values()) == {NOT_WRITER}


def test_consul_sink_sends_nothing_through_a_closed_gate():
    gate = Gate()
    gate.close()
    client = FakeConsul()
    result = consul_sink(client, gate=gate).apply(Plan(create=regs(3)))
    assert client.txns == [] and set(result.failed) == {r.service_id for r in regs(3)}


def test_consul_sink_waits_for_a_transaction_no_longer_than_the_gate_stays_open():
    client = FakeConsul()
    consul_sink(client, gate=Gate(open_for=2.0)).apply(Plan(create=regs(1)))
    consul_sink(client, gate=Gate()).apply(Plan(create=regs(1)))
    consul_sink(client).apply(Plan(create=regs(1)))
    closing, far, ungated = client.timeouts
    assert closing is not None and 0 < closing <= 2.0, f"capped at the gate's 2 s: {closing}"
    assert far == ungated == TXN_TIMEOUT, "a gate open for long leaves the usual timeout"


class FakeKube:
    def __init__(self, fail: dict[str, Exception] | None = None, on_write: Any = None) -> None:
        self.fail = fail or {}
        self.writes: list[tuple[str, str, str, str, Any]] = []
        self.timeouts: list[float] = []
        self.on_write = on_write

    def write(self, verb: str, plural: str, namespace: str, name: str, body: Any = None, *,
              timeout: float = 30.0) -> None:
        self.writes.append((verb, plural, namespace, name, body))
        self.timeouts.append(timeout)
        if self.on_write:
            self.on_write()
        if name in self.fail:
            raise self.fail.pop(name)


def desired(name: str) -> Desired:
    return Desired("services", "consul", name, ())


def kube_sink(client: FakeKube, stop: threading.Event | None = None, objects: Any = None,
              gate: Gate | None = None) -> KubeSink:
    return KubeSink(client, objects or (lambda: ({}, {})), stop or threading.Event(), gate=gate)


def test_kube_sink_writes_each_object_with_its_body_and_reports_each():
    plan = KubePlan(create=(desired("a"),), replace=(desired("b"),), delete=(desired("c"),),
                    bodies={desired("a").key: {"kind": "Service"}, desired("b").key: {"x": 1}})
    client = FakeKube(fail={"b": Conflict("replace services consul/b: changed")})
    result = kube_sink(client).apply(plan)
    assert [(w[0], w[3], w[4]) for w in client.writes] == [
        ("create", "a", {"kind": "Service"}), ("replace", "b", {"x": 1}), ("delete", "c", None)]
    assert result.written == [desired("a").key, desired("c").key]
    assert list(result.failed) == [desired("b").key]


def test_kube_sink_retries_a_transient_failure():
    client = FakeKube(fail={"a": Transient("HTTP 503")})
    result = kube_sink(client).apply(KubePlan(create=(desired("a"),)))
    assert result.ok and len(client.writes) == 2


def test_kube_sink_sends_nothing_more_once_the_bridge_stops():
    stop = threading.Event()
    client = FakeKube(on_write=stop.set)
    plan = KubePlan(create=(desired("a"), desired("b"), desired("c")))
    result = kube_sink(client, stop).apply(plan)
    assert [w[3] for w in client.writes] == ["a"]
    assert set(result.failed) == {desired("b").key, desired("c").key}


def test_kube_sink_actual_is_read_from_the_source_caches():
    ours = Service(key=ServiceKey("consul", "billing"), type=ServiceType.HEADLESS, ports=(),
                   instances=(), labels=((MANAGED_BY_LABEL, MANAGED_BY_VALUE),))
    theirs = Service(key=ServiceKey("default", "web"), type=ServiceType.CLUSTER_IP, ports=(),
                     instances=())
    caches = {("consul", "billing"): ours, ("default", "web"): theirs}
    held = kube_sink(FakeKube(), objects=lambda: (caches, {})).actual()
    assert set(held.ours) == {("services", "consul", "billing")}
    assert held.foreign == {("services", "default", "web")}
    assert held.local_services == {ServiceKey("default", "web")}


def test_kube_sink_sends_nothing_more_once_the_gate_closes():
    gate = Gate()
    client = FakeKube(on_write=gate.close)
    plan = KubePlan(create=(desired("a"), desired("b"), desired("c")))
    result = kube_sink(client, gate=gate).apply(plan)
    assert [w[3] for w in client.writes] == ["a"] and result.written == [desired("a").key]
    assert result.failed == {desired("b").key: NOT_WRITER, desired("c").key: NOT_WRITER}


def test_kube_sink_waits_for_a_write_no_longer_than_the_gate_stays_open():
    client = FakeKube()
    kube_sink(client, gate=Gate(open_for=2.0)).apply(KubePlan(create=(desired("a"),)))
    kube_sink(client).apply(KubePlan(create=(desired("b"),)))
    closing, ungated = client.timeouts
    assert 0 < closing <= 2.0, f"capped at the gate's 2 s: {closing}"
    assert ungated == WRITE_TIMEOUT


def test_consul_sink_throttled_by_consul_says_when_to_come_back_and_logs_it_once(caplog):
    # Consul's rate limiter answers 429 with Retry-After; coming back sooner only earns
    # another 429, so the sink records when the reconciler may try again.
    slow_down = [Transient("429 Too Many Requests: rate limit exceeded", retry_after=0.01)] * 6
    client = FakeConsul(slow_down)
    sink = consul_sink(client)
    before = time.monotonic()
    for _ in range(2):
        result = sink.apply(Plan(create=regs(2)))
        assert set(result.failed) == {"web-000", "web-001"}
    assert sink.throttled_until > before, "the Retry-After is kept for the reconciler"
    warned = [r for r in caplog.records if "slow down" in r.getMessage()]
    assert len(warned) == 1, f"one line for the throttling, got {[r.getMessage() for r in warned]}"
    assert sink.apply(Plan(create=regs(2))).ok, "Consul accepts writes again"
    client.outcomes = list(slow_down)
    sink.apply(Plan(create=regs(2)))
    warned = [r for r in caplog.records if "slow down" in r.getMessage()]
    assert len(warned) == 2, "a new throttling after a write landed is said again"
