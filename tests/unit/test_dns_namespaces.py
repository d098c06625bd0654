"""Which namespaces DNS answers, apart from which are synced to Consul (issue 16).

`kubernetes.deny_namespaces` (kube-system, kube-public by default) keeps namespaces out of
Consul, as consul-k8s's `-deny-k8s-namespace` does; DNS answers every namespace unless
`dns.namespaces` / `dns.deny_namespaces` say otherwise. The Kubernetes source serves both
views from one incremental join.
"""

from __future__ import annotations

import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.catalog.model import ServiceKey
from bridge.config import KubernetesSettings
from bridge.kube.objects import MANAGED_BY_LABEL, MANAGED_BY_VALUE, join, service_from_raw, slice_from_raw
from bridge.kube.source import KubeSource, namespace_allowed
from tests.unit.test_kube_source import CLUSTER, Fake, operation, raw_service, raw_slice


def _source(dns: tuple[tuple[str, ...], tuple[str, ...]] = (("*",), ()),
            **kube: tuple[str, ...]) -> Fake:
    fake = Fake()
    fake.settings = KubernetesSettings(**kube)
    fake.source = KubeSource(None, fake.settings, CLUSTER, lambda: None,  # type: ignore[arg-type]
                             threading.Event(), dns_namespaces=dns)
    for reflector in (fake.source.services, fake.source.slices):
        reflector.synced.set()
    return fake


def _put_service(fake: Fake, namespace: str, name: str) -> None:
    fake.put(fake.source.services, (namespace, name),
             service_from_raw(raw_service(namespace, name, 0)))


def test_kube_system_is_answered_but_not_synced_by_default():
    fake = _source()
    for namespace, name in (("kube-system", "kube-dns"), ("kube-public", "info"),
                            ("default", "web")):
        _put_service(fake, namespace, name)
    synced = set(fake.source.snapshot().services)
    answered = set(fake.source.dns.snapshot().services)
    assert synced == {ServiceKey("default", "web")}, f"sync view: {sorted(synced)}"
    assert answered == {ServiceKey("kube-system", "kube-dns"), ServiceKey("kube-public", "info"),
                        ServiceKey("default", "web")}, f"dns view: {sorted(answered)}"


def test_dns_filters_are_its_own():
    fake = _source(dns=(("*",), ("secret-*",)), namespaces=("shop", "secret-a"),
                   deny_namespaces=())
    for namespace in ("shop", "secret-a", "blog"):
        _put_service(fake, namespace, "web")
    assert {k.namespace for k in fake.source.snapshot().services} == {"shop", "secret-a"}
    assert {k.namespace for k in fake.source.dns.snapshot().services} == {"shop", "blog"}


def test_each_view_is_the_same_object_while_nothing_changes():
    fake = _source()
    _put_service(fake, "kube-system", "kube-dns")
    dns_first, sync_first = fake.source.dns.snapshot(), fake.source.snapshot()
    assert fake.source.dns.snapshot() is dns_first
    assert fake.source.snapshot() is sync_first
    fake.put(fake.source.slices, ("kube-system", "s"),
             slice_from_raw(raw_slice("kube-system", "s", "kube-dns", [1], True)))
    after = fake.source.dns.snapshot()
    assert after is not dns_first
    assert [i.address for i in after.services[ServiceKey("kube-system", "kube-dns")].instances] \
        == ["10.0.0.1"]
    assert fake.source.snapshot().services == sync_first.services, "sync view: kube-system left out"


def _expected(fake: Fake, allow: tuple[str, ...], deny: tuple[str, ...]) -> dict:
    slices = fake.source.slices.items.values()
    out = {}
    for key, svc in fake.source.services.items.items():
        if not namespace_allowed(key[0], allow, deny) \
                or svc.label(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
            continue
        joined = join(svc, [s for s in slices if (s.namespace, s.service) == key], CLUSTER)
        out[joined.key] = joined
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(operation, max_size=30), which=st.lists(st.booleans(), max_size=30))
def test_both_views_equal_a_join_from_scratch_after_any_changes(operations, which):
    """The snapshots are taken in any interleaving of the two consumers (DNS publisher,
    reconciler): each view still equals its own filter over a fresh join."""
    dns_filter = (("*",), ("blog",))
    fake = _source(dns=dns_filter)
    source = fake.source
    picks = iter(which)
    for op in operations:
        kind = op[0]
        if kind == "service":
            _, ns, name, variant = op
            fake.put(source.services, (ns, name), service_from_raw(raw_service(ns, name, variant)))
        elif kind == "unservice":
            fake.delete(source.services, (op[1], op[2]))
        elif kind == "slice":
            _, ns, index, service, addresses, ready = op
            fake.put(source.slices, (ns, f"slice-{index}"),
                     slice_from_raw(raw_slice(ns, f"slice-{index}", service, addresses, ready)))
        elif kind == "unslice":
            fake.delete(source.slices, (op[1], f"slice-{op[2]}"))
        elif kind == "relist":
            fake.relist(getattr(source, op[1]))
        elif next(picks, True):
            assert dict(source.dns.snapshot().services) == _expected(fake, *dns_filter)
        else:
            assert dict(source.snapshot().services) == _expected(
                fake, fake.settings.namespaces, fake.settings.deny_namespaces)
    assert dict(source.dns.snapshot().services) == _expected(fake, *dns_filter), "dns view"
    assert dict(source.snapshot().services) == _expected(
        fake, fake.settings.namespaces, fake.settings.deny_namespaces), "sync view"
