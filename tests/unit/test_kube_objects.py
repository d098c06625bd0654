"""Raw Kubernetes JSON -> the bridge's values, and the join of a Service with its slices."""

from __future__ import annotations

import copy
import itertools

import pytest

from bridge.catalog.model import IngressRoute, Origin, OriginKind, Port, ServiceKey, ServiceType
from bridge.kube.objects import (
    BadObject,
    Slice,
    SliceEndpoint,
    ingress_from_raw,
    join,
    node_from_raw,
    object_key,
    service_from_raw,
    slice_from_raw,
)

CLUSTER = "cluster-a"


def raw_service(spec: dict | None = None, **meta) -> dict:
    metadata = {"name": "web", "namespace": "shop", **meta}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                "protocol": "TCP"}], **(spec or {})}}


def raw_slice(endpoints: list, *, name: str = "web-abc", address_type: str = "IPv4",
              ports: list | None = None, service: str = "web") -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": endpoints,
    }


# --- service_from_raw: each type ----------------------------------------------------------


def test_headless_service_via_cluster_ip_none():
    raw = raw_service({"clusterIP": "None", "clusterIPs": ["None"], "type": "ClusterIP",
                       "publishNotReadyAddresses": True},
                      labels={"app": "web"}, annotations={"a/b": "c"})
    svc = service_from_raw(raw)
    assert svc.key == ServiceKey("shop", "web")
    assert svc.type is ServiceType.HEADLESS and svc.headless
    assert svc.cluster_ips == (), "a headless Service has no cluster IPs"
    assert svc.ports == (Port("http", 80, "TCP"),), "the Service port, not the targetPort"
    assert svc.publish_not_ready is True
    assert svc.label("app") == "web"
    assert svc.annotation("a/b") == "c"
    assert svc.instances == (), "instances come from slices, not from the Service"


def test_headless_with_only_the_legacy_cluster_ip_field():
    svc = service_from_raw(raw_service({"clusterIP": "None"}))
    assert svc.type is ServiceType.HEADLESS


def test_cluster_ip_service_with_dual_stack_cluster_ips():
    svc = service_from_raw(raw_service({"type": "ClusterIP", "clusterIP": "10.96.0.10",
                                        "clusterIPs": ["10.96.0.10", "FD00:0:0::A"]}))
    assert svc.type is ServiceType.CLUSTER_IP
    assert svc.cluster_ips == ("10.96.0.10", "fd00::a"), "IPv6 cluster IPs are normalised"
    assert svc.publish_not_ready is False


def test_cluster_ip_only_legacy_field_and_default_type():
    svc = service_from_raw(raw_service({"clusterIP": "10.96.0.11"}))
    assert svc.type is ServiceType.CLUSTER_IP, "a missing spec.type means ClusterIP"
    assert svc.cluster_ips == ("10.96.0.11",)


def test_cluster_ip_service_without_any_ip_yet():
    svc = service_from_raw(raw_service({"type": "ClusterIP"}))
    assert svc.type is ServiceType.CLUSTER_IP and svc.cluster_ips == ()


def test_node_port_service():
    svc = service_from_raw(raw_service({
        "type": "NodePort", "clusterIPs": ["10.96.0.12"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                  {"name": "dns", "port": 53, "protocol": "UDP"}]}))
    assert svc.type is ServiceType.NODE_PORT
    assert svc.cluster_ips == ("10.96.0.12",)
    assert svc.ports == (Port("http", 80, "TCP", 30080), Port("dns", 53, "UDP"))


def test_external_ips_and_load_balancer_ingress():
    raw = raw_service({"type": "LoadBalancer", "clusterIPs": ["10.96.0.13"],
                       "externalIPs": ["3.3.3.3"], "ports": [{"port": 80, "nodePort": 30001}]})
    raw["status"] = {"loadBalancer": {"ingress": [{"ip": "5.5.5.5"}, {"hostname": "lb.example.com"},
                                                  {"ip": "5.5.5.5"}]}}
    svc = service_from_raw(raw)
    assert svc.external_ips == ("3.3.3.3",)
    assert svc.load_balancer_ingress == ("5.5.5.5", "lb.example.com"), "IPs, else hostnames, de-duplicated"
    raw["spec"]["externalIPs"] = ["not-an-ip"]
    with pytest.raises(BadObject, match="externalIPs"):
        service_from_raw(raw)


