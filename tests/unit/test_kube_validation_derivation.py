"""The bridge derives only objects the API server accepts from whatever Consul holds.

Consul names become Service names that are DNS-1035 labels, `port-<name>` meta becomes
port names that are DNS-1123 labels, and only addresses an EndpointSlice may hold are
written; what is left out is said, one line each, and the DNS name stays the label.
"""

from __future__ import annotations

import pytest

from bridge.catalog.model import Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType
from bridge.catalog.naming import dns_label, is_kube_service_name, kube_service_name, kube_service_names
from bridge.kube.addresses import endpoint_address
from bridge.kube.materialise import MAX_SLICE_ENDPOINTS, Held, materialise, plan_for

ORIGIN = Origin(OriginKind.CONSUL, "vm-1")


def consul_service(name: str, *instances: Instance, namespace: str = "consul") -> Service:
    return Service(key=ServiceKey(namespace, name), type=ServiceType.HEADLESS, instances=instances)


def instance(address: str, *ports: Port, ready: bool = True) -> Instance:
    return Instance(address=address, ports=ports or (Port("", 8080),), origin=ORIGIN, ready=ready)


def bodies_of(plural: str, found) -> list[dict]:
    return [body for key, body in found.bodies.items() if key[0] == plural]


# --- Service names ---------------------------------------------------------------------------

@pytest.mark.parametrize(("label", "expected"), [
    ("billing", "billing"),  # a DNS-1035 label already: unchanged
    ("1password", "consul-1password"),  # starts with a digit: not a Service name
    ("7", "consul-7"),
])
def test_a_service_name_is_the_label_or_the_label_behind_consul(label, expected):
    names, collisions = kube_service_names([label])
    assert names == {label: expected}
    assert collisions == []


def test_a_long_label_keeps_63_characters_and_a_digest_of_itself():
    label = "1" + "a" * 62
    name = kube_service_name(label)
    assert len(name) == 63 and name.startswith("consul-1aaa"), name
    assert is_kube_service_name(name), name
    assert kube_service_name("1" + "a" * 61 + "b") != name, "two long labels must stay apart"


def test_a_derived_name_never_takes_the_name_of_a_service_that_has_it():
    # "consul-1password" is a Consul service of its own: it keeps its name, and 1password,
    # whose derived name it is, gets a digest, the same way every time.
    names, collisions = kube_service_names(["1password", "consul-1password"])
    assert names["consul-1password"] == "consul-1password"
    assert names["1password"].startswith("consul-1password-") and is_kube_service_name(names["1password"])
    assert collisions == [("1password", "consul-1password", names["1password"])]
    assert kube_service_names(["consul-1password", "1password"])[0] == names, "order does not matter"


def test_a_name_from_another_bridges_meta_that_is_no_label_is_made_one():
    # external-k8s-name is copied as is; a hand-made registration may put anything there.
    name = kube_service_name("Billing_API")
    assert is_kube_service_name(name) and name == "consul-billing-api"


def test_the_materialised_service_and_its_slices_use_the_name_and_dns_keeps_the_label():
    found = plan_for({ServiceKey("consul", "1password"): consul_service("1password", instance("192.0.2.1"))},
                     Held({}, frozenset()))
    assert [d.key for d in found.create if d.plural == "services"] == [("services", "consul", "consul-1password")]
    (slice_body,) = bodies_of("endpointslices", found)
    assert slice_body["metadata"]["labels"]["kubernetes.io/service-name"] == "consul-1password"
    service_body = found.bodies[("services", "consul", "consul-1password")]
    assert service_body["metadata"]["annotations"]["bridge/consul-service"] == "1password"


def test_a_service_in_a_namespace_kubernetes_cannot_have_is_left_out_and_said():
    services = {ServiceKey("Team_A", "web"): consul_service("web", instance("192.0.2.1"), namespace="Team_A"),
                ServiceKey("consul", "db"): consul_service("db", instance("192.0.2.2"))}
    found = plan_for(services, Held({}, frozenset()))
    assert {d.namespace for d in found.create} == {"consul"}
    assert found.skipped == ("services Team_A/web: not materialised: 'Team_A' is not a Kubernetes namespace name",)


def test_a_foreign_service_under_the_derived_name_blocks_materialising():
    found = plan_for({ServiceKey("consul", "1password"): consul_service("1password", instance("192.0.2.1"))},
                     Held({}, frozenset({("services", "consul", "consul-1password")})))
    assert found.empty, list(found.describe())
    assert any("not managed by the bridge" in line and "consul/1password" in line for line in found.skipped), \
        found.skipped


# --- port names --------------------------------------------------------------------------------

