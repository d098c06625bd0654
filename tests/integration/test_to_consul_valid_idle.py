"""A registration Consul refuses for good costs an idle bridge no loop: it is sent again at
each periodic resync and nowhere else, and logged once however often it is refused.

The whole bridge against the two test servers, idle for two resyncs of 15 s (30 s of real
time: the reconciler's waits run on the real clock, and the point is what does not happen
while it waits). Consul's request log tells what the bridge sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bridge.catalog.naming import consul_service_id
from tests.conftest import eventually
from tests.integration.harness import World, converged, pod, service

NODE = "k8s-sync-test"
HTTP = [{"name": "http", "port": 80}]
CONTAINER = [{"name": "http", "containerPort": 80}]


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def resyncs() -> float:
    return REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "resync"}) or 0.0


def test_a_refused_registration_is_retried_only_at_resyncs_and_logged_once(world, caplog):
    world.apply([
        service("taken", headless=True, selector={"app": "taken"}, ports=HTTP),
        pod("taken-0", "10.4.0.1", labels={"app": "taken"}, ports=CONTAINER),
        service("fine", headless=True, selector={"app": "fine"}, ports=HTTP,
                annotations={"consul.hashicorp.com/service-meta-a.b": "dropped",
                             "consul.hashicorp.com/service-meta-team": "blue"}),
        pod("fine-0", "10.4.0.2", labels={"app": "fine"}, ports=CONTAINER),
    ])
    # Someone else's service holds the ID the bridge will want for taken-0: Consul refuses
    # our registration in the transaction, which nothing before the write could know.
    taken = consul_service_id("taken", "10.4.0.1")
    world.consul.load([{"Node": NODE, "Address": "127.0.0.1", "Service": {"ID": taken, "Service": "other"}}])
    caplog.set_level(logging.WARNING, logger="bridge.rejections")

    app = world.start_bridge(sync__resync_period=15)
    converged(app)
    regs = world.registrations(NODE)
    assert regs[taken]["Service"] == "other", "the other service keeps its ID"
    [fine] = [r for r in regs.values() if r["Service"] == "fine"]
    assert fine["Meta"]["team"] == "blue" and "a.b" not in fine["Meta"], "the bad annotation left out"

    mark = len(world.consul.requests.records())
    start = resyncs()
    eventually(lambda: resyncs() >= start + 2, 45, "two resyncs (30 s)")
    converged(app)
    # What the leader spends on its claim of the cluster id (session renewals and reads of
    # its key, bridge/ha/claim.py) is the same with or without a refused registration.
    spent = [r for r in world.consul.requests.records()[mark:] if "index" not in r.query
             and not r.path.startswith(("/v1/session/renew/", "/v1/kv/bridge/clusters/"))]
    txns = [r for r in spent if r.path == "/v1/txn"]
    assert len(txns) == 2 and all(r.status == 409 for r in txns), \
        f"one attempt per resync, refused each time: {[(r.path, r.status) for r in spent]}"
    assert len(spent) < 10, f"30 idle seconds cost {len(spent)} requests: {[(r.method, r.path) for r in spent]}"

    refused = [r.getMessage() for r in caplog.records if taken in r.getMessage()]
    assert len(refused) == 1 and "does not match existing service name" in refused[0], refused
    annotation = [r.getMessage() for r in caplog.records if "default/fine" in r.getMessage()]
    assert len(annotation) == 1 and "service-meta-a.b" in annotation[0], annotation
    assert REGISTRY.get_sample_value("bridge_rejected_total", {"sink": "consul", "reason": "id_taken"}), \
        "the rejection is counted"