def test_node_addresses_and_zone():
    node = node_from_raw({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
                          "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                                                   {"type": "Hostname", "address": "n1"},
                                                   {"type": "ExternalIP", "address": "1.2.3.4"}]}})
    assert (node.name, node.internal_ips, node.external_ips, node.zone) == (
        "n1", ("10.0.0.5",), ("1.2.3.4",), "z1")


def test_load_balancer_service():
    svc = service_from_raw(raw_service({"type": "LoadBalancer", "clusterIPs": ["10.96.0.13"]}))
    assert svc.type is ServiceType.LOAD_BALANCER
    assert svc.cluster_ips == ("10.96.0.13",)


def test_external_name_service():
    svc = service_from_raw(raw_service({"type": "ExternalName",
                                        "externalName": "db.example.com", "ports": []}))
    assert svc.type is ServiceType.EXTERNAL_NAME
    assert svc.external_name == "db.example.com"
    assert svc.cluster_ips == () and svc.ports == ()


def test_external_name_is_only_kept_for_external_name_services():
    svc = service_from_raw(raw_service({"type": "ClusterIP", "externalName": "x.example.com"}))
    assert svc.external_name == ""


def test_unnamed_port_and_null_label_values():
    svc = service_from_raw(raw_service({"ports": [{"port": 80}]}, labels={"empty": None}))
    assert svc.ports == (Port("", 80, "TCP"),)
    assert svc.label("empty") == ""


def test_namespace_defaults_to_empty_for_cluster_scoped_input():
    raw = raw_service()
    del raw["metadata"]["namespace"]
    assert service_from_raw(raw).key == ServiceKey("", "web")
    assert object_key(raw) == ("", "web")


def test_service_from_raw_does_not_modify_its_input():
    raw = raw_service({"clusterIPs": ["FD00::A"]})
    before = copy.deepcopy(raw)
    service_from_raw(raw)
    assert raw == before


# --- service_from_raw: bad objects --------------------------------------------------------


def bad(raw: dict, *needles: str) -> None:
    with pytest.raises(BadObject) as info:
        service_from_raw(raw)
    for needle in needles:
        assert needle in str(info.value), f"message {str(info.value)!r} should name {needle!r}"


def test_missing_name():
    raw = raw_service()
    del raw["metadata"]["name"]
    bad(raw, "metadata.name")
    bad({"spec": {}}, "metadata.name")
    bad(raw_service(name=""), "metadata.name")


@pytest.mark.parametrize("port", [0, 65536, -1, "80", 80.0, True, None])
def test_bad_port(port):
    item = {"name": "http"} if port is None else {"name": "http", "port": port}
    bad(raw_service({"ports": [{"name": "ok", "port": 81}, item]}), "spec.ports[1].port")


def test_port_entry_not_an_object():
    bad(raw_service({"ports": ["80"]}), "spec.ports[0]")


def test_ports_not_a_list():
    bad(raw_service({"ports": {"name": "http", "port": 80}}), "spec.ports")


@pytest.mark.parametrize("ips", [["10.0.0.256"], ["not-an-ip"], ["10.96.0.1", "fd00::g"]])
def test_bad_cluster_ips(ips):
    bad(raw_service({"clusterIPs": ips}), "clusterIP")


def test_bad_legacy_cluster_ip():
    bad(raw_service({"clusterIP": "10.1.2"}), "clusterIP")


def test_cluster_ip_must_be_a_string():
    # ipaddress.ip_address(167772161) is 10.0.0.1: an integer must not pass as an address.
    bad(raw_service({"clusterIPs": [167772161]}), "clusterIP")


