"""A write batch waits no longer than the write gate stays open, through the real Consul
client against the Consul test server holding every transaction (its slow fault): the
client gives up on the transaction when the gate closes, the sink reports the batch failed
and sends no other, and the next batch goes only through an open gate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bridge.catalog.plan import Plan, Registration
from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.consul.sink import ConsulSink
from bridge.ha.gate import NOT_WRITER
from bridge.testing.consul import ConsulServer

HELD = 30.0  # seconds the server holds each transaction: far beyond the gate


class Gate:
    def __init__(self, open_for: float) -> None:
        self.until = time.monotonic() + open_for

    def may_write(self) -> bool:
        return time.monotonic() < self.until

    def may_write_until(self) -> float:
        return self.until


@pytest.fixture
def consul() -> Iterator[ConsulServer]:
    server = ConsulServer(host="127.0.0.1", port=0, jitter=False)
    server.start()
    yield server
    server.faults.slow(0)
    server.stop()


def regs(count: int) -> tuple[Registration, ...]:
    return tuple(Registration(service_id=f"web-{i}", name="web", address=f"10.0.0.{i + 1}", port=80,
                              meta=(("external-k8s-ns", "default"),)) for i in range(count))


def test_a_transaction_is_given_up_when_the_gate_closes_and_no_other_batch_is_sent(consul):
    client = ConsulClient(ConsulSettings(address=consul.url))
    gate = Gate(open_for=0.5)
    sink = ConsulSink(client, node="k8s-sync-east", cluster_id="east", stop=threading.Event(),
                      batch_size=4, gate=gate)
    consul.faults.slow(HELD, path_prefix="/v1/txn")
    try:
        began = time.monotonic()
        result = sink.apply(Plan(create=regs(4)))  # the node and two per batch: two batches
        took = time.monotonic() - began
    finally:
        client.close()
    # Generous: the gate closes 0.5 s in; the server would hold the answer for 30 s.
    assert took < HELD / 3, f"the sink waited {took:.1f}s for a transaction past its gate"
    assert result.written == [] and set(result.failed) == {r.service_id for r in regs(4)}
    first_batch = {"web-0", "web-1"}
    assert all(result.failed[sid] == NOT_WRITER for sid in set(result.failed) - first_batch), \
        "no batch after the gate closed"
    txns = [r for r in consul.requests.records() if r.path == "/v1/txn"]
    assert len(txns) <= 1, f"only the first batch may have reached the server: {len(txns)}"
