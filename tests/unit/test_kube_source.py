"""The Kubernetes source's incremental join: after any sequence of cache changes, its
snapshot equals the join computed from scratch, and unchanged Services stay the same
objects (what the sinks' memo and the DNS table's incremental update rely on)."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.catalog.model import ServiceKey
from bridge.config import KubernetesSettings
from bridge.kube.objects import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    join,
    service_from_raw,
    slice_from_raw,
)
from bridge.kube.source import KubeSource, namespace_allowed
from bridge.kube.watch import Reflector

CLUSTER = "c1"
NAMESPACES = ["shop", "blog", "kube-system"]
NAMES = ["web", "api", "db"]


def raw_service(namespace: str, name: str, variant: int) -> dict[str, Any]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE} if variant == 3 else {}
    return {"metadata": {"namespace": namespace, "name": name, "labels": labels},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": variant == 2,
                     "ports": [{"name": "http", "port": 80 + variant}]}}


def raw_slice(namespace: str, name: str, service: str, addresses: list[int],
              ready: bool) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [f"10.0.0.{a}"], "conditions": {"ready": ready}}
                          for a in addresses]}


class Fake:
    """Drives a KubeSource's reflectors the way their watch loops do."""

    def __init__(self) -> None:
        settings = KubernetesSettings()
        self.source = KubeSource(None, settings, CLUSTER, lambda: None,  # type: ignore[arg-type]
                                 threading.Event())
        for reflector in (self.source.services, self.source.slices):
            reflector.synced.set()
        self.settings = settings

    def put(self, reflector: Reflector, key: tuple[str, str], value: Any) -> None:
        if reflector.items.get(key) == value:
            return  # as the watch loop: an update that changes nothing is no change
        items = dict(reflector.items)
        items[key] = value
        reflector._publish(items, key)

    def delete(self, reflector: Reflector, key: tuple[str, str]) -> None:
        items = dict(reflector.items)
        if items.pop(key, None) is not None:
            reflector._publish(items, key)

    def relist(self, reflector: Reflector) -> None:
        reflector._publish(dict(reflector.items), None)

    def expected(self) -> dict[tuple[str, str], Any]:
        slices = self.source.slices.items.values()
        out = {}
        for key, svc in self.source.services.items.items():
            if not namespace_allowed(key[0], self.settings.namespaces,
                                     self.settings.deny_namespaces) \
                    or svc.label(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
                continue
            own = [s for s in slices if (s.namespace, s.service) == key]
            joined = join(svc, own, CLUSTER)
            out[joined.key] = joined
        return out


operation = st.one_of(
    st.tuples(st.just("service"), st.sampled_from(NAMESPACES), st.sampled_from(NAMES),
              st.integers(0, 3)),
    st.tuples(st.just("unservice"), st.sampled_from(NAMESPACES), st.sampled_from(NAMES)),
    st.tuples(st.just("slice"), st.sampled_from(NAMESPACES), st.integers(0, 3),
              st.sampled_from(NAMES), st.lists(st.integers(1, 9), max_size=3), st.booleans()),
    st.tuples(st.just("unslice"), st.sampled_from(NAMESPACES), st.integers(0, 3)),
    st.tuples(st.just("relist"), st.sampled_from(["services", "slices"])),
    st.tuples(st.just("snapshot")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, max_size=40))
def test_incremental_snapshot_equals_a_join_from_scratch(operations):
    fake = Fake()
    source = fake.source
    previous = source.snapshot()
    touched: set[tuple[str, str]] = set()  # Services whose inputs changed since `previous`
    for op in operations:
        kind = op[0]
        if kind == "service":
            _, ns, name, variant = op
            fake.put(source.services, (ns, name), service_from_raw(raw_service(ns, name, variant)))
            touched.add((ns, name))
        elif kind == "unservice":
            fake.delete(source.services, (op[1], op[2]))
        elif kind in ("slice", "unslice"):
            ns, name = op[1], f"slice-{op[2]}"
            before = source.slices.items.get((ns, name))
            if before is not None:
                touched.add((ns, before.service))
            if kind == "slice":
                _, _, _, service, addresses, ready = op
                fake.put(source.slices, (ns, name),
                         slice_from_raw(raw_slice(ns, name, service, addresses, ready)))
                touched.add((ns, service))
            else:
                fake.delete(source.slices, (ns, name))
        elif kind == "relist":
            fake.relist(getattr(source, op[1]))  # the same items: nothing to redo
        else:
            snap = source.snapshot()
            assert dict(snap.services) == fake.expected()
            for key, svc in snap.services.items():
                before = previous.services.get(key)
                if before is not None and (key.namespace, key.name) not in touched:
                    assert before is svc, f"{key}: inputs unchanged but not the same object"
            previous, touched = snap, set()
    snap = source.snapshot()
    assert dict(snap.services) == fake.expected(), "the last snapshot differs from a fresh join"
    assert all(type(key) is ServiceKey for key in snap.services), "keyed by ServiceKey"
    sorted(snap.services)  # consumers sort the keys


def test_a_snapshot_without_changes_is_the_same_object():
    fake = Fake()
    source = fake.source
    fake.put(source.services, ("shop", "web"), service_from_raw(raw_service("shop", "web", 0)))
    first = source.snapshot()
    assert source.snapshot() is first
    fake.put(source.slices, ("shop", "s"), slice_from_raw(raw_slice("shop", "s", "web", [1], True)))
    second = source.snapshot()
    assert second is not first
    assert [i.address for i in second.services[ServiceKey("shop", "web")].instances] == ["10.0.0.1"]


def test_a_slice_moving_to_another_service_leaves_the_first():
    fake = Fake()
    source = fake.source
    for name in ("web", "api"):
        fake.put(source.services, ("shop", name), service_from_raw(raw_service("shop", name, 0)))
    fake.put(source.slices, ("shop", "s"), slice_from_raw(raw_slice("shop", "s", "web", [1], True)))
    assert source.snapshot().services[ServiceKey("shop", "web")].instances
    fake.put(source.slices, ("shop", "s"), slice_from_raw(raw_slice("shop", "s", "api", [1], True)))
    snap = source.snapshot()
    assert not snap.services[ServiceKey("shop", "web")].instances
    assert [i.address for i in snap.services[ServiceKey("shop", "api")].instances] == ["10.0.0.1"]


def test_an_outgrown_change_log_falls_back_to_a_full_join(monkeypatch):
    from bridge.kube import watch

    fake = Fake()
    source = fake.source
    monkeypatch.setattr(source.slices, "_changes", watch.deque(maxlen=2))
    fake.put(source.services, ("shop", "web"), service_from_raw(raw_service("shop", "web", 0)))
    source.snapshot()
    for i in range(1, 6):
        fake.put(source.slices, ("shop", f"s{i}"),
                 slice_from_raw(raw_slice("shop", f"s{i}", "web", [i], True)))
    assert source.slices.changed_since(source.slices.version - 5, source.slices.version) is None
    snap = source.snapshot()
    assert dict(snap.services) == fake.expected()
    assert len(snap.services[ServiceKey("shop", "web")].instances) == 5


def test_a_changed_service_keeps_its_place_in_the_snapshot():
    fake = Fake()
    source = fake.source
    for name in NAMES:
        fake.put(source.services, ("shop", name), service_from_raw(raw_service("shop", name, 0)))
    before = list(source.snapshot().services)
    fake.put(source.slices, ("shop", "s"), slice_from_raw(raw_slice("shop", "s", "web", [1], True)))
    fake.put(source.services, ("shop", "web"), service_from_raw(raw_service("shop", "web", 1)))
    assert list(source.snapshot().services) == before, \
        "consumers compare consecutive snapshots side by side: the order must hold"