@pytest.mark.parametrize("stype", ["Weird", "clusterip", "Headless"])
def test_unknown_type(stype):
    bad(raw_service({"type": stype}), "spec.type", stype)


def test_unknown_type_is_rejected_even_with_cluster_ip_none():
    bad(raw_service({"type": "Weird", "clusterIP": "None"}), "spec.type")


def test_spec_not_an_object():
    raw = raw_service()
    raw["spec"] = ["nope"]
    bad(raw, "spec")


def test_labels_and_annotations_not_mappings():
    bad(raw_service(labels=["a"]), "metadata.labels")
    bad(raw_service(annotations="a=b"), "metadata.annotations")


def test_metadata_not_an_object_is_a_bad_object():
    bad({"metadata": "web", "spec": {}}, "metadata")


# --- slice_from_raw -----------------------------------------------------------------------


def test_slice_with_conditions_and_topology():
    sl = slice_from_raw(raw_slice([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True,
                                                   "terminating": False},
         "hostname": "web-0", "nodeName": "node-1", "zone": "us-west-2a",
         "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"}},
    ]))
    assert (sl.namespace, sl.name, sl.service, sl.address_type) == ("shop", "web-abc", "web",
                                                                     "IPv4")
    assert sl.ports == (Port("http", 8080, "TCP"),)
    assert sl.endpoints == (SliceEndpoint(address="10.0.0.1", ready=True, serving=True,
                                          terminating=False, hostname="web-0",
                                          node_name="node-1", zone="us-west-2a",
                                          target="web-0"),)


@pytest.mark.parametrize("conditions", [None, {}, {"ready": None, "serving": None,
                                                    "terminating": None}])
def test_nil_conditions_read_as_the_api_documents(conditions):
    ep = {"addresses": ["10.0.0.2"]}
    if conditions is not None:
        ep["conditions"] = conditions
    (got,) = slice_from_raw(raw_slice([ep])).endpoints
    assert got.ready is True, "ready nil means ready"
    assert got.serving is True, "serving nil means serving"
    assert got.terminating is False, "terminating nil means not terminating"
    assert got.target == "" and got.node_name == "" and got.hostname == ""


def test_explicit_false_conditions():
    (got,) = slice_from_raw(raw_slice([{"addresses": ["10.0.0.3"], "conditions": {
        "ready": False, "serving": True, "terminating": True}}])).endpoints
    assert (got.ready, got.serving, got.terminating) == (False, True, True)


def test_several_addresses_in_one_endpoint():
    sl = slice_from_raw(raw_slice([{"addresses": ["10.0.0.1", "10.0.0.2"],
                                    "conditions": {"ready": False}}]))
    assert [(e.address, e.ready) for e in sl.endpoints] == [("10.0.0.1", False),
                                                            ("10.0.0.2", False)]


def test_ipv6_addresses_are_normalised():
    sl = slice_from_raw(raw_slice([{"addresses": ["2001:DB8:0:0:0::1"]},
                                   {"addresses": ["fd00:0000::0a"]}], address_type="IPv6"))
    assert [e.address for e in sl.endpoints] == ["2001:db8::1", "fd00::a"]


def test_fqdn_addresses_are_kept_as_they_are():
    sl = slice_from_raw(raw_slice([{"addresses": ["db.example.com"]}], address_type="FQDN"))
    assert [e.address for e in sl.endpoints] == ["db.example.com"]


@pytest.mark.parametrize("address", ["10.0.0.256", "not-an-ip", "", "10.0.0.1/32", None,
                                     167772161])
def test_bad_addresses_are_rejected(address):
    with pytest.raises(BadObject) as info:
        slice_from_raw(raw_slice([{"addresses": ["10.0.0.1"]}, {"addresses": [address]}]))
    assert "endpoints[1]" in str(info.value), str(info.value)