def ports_of(found) -> list[tuple[str, int]]:
    (service_body,) = bodies_of("services", found)
    return [(p["name"], p["port"]) for p in service_body["spec"]["ports"]]


def materialised(*instances: Instance):
    return materialise(consul_service("api", *instances), "api")


def test_port_names_from_meta_become_dns_1123_labels():
    found = materialised(instance("192.0.2.1", Port("HTTP_Admin", 8080), Port("grpc.v2", 9090), Port("8443", 8443)))
    assert ports_of(found) == [("8443", 8443), ("grpc-v2", 9090), ("http-admin", 8080)]
    assert found.skipped == ()


def test_two_meta_names_that_make_one_label_stay_apart():
    found = materialised(instance("192.0.2.1", Port("HTTP", 80), Port("http", 81)))
    names = dict((port, name) for name, port in ports_of(found))
    assert names[80] == dns_label("HTTP") == "http", "the first name in sort order keeps the plain label"
    assert names[81].startswith("http-") and names[81] != "http"


def test_one_port_number_under_two_names_is_written_once_and_the_other_said():
    found = materialised(instance("192.0.2.1", Port("http", 80), Port("web", 80)))
    assert ports_of(found) == [("http", 80)]
    assert found.skipped == ("services consul/api: port web 80/TCP left out: the Service has http 80/TCP",)


def test_unnamed_ports_are_named_when_there_are_several():
    found = materialised(instance("192.0.2.1", Port("", 80)), instance("192.0.2.2", Port("", 81)))
    assert ports_of(found) == [("port-80", 80), ("port-81", 81)]


def test_a_port_kubernetes_cannot_take_is_left_out_and_said():
    found = materialised(instance("192.0.2.1", Port("http", 80), Port("bad", 70000)))
    assert ports_of(found) == [("http", 80)]
    assert found.skipped == ("services consul/api: port 70000/TCP left out: not a port number and protocol "
                             "Kubernetes accepts",)


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.251", "link-local multicast"), ("ff02::fb", "link-local multicast"), ("ff32::1", "link-local multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),
])
def test_addresses_the_api_refuses_are_left_out_with_the_range(address, why):
    assert endpoint_address(address) == f"the Kubernetes API refuses {why} addresses in EndpointSlices"


@pytest.mark.parametrize(("address", "written"), [
    ("10.0.0.1", ("IPv4", "10.0.0.1")), ("192.0.2.7", ("IPv4", "192.0.2.7")), ("239.1.1.1", ("IPv4", "239.1.1.1")),
    ("fd00::1", ("IPv6", "fd00::1")), ("2001:db8::1", ("IPv6", "2001:db8::1")),
    ("::ffff:10.0.0.1", ("IPv4", "10.0.0.1")),  # an IPv4-mapped address is written as the IPv4 it holds
])
def test_addresses_the_api_accepts_are_written_in_the_form_it_accepts(address, written):
    assert endpoint_address(address) == written


def test_an_address_with_a_zone_is_left_out():
    assert endpoint_address("2001:db8::1%eth0") == "an address with a zone"


def test_left_out_addresses_are_said_and_the_rest_written():
    found = materialised(instance("127.0.0.1"), instance("192.0.2.1"), instance("fe80::1"), instance("fd00::1"))
    written = {(s["addressType"], a) for s in bodies_of("endpointslices", found) for e in s["endpoints"]
               for a in e["addresses"]}
    assert written == {("IPv4", "192.0.2.1"), ("IPv6", "fd00::1")}
    assert found.skipped == (
        "services consul/api: address 127.0.0.1 left out of its EndpointSlices: the Kubernetes API refuses "
        "loopback addresses in EndpointSlices",
        "services consul/api: address fe80::1 left out of its EndpointSlices: the Kubernetes API refuses "
        "link-local addresses in EndpointSlices",
    )


def test_a_service_whose_addresses_are_all_left_out_is_a_service_without_slices():
    found = materialised(instance("127.0.0.1"))
    assert [d.plural for d in found.desired] == ["services"]


def test_many_instances_are_spread_over_slices_of_at_most_the_controllers_size():
    instances = [instance(f"10.0.{i // 200}.{i % 200 + 1}") for i in range(2 * MAX_SLICE_ENDPOINTS + 1)]
    found = materialised(*instances)
    slices = bodies_of("endpointslices", found)
    assert sorted(len(s["endpoints"]) for s in slices) == [1, MAX_SLICE_ENDPOINTS, MAX_SLICE_ENDPOINTS]
    assert len({s["metadata"]["name"] for s in slices}) == 3
    assert {a for s in slices for e in s["endpoints"] for a in e["addresses"]} == {i.address for i in instances}
    assert materialised(*reversed(instances)).bodies == found.bodies, "the same slices whatever the order"
