"""One merged catalog from the Kubernetes and Consul snapshots."""

from __future__ import annotations

import itertools

import pytest

from bridge.catalog.merge import merge
from bridge.catalog.model import (
    Catalog,
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)

KUBE = Origin(OriginKind.KUBERNETES, "cluster-a")
VM = Origin(OriginKind.CONSUL, "vm-node")
WEB = ServiceKey("shop", "web")


def inst(address: str, origin: Origin = KUBE, port: int = 8080) -> Instance:
    return Instance(address=address, ports=(Port("http", port),), origin=origin)


def local(*addresses: str, key: ServiceKey = WEB,
          stype: ServiceType = ServiceType.CLUSTER_IP) -> Service:
    return Service(key=key, type=stype, ports=(Port("http", 80),), cluster_ips=("10.96.0.10",),
                   instances=tuple(inst(a) for a in addresses))


def remote(*addresses: str, key: ServiceKey = WEB) -> Service:
    return Service(key=key, type=ServiceType.HEADLESS, ports=(Port("http", 9090),),
                   instances=tuple(inst(a, VM, 9090) for a in addresses))


def snap(*services: Service, synced: bool = True) -> Snapshot:
    return Snapshot.of(services, synced)


def test_disjoint_services_are_all_present():
    db = remote("192.168.1.5", key=ServiceKey("consul", "db"))
    catalog = merge(snap(local("10.0.0.1")), snap(db))
    assert set(catalog.services) == {WEB, ServiceKey("consul", "db")}
    assert catalog.services[WEB] == local("10.0.0.1")
    assert catalog.services[ServiceKey("consul", "db")] == db


def test_same_key_is_united_local_keeps_type_and_ips():
    catalog = merge(snap(local("10.0.0.1")), snap(remote("192.168.1.5")))
    web = catalog.services[WEB]
    assert web.type is ServiceType.CLUSTER_IP, "the local Service's type is kept"
    assert web.cluster_ips == ("10.96.0.10",), "the local Service's IPs are kept"
    assert web.ports == (Port("http", 80),), "the local Service's ports are kept"
    assert [i.address for i in web.instances] == ["10.0.0.1", "192.168.1.5"]
    assert [i.origin for i in web.instances] == [KUBE, VM], "each instance keeps its origin"


def test_remote_duplicates_by_address_are_dropped_local_copy_kept():
    catalog = merge(snap(local("10.0.0.1", "10.0.0.2")), snap(remote("10.0.0.2", "10.0.0.3")))
    instances = catalog.services[WEB].instances
    assert [i.address for i in instances] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    dup = next(i for i in instances if i.address == "10.0.0.2")
    assert dup.origin == KUBE, "the local copy of a duplicated address wins"


def test_local_wins_hides_remote_instances_when_local_has_some():
    catalog = merge(snap(local("10.0.0.1")), snap(remote("192.168.1.5")), local_wins=True)
    assert [i.address for i in catalog.services[WEB].instances] == ["10.0.0.1"]


def test_local_wins_with_an_empty_local_service_takes_the_remote_instances():
    catalog = merge(snap(local()), snap(remote("192.168.1.5")), local_wins=True)
    web = catalog.services[WEB]
    assert [i.address for i in web.instances] == ["192.168.1.5"]
    assert web.type is ServiceType.CLUSTER_IP, "still the local Service, with remote instances"


def test_local_wins_does_not_affect_remote_only_services():
    db = remote("192.168.1.5", key=ServiceKey("consul", "db"))
    catalog = merge(snap(local("10.0.0.1")), snap(db), local_wins=True)
    assert catalog.services[ServiceKey("consul", "db")] == db


@pytest.mark.parametrize(("kube_synced", "consul_synced"),
                         list(itertools.product((False, True), repeat=2)))
def test_ready_only_when_both_snapshots_synced(kube_synced, consul_synced):
    catalog = merge(snap(local("10.0.0.1"), synced=kube_synced),
                    snap(remote("192.168.1.5"), synced=consul_synced))
    assert catalog.ready is (kube_synced and consul_synced), (
        f"kube synced={kube_synced}, consul synced={consul_synced}: ready={catalog.ready}")


def test_generation_is_carried_and_empty_merge_is_empty():
    catalog = merge(Snapshot(), Snapshot(), generation=7)
    assert isinstance(catalog, Catalog)
    assert catalog.generation == 7
    assert dict(catalog.services) == {}
    assert catalog.ready is False


def test_merge_does_not_mutate_the_inputs():
    kube, consul = snap(local("10.0.0.1")), snap(remote("192.168.1.5"))
    merge(kube, consul)
    assert kube.services[WEB].instances == (inst("10.0.0.1"),)
    assert set(kube.services) == {WEB}


def test_catalog_services_are_read_only():
    catalog = merge(snap(local("10.0.0.1")), snap())
    with pytest.raises(TypeError):
        catalog.services[ServiceKey("x", "y")] = local()  # type: ignore[index]


def test_merge_is_deterministic():
    kube = snap(local("10.0.0.1"), local("10.0.1.1", key=ServiceKey("shop", "api")))
    consul = snap(remote("192.168.1.5"), remote("192.168.1.6", key=ServiceKey("consul", "db")))
    assert merge(kube, consul) == merge(kube, consul)