@pytest.mark.parametrize("address_type", [None, "ipv4", "IP", ""])
def test_bad_address_type(address_type):
    with pytest.raises(BadObject, match="addressType"):
        slice_from_raw(raw_slice([], address_type=address_type))


def test_endpoint_without_addresses_list():
    with pytest.raises(BadObject, match=r"endpoints\[0\]\.addresses"):
        slice_from_raw(raw_slice([{"conditions": {}}]))
    with pytest.raises(BadObject, match=r"endpoints\[0\]\.addresses"):
        slice_from_raw(raw_slice([{"addresses": "10.0.0.1"}]))


def test_endpoints_not_a_list():
    with pytest.raises(BadObject, match="endpoints"):
        slice_from_raw(raw_slice({"addresses": ["10.0.0.1"]}))  # type: ignore[arg-type]


def test_conditions_not_an_object_is_a_bad_object():
    with pytest.raises(BadObject, match=r"endpoints\[0\]"):
        slice_from_raw(raw_slice([{"addresses": ["10.0.0.1"], "conditions": "ready"}]))


def test_slice_port_with_null_number_means_all_ports_and_is_dropped():
    sl = slice_from_raw(raw_slice([], ports=[{"name": "", "port": None},
                                             {"name": "http", "port": 8080}]))
    assert sl.ports == (Port("http", 8080, "TCP"),)


def test_slice_bad_port_number():
    with pytest.raises(BadObject, match=r"ports\[0\]\.port"):
        slice_from_raw(raw_slice([], ports=[{"name": "http", "port": 0}]))


def test_slice_without_service_label():
    raw = raw_slice([])
    raw["metadata"]["labels"] = {}
    assert slice_from_raw(raw).service == ""


def test_slice_missing_name():
    raw = raw_slice([])
    del raw["metadata"]["name"]
    with pytest.raises(BadObject, match=r"metadata\.name"):
        slice_from_raw(raw)


# --- join ---------------------------------------------------------------------------------


def ep(address: str, ready: bool = True, **kw) -> SliceEndpoint:
    return SliceEndpoint(address=address, ready=ready, serving=ready,
                         terminating=kw.pop("terminating", False), **kw)


def mk_slice(name: str, *endpoints: SliceEndpoint, address_type: str = "IPv4",
             ports: tuple[Port, ...] = (Port("http", 8080),)) -> Slice:
    return Slice("shop", name, "web", address_type, ports, endpoints)


def headless(publish_not_ready: bool = False):
    return service_from_raw(raw_service({"clusterIP": "None",
                                         "publishNotReadyAddresses": publish_not_ready}))


def test_join_builds_instances_with_origin_and_topology():
    svc = join(headless(), [mk_slice("a", ep("10.0.0.1", hostname="web-0", node_name="n1",
                                             zone="z1", target="web-0"))], CLUSTER)
    (inst,) = svc.instances
    assert inst.address == "10.0.0.1"
    assert inst.origin == Origin(OriginKind.KUBERNETES, CLUSTER)
    assert inst.ports == (Port("http", 8080),), "instance ports are the slice's endpoint ports"
    assert (inst.hostname, inst.node_name, inst.zone, inst.target) == ("web-0", "n1", "z1",
                                                                       "web-0")
    assert inst.ready is True
    assert svc.key == ServiceKey("shop", "web") and svc.type is ServiceType.HEADLESS


def test_join_unions_slices_and_sorts_by_ip_numerically():
    slices = [mk_slice("b", ep("10.0.0.10"), ep("10.0.0.2")),
              mk_slice("a", ep("10.0.0.9"), ep("9.0.0.1"))]
    svc = join(headless(), slices, CLUSTER)
    assert [i.address for i in svc.instances] == ["9.0.0.1", "10.0.0.2", "10.0.0.9",
                                                  "10.0.0.10"]


def test_join_sorts_ipv4_before_ipv6():
    slices = [mk_slice("v6", ep("fd00::2"), ep("fd00::1"), address_type="IPv6"),
              mk_slice("v4", ep("10.0.0.1"))]
    svc = join(headless(), slices, CLUSTER)
    assert [i.address for i in svc.instances] == ["10.0.0.1", "fd00::1", "fd00::2"]


