"""Consul -> Kubernetes against the Kubernetes API test server: everything written is accepted.

- A property test feeds random Consul registrations (names, `port-<name>` and namespace
  meta, tags, addresses in every special range and IPv6, ports) through the Consul source's
  naming and the materialiser into the test server over HTTP with the real client: every
  derived object is accepted, even with objects the server refuses in the same batch, and
  the next plan against what the server then holds is empty.
- With one object the server refuses whatever the bridge does (an admission policy),
  30 s of idle reconciling, on an injected clock, send it once per periodic resync and
  nothing else, and it is logged once.
- The user's story, with the whole bridge: ordinary Consul services, one named `1password`,
  one on 127.0.0.1, land; a refused one is said once with the server's own words.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from bridge import config
from bridge.catalog.model import Snapshot
from bridge.consul.source import ConsulSource
from bridge.kube.client import KubeClient
from bridge.kube.materialise import Desired, Held, KubePlan, held, plan_for
from bridge.kube.objects import object_key, service_from_raw, slice_from_raw
from bridge.kube.sink import KubeSink
from bridge.reconcile.loop import Lane, Reconciler
from bridge.reconcile.plans import KubePlanner
from bridge.rejections import Rejections
from bridge.testing.kube import KubeAPIServer
from bridge.testing.kube.errors import FieldError, StatusError
from bridge.testing.kube.resources import ResourceType
from bridge.testing.kube.store import Store
from tests.integration.harness import World, a_records, converged, eventually, namespace
from tests.integration.test_consul_to_k8s import register_vm

MANAGED = "app.kubernetes.io/managed-by=bridge"


@pytest.fixture()  # per test, like the client: its connection threads end with the test
def server() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture()
def client(server: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeClient]:
    kubeconfig = server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    made = KubeClient(config.build(environ={}, flags={"kubernetes.kubeconfig": str(kubeconfig)}).kubernetes)
    yield made
    made.close()


def held_by(store: Store) -> Held:
    """What the server holds, as the sink's caches would show it."""
    services = {object_key(raw): service_from_raw(raw) for raw in store.objects("services")}
    slices = {object_key(raw): slice_from_raw(raw) for raw in store.objects("endpointslices")}
    return held(services, slices)


def objects_of(store: Store) -> Any:
    def read() -> tuple[Any, Any]:
        return ({object_key(raw): service_from_raw(raw) for raw in store.objects("services")},
                {object_key(raw): slice_from_raw(raw) for raw in store.objects("endpointslices")})
    return read


def clear(store: Store) -> None:
    for plural in ("services", "endpointslices"):
        for raw in store.objects(plural):
            store.delete(plural, raw["metadata"]["namespace"], raw["metadata"]["name"])


# --- what Consul may hold ---------------------------------------------------------------------------

ODD_NAMES = ["billing", "web-api", "1password", "7", "Billing_API", "api.v2", "consul-1password", "-x-",
             "_", "ünïcode", "a" * 70, "9" * 64, "UPPER", "dots.and_under", "x--y"]
names = st.one_of(st.sampled_from(ODD_NAMES),
                  st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), min_size=1, max_size=70)
                  ).filter(lambda n: "poison" not in n.lower())
ADDRESSES = st.one_of(
    st.integers(1, 250).map(lambda i: f"10.0.{i % 7}.{i}"),
    st.integers(1, 250).map(lambda i: f"fd00::{i:x}"),
    st.sampled_from(["127.0.0.1", "127.9.9.9", "169.254.169.254", "224.0.0.251", "0.0.0.0", "::1", "::",
                     "fe80::1", "ff02::fb", "ff12::1", "::ffff:10.0.0.7", "::ffff:127.0.0.1",
                     "2001:db8::1%eth0", "239.1.1.1", "192.0.2.7", "2001:db8::7"]),
)
PORT_NAMES = st.one_of(st.sampled_from(["http", "HTTP", "grpc.v2", "Http_Admin", "8080", "a" * 70, "x--y",
                                        "metrics", "-"]),
                       st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=20))
