"""Random Services through the Kubernetes -> Consul sync into the Consul test server: every
registration the bridge writes is accepted and stored as sent, and every valid one lands,
even beside invalid ones in the same batch.

In process: Kubernetes objects as JSON through the bridge's own parsing (`bridge.kube.objects`),
then the reconciler's Consul lane (planner, sink, py-consul) against a fresh Consul test
server per example. Some examples also carry a registration derivation cannot foresee as
invalid: its service ID is held on our node by a service of another name, which Consul
refuses in the transaction ("service name does not match ..."); it alone must be left out.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.catalog.model import Snapshot
from bridge.catalog.plan import Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.catalog.to_consul import (
    META_ANNOTATION_PREFIX,
    PORT_ANNOTATION,
    TAGS_ANNOTATION,
    WEIGHT_ANNOTATION,
    SyncOptions,
    desired,
)
from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.consul.objects import registrations_on_node
from bridge.consul.sink import ConsulSink
from bridge.kube.objects import join, service_from_raw, slice_from_raw
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import ConsulPlanner
from bridge.reconcile.trigger import Trigger
from bridge.rejections import Rejections
from bridge.testing.consul import ConsulServer
from tests.integration.conftest_consul import fake_consul
from tests.unit.test_consul_validation_sink import Static

CLUSTER = "prop"
NODE = f"k8s-sync-{CLUSTER}"
SERVICE_NAME_ANNOTATION = "consul.hashicorp.com/service-name"

META_KEYS = st.one_of(
    st.text(alphabet="abcdXYZ0189_-", min_size=1, max_size=10),
    st.text(min_size=1, max_size=6),
    st.sampled_from(["a.b", "consul-x", "k" * 128, "k" * 129, "external-source", "bridge-owner", "port-http"]))
META_VALUES = st.one_of(st.text(max_size=16), st.sampled_from(["v" * 512, "v" * 513, "é" * 256, "é" * 257]))
TAGS = st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
                max_size=4).map(lambda tags: ",".join(t.replace(",", "\\,") for t in tags))
NAMES = st.sampled_from(["api", "Api.Internal", "a b", "x" * 255, "  padded  ", "ünïcode"])
PORTS = st.sampled_from(["http", "8080", "99999", "0", "bogus", "65535"])
WEIGHTS = st.one_of(st.sampled_from(["x", " 12 ", "-1", "0", "1", "2", "65535", "65536", "70000"]),
                    st.integers(-1, 70000).map(str))
ADDRESSES = st.sampled_from(["10.1.0.1", "10.1.0.2", "0.0.0.0", "::", "192.0.2.5", "2001:db8::7"])


@st.composite
def annotations(draw: st.DrawFn) -> dict[str, str]:
    # Mostly a few meta pairs; now and then more than Consul takes.
    pairs = draw(st.one_of(st.dictionaries(META_KEYS, META_VALUES, max_size=6),
                           st.dictionaries(META_KEYS, META_VALUES, min_size=50, max_size=70)))
    out = {META_ANNOTATION_PREFIX + k: v for k, v in pairs.items()}
    for key, values in ((TAGS_ANNOTATION, TAGS), (SERVICE_NAME_ANNOTATION, NAMES), (PORT_ANNOTATION, PORTS),
                        (WEIGHT_ANNOTATION, WEIGHTS)):
        if draw(st.booleans()):
            out[key] = draw(values)
    return out


@st.composite
def kube_service(draw: st.DrawFn, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Service as the API server holds it, and its EndpointSlices."""
    name = f"svc{index}"
    kind = draw(st.sampled_from(["headless", "LoadBalancer", "externalIPs", "ExternalName"]))
    spec: dict[str, Any] = {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    status: dict[str, Any] = {}
    if kind == "headless":
        spec["clusterIP"] = "None"
    elif kind == "LoadBalancer":
        spec.update(type="LoadBalancer", clusterIP="10.96.0.9")
        status = {"loadBalancer": {"ingress": [{"ip": ip} for ip in draw(st.lists(ADDRESSES, min_size=1,
                                                                                  max_size=3, unique=True))]}}
    elif kind == "externalIPs":
        spec.update(clusterIP="10.96.0.8", externalIPs=draw(st.lists(ADDRESSES, min_size=1, max_size=3, unique=True)))
    else:
        spec = {"type": "ExternalName", "externalName": draw(st.sampled_from(["db.example.com", "0.0.0.0"]))}
    raw = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "prop", "annotations": draw(annotations())},
           "spec": spec, "status": status}
    slices = []
    if kind == "headless":
        pods = draw(st.lists(st.integers(1, 250), min_size=1, max_size=4, unique=True))
        slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": f"{name}-x", "namespace": "prop",
                                    "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4",
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                       "endpoints": [{"addresses": [f"10.2.{index}.{p}"], "conditions": {"ready": p % 3 != 0},
                                      "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": f"{name}-{p}"}}
                                     for p in pods]})
    return raw, slices


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    services = []
    for index in range(draw(st.integers(1, 5))):
        raw, slices = draw(kube_service(index))
        services.append(join(service_from_raw(raw), [slice_from_raw(s) for s in slices], CLUSTER))
    return Snapshot.of(services, synced=True)