@pytest.mark.parametrize("order", list(itertools.permutations(["a", "b", "c"])))
def test_join_dedups_addresses_and_the_ready_copy_wins(order):
    by_name = {
        "a": mk_slice("a", ep("10.0.0.2", ready=False, terminating=True, target="old")),
        "b": mk_slice("b", ep("10.0.0.2", ready=True, target="new"), ep("10.0.0.1")),
        "c": mk_slice("c", ep("10.0.0.2", ready=False, target="other")),
    }
    svc = join(headless(), [by_name[n] for n in order], CLUSTER)
    assert [i.address for i in svc.instances] == ["10.0.0.1", "10.0.0.2"], svc.instances
    dup = svc.instances[1]
    assert dup.ready is True and dup.target == "new", f"order {order}: {dup}"


def test_join_result_does_not_depend_on_slice_order():
    slices = [mk_slice("a", ep("10.0.0.2", ready=False, target="x"), ep("10.0.0.3")),
              mk_slice("b", ep("10.0.0.2", ready=False, target="y"), ep("10.0.0.1"))]
    assert join(headless(), slices, CLUSTER) == join(headless(), slices[::-1], CLUSTER)


def test_join_not_ready_without_publish_not_ready():
    svc = join(headless(), [mk_slice("a", ep("10.0.0.1", ready=False))], CLUSTER)
    assert [i.ready for i in svc.instances] == [False], "not-ready endpoints are kept, not ready"


def test_join_publish_not_ready_makes_every_endpoint_ready():
    svc = join(headless(publish_not_ready=True),
               [mk_slice("a", ep("10.0.0.1", ready=False), ep("10.0.0.2"))], CLUSTER)
    assert [i.ready for i in svc.instances] == [True, True]


def test_join_skips_fqdn_slices():
    svc = join(headless(), [mk_slice("f", ep("db.example.com"), address_type="FQDN"),
                            mk_slice("a", ep("10.0.0.1"))], CLUSTER)
    assert [i.address for i in svc.instances] == ["10.0.0.1"]


def test_join_with_no_slices_has_no_instances_and_replaces_old_ones():
    first = join(headless(), [mk_slice("a", ep("10.0.0.1"))], CLUSTER)
    assert join(first, [], CLUSTER).instances == ()


def test_join_end_to_end_from_raw_objects():
    svc = service_from_raw(raw_service({"clusterIP": "None"}))
    slices = [slice_from_raw(raw_slice([{"addresses": ["10.0.0.2"],
                                         "conditions": {"ready": None}},
                                        {"addresses": ["10.0.0.1"],
                                         "conditions": {"ready": False}}]))]
    joined = join(svc, slices, CLUSTER)
    assert [(i.address, i.ready) for i in joined.instances] == [("10.0.0.1", False),
                                                                ("10.0.0.2", True)]


# --- Ingresses ----------------------------------------------------------------------------


def raw_ingress(rules: list, *, tls: list | None = None, lb: list | None = None,
                name: str = "front") -> dict:
    body: dict = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                  "metadata": {"name": name, "namespace": "shop"}, "spec": {"rules": rules}}
    if tls is not None:
        body["spec"]["tls"] = tls
    if lb is not None:
        body["status"] = {"loadBalancer": {"ingress": lb}}
    return body


def http_rule(host: str | None, *paths: tuple[str, str]) -> dict:
    rule: dict = {"http": {"paths": [
        {"path": path, "pathType": "Prefix",
         "backend": {"service": {"name": svc, "port": {"number": 80}}}} for path, svc in paths]}}
    if host is not None:
        rule["host"] = host
    return rule