PORT_META = st.dictionaries(PORT_NAMES.map(lambda n: f"port-{n}"),
                            st.one_of(st.integers(1, 65535), st.integers(65536, 70000), st.just(0)).map(str),
                            max_size=4)
NAMESPACE_META = st.one_of(
    st.just({}),
    st.sampled_from(["payments", "Team_A", "1ns", "a" * 70, "ns.dotted"]).map(lambda ns: {"k8s-namespace": ns}),
    st.tuples(st.sampled_from(["payments", "Team_A", "shop"]), names).map(
        lambda pair: {"external-k8s-ns": pair[0], "external-k8s-name": pair[1]}),
)


@st.composite
def health_entries(draw: st.DrawFn, service: str) -> list[dict[str, Any]]:
    entries = []
    for i in range(draw(st.integers(1, 4))):
        meta = {**draw(PORT_META), **draw(NAMESPACE_META)}
        entries.append({
            "Node": {"Node": f"vm-{i}", "Address": "192.0.2.250"},
            "Service": {"ID": f"{service}-{i}", "Service": service, "Address": draw(ADDRESSES),
                        "Port": draw(st.one_of(st.integers(0, 65535), st.just(8080))),
                        "Tags": draw(st.lists(st.text(max_size=10), max_size=3)), "Meta": meta},
            "Checks": [{"Status": draw(st.sampled_from(["passing", "passing", "warning", "critical"]))}],
        })
    return entries


@st.composite
def consul_catalogs(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    return {name: draw(health_entries(name)) for name in draw(st.sets(names, min_size=1, max_size=6))}


def snapshot_of(catalog: dict[str, list[dict[str, Any]]]) -> Snapshot:
    """The Consul source's snapshot of `catalog`: its own naming, namespaces and skips."""
    source = ConsulSource(cast(Any, None), our_node="k8s-sync-test", cluster_id="test",
                          default_namespace="consul", on_change=lambda: None, stop=threading.Event())
    for service, entries in catalog.items():
        source._store(service, entries)  # what its blocking loop delivers
    return Snapshot.of(source.snapshot().services.values(), synced=True)


def ensure_namespaces(store: Store, snapshot: Snapshot) -> None:
    """Creates every namespace the snapshot names that Kubernetes could have."""
    for ns in {key.namespace for key in snapshot.services}:
        if store.find("namespaces", None, ns) is None:
            try:
                store.create("namespaces", None, {"metadata": {"name": ns}})
            except StatusError:  # no namespace name Kubernetes takes: the bridge leaves it out
                pass


# --- objects the server refuses whatever the bridge derives ---------------------------------------

def poison(i: int) -> tuple[Desired, dict[str, Any]]:
    """One of three writes a real API server refuses: a Service name starting with a digit,
    a slice holding a loopback address, a Service listing one port number twice."""
    kind = i % 3
    if kind == 0:
        name = f"{i}poison"
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "consul"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}
        return Desired("services", "consul", name, ()), body
    if kind == 1:
        name = f"poison-slice-{i}"
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "consul"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"]}], "ports": []}
        return Desired("endpointslices", "consul", name, ()), body
    name = f"poison-ports-{i}"
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "consul"},
            "spec": {"clusterIP": "None", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}}
    return Desired("services", "consul", name, ()), body


