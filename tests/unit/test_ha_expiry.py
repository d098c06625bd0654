"""Hiding dead clusters' instances from DNS, with self-preservation per name (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.catalog.expiry import expire, expired, owner_of
from bridge.catalog.model import Service, ServiceKey, ServiceType
from tests.unit.ha_fakes import KEY, consul_instance, local_instance, web

NOW = 5000.0


def addresses(services, key: ServiceKey = KEY) -> set[str]:
    return {i.address for i in services[key].instances}


def test_a_dead_cluster_is_hidden_only_after_the_setting():
    services = web(consul_instance(0, "east"), consul_instance(1, "west"), consul_instance(2, "west"))
    dead = {"east": NOW - 59}
    assert expire(services, dead, NOW, after=60).services is services
    result = expire(services, dead, NOW + 1, after=60)
    assert addresses(result.services) == {"10.0.0.2", "10.0.0.3"}
    assert result.hidden == {KEY: 1} and result.kept == {}


def test_zero_means_never():
    services = web(consul_instance(0, "east"), consul_instance(1, "west"), consul_instance(2, "west"))
    assert expire(services, {"east": 0.0}, NOW, after=0).services is services


def test_self_preservation_keeps_a_name_that_would_lose_more_than_half():
    services = web(consul_instance(0, "east"), consul_instance(1, "east"), consul_instance(2, "west"))
    result = expire(services, {"east": 0.0}, NOW, after=60)
    assert addresses(result.services) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert result.kept == {KEY: frozenset({"east"})} and result.hidden == {}


def test_exactly_half_is_hidden():
    services = web(consul_instance(0, "east"), consul_instance(1, "west"))
    assert addresses(expire(services, {"east": 0.0}, NOW, after=60).services) == {"10.0.0.2"}


def test_a_name_only_a_dead_cluster_served_keeps_answering():
    services = web(consul_instance(0, "east"))
    assert addresses(expire(services, {"east": 0.0}, NOW, after=60).services) == {"10.0.0.1"}


def test_only_bridge_registered_consul_instances_have_an_owner():
    assert owner_of(consul_instance(0, "east")) == "east"
    assert owner_of(consul_instance(0, "")) == ""
    local = local_instance(0)
    assert owner_of(local) == "", "this cluster's own instances are never another's"


def test_expired_counts_from_each_clusters_own_since():
    assert expired({"a": NOW - 100, "b": NOW - 10}, NOW, after=50) == {"a"}
    assert expired({"a": NOW - 100}, NOW, after=0) == frozenset()


owners = st.sampled_from(["", "east", "west", "north", "local"])
names = st.lists(st.lists(owners, min_size=1, max_size=8), min_size=1, max_size=6)
deaths = st.dictionaries(st.sampled_from(["east", "west", "north"]), st.floats(0, NOW), max_size=3)


def build(layout: list[list[str]]) -> dict[ServiceKey, Service]:
    services = {}
    n = 0
    for i, members in enumerate(layout):
        key = ServiceKey("default", f"svc{i}")
        instances = []
        for owner in members:
            instances.append(local_instance(n % 200) if owner == "local" else consul_instance(n, owner))
            n += 1
        services[key] = Service(key, ServiceType.HEADLESS, instances=tuple(instances))
    return services


@settings(max_examples=300)
@given(names, deaths, st.floats(0, NOW))
def test_properties(layout, dead, after):
    services = build(layout)
    result = expire(services, dead, NOW, after)
    due = expired(dead, NOW, after)
    assert set(result.services) == set(services), "no name disappears"
    for key, service in services.items():
        before, kept = service.instances, result.services[key].instances
        gone = [i for i in before if i not in kept]
        assert all(owner_of(i) in due for i in gone), "only instances of clusters dead long enough go"
        assert 2 * len(gone) <= len(before), f"{key} lost more than half: {len(gone)} of {len(before)}"
        due_here = [i for i in before if owner_of(i) in due]
        if 2 * len(due_here) <= len(before):
            assert gone == due_here, "every due instance goes when that leaves at least half"
        else:
            assert not gone and result.kept[key] == {owner_of(i) for i in due_here}