def test_ingress_from_raw_one_route_per_service_path_in_rule_order():
    routes = ingress_from_raw(raw_ingress(
        [http_rule("a.example.com", ("/", "web"), ("/api", "api")), http_rule(None, ("/", "web"))],
        tls=[{"hosts": ["a.example.com"], "secretName": "tls"}],
        lb=[{"ip": "203.0.113.7"}]))
    assert routes == (
        IngressRoute("shop", "front", "web", "a.example.com", "/", True, ("203.0.113.7",)),
        IngressRoute("shop", "front", "api", "a.example.com", "/api", True, ("203.0.113.7",)),
        IngressRoute("shop", "front", "web", "", "/", False, ("203.0.113.7",)),
    )
    assert routes[0].service_key == ServiceKey("shop", "web")


def test_ingress_from_raw_tls_only_for_listed_hosts():
    routes = ingress_from_raw(raw_ingress(
        [http_rule("a.example.com", ("/", "a")), http_rule("b.example.com", ("/", "b"))],
        tls=[{"hosts": ["b.example.com"]}, {"secretName": "no-hosts"}]))
    assert [(r.host, r.tls) for r in routes] == [("a.example.com", False), ("b.example.com", True)]


def test_ingress_from_raw_lb_ips_skip_hostnames_keep_order_and_canonicalise():
    routes = ingress_from_raw(raw_ingress(
        [http_rule("a.example.com", ("/", "web"))],
        lb=[{"hostname": "lb.example.com"}, {"ip": "2001:db8::0:1"}, {"ip": "198.51.100.1"},
            {"ip": "198.51.100.1"}]))
    assert routes[0].lb_ips == ("2001:db8::1", "198.51.100.1")


@pytest.mark.parametrize("spec", [
    {},                                                          # no rules
    {"rules": [{"host": "a.example.com"}]},                      # a rule without http
    {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"}}}]}}]},
])
def test_ingress_from_raw_without_service_paths_has_no_routes(spec):
    raw = {"metadata": {"name": "front", "namespace": "shop"}, "spec": spec}
    assert ingress_from_raw(raw) == ()


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r.update(spec=[]), "spec"),
    (lambda r: r["spec"].update(rules={}), "spec.rules"),
    (lambda r: r["spec"]["rules"].append("x"), "spec.rules[1]"),
    (lambda r: r["spec"]["rules"][0].update(host=7), "spec.rules[0].host"),
    (lambda r: r["spec"]["rules"][0].update(http=[]), "spec.rules[0].http"),
    (lambda r: r["spec"]["rules"][0]["http"].update(paths={}), "spec.rules[0].http.paths"),
    (lambda r: r["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].pop("name"),
     "spec.rules[0].http.paths[0].backend.service.name"),
    (lambda r: r["spec"]["rules"][0]["http"]["paths"][0]["backend"].update(service="web"),
     "spec.rules[0].http.paths[0].backend.service"),
    (lambda r: r["spec"]["rules"][0]["http"]["paths"][0].update(path=["/"]),
     "spec.rules[0].http.paths[0].path"),
    (lambda r: r["spec"].update(tls=[{"hosts": "a.example.com"}]), "spec.tls[0].hosts"),
    (lambda r: r["spec"].update(tls=[{"hosts": [1]}]), "spec.tls[0].hosts[0]"),
    (lambda r: r.update(status={"loadBalancer": {"ingress": {}}}), "status.loadBalancer.ingress"),
    (lambda r: r.update(status={"loadBalancer": {"ingress": [{"ip": "not-an-ip"}]}}),
     "status.loadBalancer.ingress[0].ip"),
    (lambda r: r.update(status={"loadBalancer": {"ingress": [{"ip": 167772161}]}}),
     "status.loadBalancer.ingress[0].ip"),
    (lambda r: r["metadata"].pop("name"), "metadata.name"),
])
def test_ingress_from_raw_rejects_bad_objects_naming_the_field(mutate, field):
    raw = raw_ingress([http_rule("a.example.com", ("/", "web"))])
    mutate(raw)
    with pytest.raises(BadObject) as info:
        ingress_from_raw(raw)
    assert str(info.value).startswith(field + " "), str(info.value)