def with_poison(plan: KubePlan, count: int, spread: int) -> tuple[KubePlan, set[tuple[str, str, str]]]:
    """`plan` with `count` refused writes mixed into its creates."""
    creates, bodies = list(plan.create), dict(plan.bodies)
    keys = set()
    for i in range(count):
        d, body = poison(i)
        creates.insert((spread * (i + 1)) % (len(creates) + 1), d)
        bodies[d.key] = body
        keys.add(d.key)
    return KubePlan(tuple(creates), plan.replace, plan.delete, plan.clashes, bodies), keys


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(catalog=consul_catalogs(), poisoned=st.integers(0, 3), spread=st.integers(0, 50))
def test_every_derived_object_is_accepted_and_lands_beside_refused_ones(server, client, catalog, poisoned, spread):
    store = server.store
    clear(store)
    snapshot = snapshot_of(catalog)
    ensure_namespaces(store, snapshot)
    if store.find("namespaces", None, "consul") is None:  # where the poisoned writes go
        store.create("namespaces", None, {"metadata": {"name": "consul"}})
    plan = plan_for(snapshot.services, held_by(store))
    derived = {d.key for _, d in plan.writes()}
    mixed, refused = with_poison(plan, poisoned, spread)
    rejections = Rejections()
    result = KubeSink(client, objects_of(store), threading.Event(), rejections).apply(mixed)

    assert result.failed == {}, result.failed
    assert set(result.rejected) == refused, f"only the poisoned writes are refused: {result.rejected}"
    assert all(reason == "Invalid" for reason, _ in rejections.held("kubernetes").values())
    assert set(result.written) == derived, "every derived object lands"
    for plural, ns, name in derived:
        assert store.find(plural, ns, name) is not None, f"{plural} {ns}/{name} is not on the server"
    again = plan_for(snapshot.services, held_by(store))
    assert again.empty, f"what the server holds must equal what was derived: {list(again.describe())}"


# --- idle with one object the server always refuses --------------------------------------------