class Recording(ConsulSink):
    """The Consul sink, keeping each plan it was given and how it went."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[tuple[Plan, ApplyResult[str]]] = []

    def apply(self, plan: Plan) -> ApplyResult[str]:
        result = super().apply(plan)
        self.applied.append((plan, result))
        return result


def held_by_consul(server: ConsulServer) -> dict[str, Registration]:
    client = ConsulClient(ConsulSettings(address=server.url))
    try:
        view = client.node_services(NODE)
        return registrations_on_node(view, client.node_checks(NODE) if view else [], CLUSTER)
    finally:
        client.close()


def take_an_id(server: ConsulServer, wanted: dict[str, Registration], pick: int) -> str:
    """Register, on our node, another service under one of our service IDs."""
    sid = sorted(wanted)[pick % len(wanted)]
    server.load([{"Node": NODE, "Address": "127.0.0.1",
                  "Service": {"ID": sid, "Service": "someone-else", "Port": 1}}])
    return sid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snap=snapshots(), options=st.fixed_dictionaries({"external_name": st.booleans(),
                                                        "not_ready": st.sampled_from(["critical", "skip"])}),
       batch_size=st.integers(3, 12), take=st.one_of(st.none(), st.integers(0, 100)))
def test_every_registration_written_is_accepted_and_every_valid_one_lands(snap, options, batch_size, take):
    sync = SyncOptions(cluster_id=CLUSTER, **options)
    wanted = dict(desired(snap, sync).registrations)
    with fake_consul() as server:
        taken = take_an_id(server, wanted, take) if take is not None and wanted else None
        client = ConsulClient(ConsulSettings(address=server.url))
        stop = threading.Event()
        try:
            sink = Recording(client, node=NODE, cluster_id=CLUSTER, stop=stop, batch_size=batch_size,
                             rejections=Rejections())
            planner = ConsulPlanner(sink, sync, rejections=Rejections())
            reconciler = Reconciler(kube=Static(snap), consul=Static(Snapshot(synced=True)),
                                    lanes=[Lane("consul", planner, sink)], trigger=Trigger(0.0, 0.0),
                                    stop=stop, resync_period=3600)
            assert reconciler.step(), f"the pass is settled: {sink.applied}"

            rejected = {sid for _, result in sink.applied for sid in result.rejected}
            failed = {sid for _, result in sink.applied for sid in result.failed}
            assert not failed, failed
            assert rejected == ({taken} if taken else set()), "Consul refused only what no one could foresee"
            expected = {sid: reg for sid, reg in wanted.items() if sid != taken}
            assert held_by_consul(server) == expected, "every valid registration landed, as it was sent"
            for record in server.requests.find(method="PUT", path="/v1/txn"):
                assert record.status in (200, 409), (record.status, record.body[:300])
                if record.status == 409:
                    sent = {op["Service"]["Service"]["ID"] for op in json.loads(record.body) if "Service" in op}
                    assert taken in sent, "a transaction refused without the foreign ID in it"

            # Consul stores what was sent: a resync finds nothing to change but what it refused.
            assert reconciler.step(resync=True)
            again, _ = sink.applied[-1] if sink.applied and len(sink.applied) > 1 else (Plan(), None)
            if taken:
                assert [r.service_id for r in again.create] == [taken] and not again.update and not again.delete
            else:
                assert len(sink.applied) <= 1, f"a resync wrote: {sink.applied[1:]}"
        finally:
            stop.set()
            client.close()