class RefuseServiceName:
    """An admission policy of the cluster's own: Services named `name` are refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def admit(self, store: Store, rt: ResourceType, old: Any, new: dict[str, Any]) -> list[FieldError]:
        if rt.plural == "services" and new["metadata"].get("name") == self.name:
            return [FieldError("Forbidden", "metadata.name", None, f"the name {self.name} is reserved here")]
        return []


class InjectedClock:
    """The reconciler's trigger, on an injected clock: a wait takes no real time, only moves
    the clock on by its timeout (nothing pokes: the world is idle). The bridge stops once
    `until` seconds have passed."""

    def __init__(self, stop: threading.Event, until: float) -> None:
        self.now, self.until, self._stop = 0.0, until, stop
        self.pending = False

    def poke(self) -> None:
        raise AssertionError("nothing changes while idle")

    def close(self) -> None:
        pass

    def wait(self, timeout: float) -> float | None:
        self.now += timeout
        if self.now >= self.until:
            self._stop.set()
        return None


def fixed(snapshot: Snapshot) -> Any:
    """A source that has listed and always sees `snapshot`."""
    return SimpleNamespace(synced=True, snapshot=lambda: snapshot)


def test_thirty_idle_seconds_send_a_refused_object_once_per_resync_and_log_it_once(server, client, caplog):
    store = server.store
    clear(store)
    if store.find("namespaces", None, "consul") is None:
        store.create("namespaces", None, {"metadata": {"name": "consul"}})
    refuse = RefuseServiceName("legacy")
    store.admission.append(refuse)
    try:
        entries = {name: [{"Node": {"Node": "vm-1", "Address": "192.0.2.250"},
                           "Service": {"ID": name, "Service": name, "Address": address, "Port": 8080},
                           "Checks": [{"Status": "passing"}]}]
                   for name, address in (("legacy", "192.0.2.1"), ("billing", "192.0.2.2"), ("ledger", "192.0.2.3"))}
        consul = fixed(snapshot_of(entries))
        rejections = Rejections()
        stop = threading.Event()
        sink = KubeSink(client, objects_of(store), stop, rejections)
        lane = Lane("kubernetes", KubePlanner(sink, rejections), sink)
        clock = InjectedClock(stop, until=30.0)
        resync = 10.0
        reconciler = Reconciler(kube=fixed(Snapshot(synced=True)), consul=consul, lanes=[lane],
                                trigger=cast(Any, clock), stop=stop, resync_period=resync)
        with caplog.at_level(logging.WARNING, logger="bridge.rejections"):
            assert reconciler.step(), "a pass whose only trouble is a refusal is settled"
            assert store.find("services", "consul", "billing") and store.find("services", "consul", "ledger")
            assert store.find("services", "consul", "legacy") is None
            server.clear_requests()
            reconciler.start()
            assert reconciler.thread is not None
            reconciler.thread.join(timeout=60)  # a generous bound: the clock is injected, no real waits
            assert not reconciler.thread.is_alive(), "the loop ends once 30 injected seconds have passed"
        sent = [(r.method, r.path) for r in server.requests]
        assert len(sent) < 10, sent
        resyncs = int(clock.until // resync) - 1  # at 10 s and 20 s; at 30 s the bridge stops
        assert sent == [("POST", "/api/v1/namespaces/consul/services")] * resyncs, \
            "only the refused Service, once per periodic resync"
        refused_lines = [r.getMessage() for r in caplog.records if "services consul/legacy" in r.getMessage()]
        assert len(refused_lines) == 1, refused_lines
        assert "the name legacy is reserved here" in refused_lines[0], "the server's own message"
    finally:
        store.admission.remove(refuse)


# --- the user's story, with the whole bridge ------------------------------------------------------

@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.apply([namespace("consul")])
    yield w
    w.close()


def counted(reason: str) -> float:
    return REGISTRY.get_sample_value("bridge_rejected_total", {"sink": "kubernetes", "reason": reason}) or 0.0


def passes() -> float:
    return REGISTRY.get_sample_value("bridge_reconcile_passes_total", {"reason": "resync"}) or 0.0


def test_ordinary_consul_services_land_and_a_refused_one_is_said_once(world, caplog):
    world.kube.store.admission.append(RefuseServiceName("legacy"))
    register_vm(world, "vm-1", "192.0.2.31", name="1password", Meta={"port-HTTP_Admin": "8080", "port-grpc": "9090"})
    register_vm(world, "vm-2", "127.0.0.1", name="billing")  # a local agent's address
    register_vm(world, "vm-3", "192.0.2.33", name="billing")
    register_vm(world, "vm-4", "192.0.2.34", name="legacy")
    before = counted("Invalid")
    with caplog.at_level(logging.INFO):
        app = world.start_bridge(sync__to_k8s=True, sync__resync_period=1)
        converged(app)
        services = {s["metadata"]["name"]: s for s in world.kube.store.objects("services", "consul")}
        assert {"consul-1password", "billing"} <= set(services), sorted(services)
        assert "legacy" not in services
        assert sorted((p["name"], p["port"]) for p in services["consul-1password"]["spec"]["ports"]) == [
            ("grpc", 9090), ("http-admin", 8080)]
        slices = world.kube.store.list("endpointslices", "consul", label_selector="kubernetes.io/service-name=billing")
        assert [e["addresses"] for s in slices["items"] for e in s["endpoints"]] == [["192.0.2.33"]]
        assert a_records(app, "1password.consul.svc.cluster.local.") == {"192.0.2.31"}, "DNS keeps the label"
        assert a_records(app, "billing.consul.svc.cluster.local.") == {"127.0.0.1", "192.0.2.33"}

        # Idle: the refused Service is sent again only at the resyncs, the rest not at all.
        world.kube.clear_requests()
        start = passes()
        eventually(lambda: passes() >= start + 2, what="two periodic resyncs")
        writes = [(r.method, r.path) for r in world.kube.requests
                  if r.method != "GET" and ("/services" in r.path or "/endpointslices" in r.path)]
        assert set(writes) <= {("POST", "/api/v1/namespaces/consul/services")}, writes
        assert len(writes) <= passes() - start + 1, f"{writes} in {passes() - start} resyncs"
    refused = [r.getMessage() for r in caplog.records if "services consul/legacy refused" in r.getMessage()]
    assert len(refused) == 1, refused
    assert 'Service "legacy" is invalid: metadata.name: Forbidden: the name legacy is reserved here' in refused[0]
    assert counted("Invalid") == before + 1
    skipped = [r.getMessage() for r in caplog.records if "address 127.0.0.1 left out" in r.getMessage()
               and "consul/billing" in r.getMessage()]
    assert len(skipped) == 1, skipped
