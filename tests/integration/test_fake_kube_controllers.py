"""The fake cluster's controllers: IP/port allocation, EndpointSlices and Endpoints from Pods."""

import ipaddress

import pytest
from kubernetes import client, config

from bridge.testing.kube import StatusError
from bridge.testing.kube.store import MERGE_PATCH
from tests.integration import kube_fixtures

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"

kube = kube_fixtures.server(seed=3)


def service(name="web", *, selector=None, ports=None, **spec):
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"team": "a"}},
        "spec": {"ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}], **spec},
    }
    if selector is not False:
        body["spec"]["selector"] = selector or {"app": name}
    return body


def pod(name, *, app="web", ip="10.1.0.1", ready=True, ports=None, namespace="default", **spec):
    ips = ip if isinstance(ip, list) else [ip]
    status = {
        "podIPs": [{"ip": i} for i in ips],
        "podIP": ips[0],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "containers": [
                {"name": "c", "image": "img:1", "ports": ports or [{"name": "http", "containerPort": 8080}]}
            ],
            "nodeName": "node-1",
            **spec,
        },
        "status": status,
    }


def slices(kube, name="web"):
    return [
        s for s in kube.store.objects("endpointslices", "default") if s["metadata"]["labels"].get(SERVICE_NAME) == name
    ]


def only_slice(kube, name="web"):
    found = slices(kube, name)
    assert len(found) == 1, f"expected one EndpointSlice for {name}, got {len(found)}"
    return found[0]


def endpoint_for(kube, pod_name, name="web"):
    for piece in slices(kube, name):
        for endpoint in piece["endpoints"] or []:
            if endpoint["targetRef"]["name"] == pod_name:
                return endpoint
    raise AssertionError(f"pod {pod_name} has no endpoint in the slices of {name}")


def test_ready_pod_becomes_a_ready_endpoint_with_resolved_port(kube):
    svc = kube.apply(service())
    created = kube.apply(pod("web-0", ip="10.1.0.5"))
    piece = only_slice(kube)
    assert piece["addressType"] == "IPv4"
    assert piece["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    assert piece["endpoints"] == [
        {
            "addresses": ["10.1.0.5"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-0", "uid": created["metadata"]["uid"]},
            "nodeName": "node-1",
        }
    ]
    meta = piece["metadata"]
    assert meta["name"].startswith("web-") and meta["generateName"] == "web-"
    assert meta["labels"] == {"team": "a", SERVICE_NAME: "web", MANAGED_BY: "endpointslice-controller.k8s.io"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "name": "web",
            "uid": svc["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    endpoints = kube.store.get("endpoints", "default", "web")
    assert endpoints["metadata"]["labels"] == {"team": "a"}
    assert endpoints["subsets"] == [
        {
            "addresses": [{"ip": "10.1.0.5", "nodeName": "node-1", "targetRef": piece["endpoints"][0]["targetRef"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
    ]


def test_not_ready_pod(kube):
    kube.apply(service())
    kube.apply(pod("web-0", ready=False))
    assert endpoint_for(kube, "web-0")["conditions"] == {"ready": False, "serving": False, "terminating": False}
    subset = kube.store.get("endpoints", "default", "web")["subsets"][0]
    assert "addresses" not in subset
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.1.0.1"]


def test_readiness_change_updates_the_slice_in_place(kube):
    kube.apply(service())
    kube.apply(pod("web-0", ready=False))
    before = only_slice(kube)
    kube.apply(pod("web-0", ready=True))
    after = only_slice(kube)
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert after["endpoints"][0]["conditions"]["ready"] is True
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])


def test_terminating_pod_stays_listed_as_not_ready_but_serving(kube):
    kube.apply(service())
    body = pod("web-0")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    kube.apply(body)
    _, finished = kube.store.delete("pods", "default", "web-0")
    assert not finished, "the finalizer keeps the pod terminating"
    assert endpoint_for(kube, "web-0")["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert "subsets" not in kube.store.get("endpoints", "default", "web"), "legacy Endpoints drop terminating pods"
    kube.store.patch("pods", "default", "web-0", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert only_slice(kube)["endpoints"] is None, "gone pod leaves the placeholder slice"


def test_hostname_only_when_subdomain_names_the_service(kube):
    kube.apply(service())
    kube.apply(pod("web-0", hostname="web-0", subdomain="web"))
    kube.apply(pod("web-1", ip="10.1.0.2", hostname="web-1", subdomain="other"))
    kube.apply(pod("web-2", ip="10.1.0.3", subdomain="web"))
    assert endpoint_for(kube, "web-0")["hostname"] == "web-0"
    assert "hostname" not in endpoint_for(kube, "web-1")
    assert "hostname" not in endpoint_for(kube, "web-2")
    addresses = kube.store.get("endpoints", "default", "web")["subsets"][0]["addresses"]
    assert [a.get("hostname") for a in addresses] == ["web-0", None, None]


def test_publish_not_ready_addresses_makes_every_endpoint_ready(kube):
    kube.apply(service(publishNotReadyAddresses=True))
    kube.apply(pod("web-0", ready=False))
    held = pod("web-1", ip="10.1.0.2")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    kube.apply(held)
    kube.store.delete("pods", "default", "web-1")
    assert endpoint_for(kube, "web-0")["conditions"] == {"ready": True, "serving": False, "terminating": False}
    assert endpoint_for(kube, "web-1")["conditions"] == {"ready": True, "serving": True, "terminating": True}
    subset = kube.store.get("endpoints", "default", "web")["subsets"][0]
    assert [a["ip"] for a in subset["addresses"]] == ["10.1.0.1", "10.1.0.2"]


def test_named_ports_and_named_target_port_resolve_per_pod(kube):
    kube.apply(
        service(
            ports=[
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9090, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            ]
        )
    )
    kube.apply(
        pod(
            "a",
            ip="10.1.0.1",
            ports=[{"name": "web", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}],
        )
    )
    kube.apply(
        pod(
            "b",
            ip="10.1.0.2",
            ports=[{"name": "web", "containerPort": 8081}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}],
        )
    )
    kube.apply(pod("c", ip="10.1.0.3", ports=[{"name": "web", "containerPort": 8080}]))
    by_ports = {
        tuple((p["name"], p["protocol"], p["port"]) for p in s["ports"]): [
            e["targetRef"]["name"] for e in s["endpoints"]
        ]
        for s in slices(kube)
    }
    assert by_ports == {
        (("http", "TCP", 8080), ("metrics", "TCP", 9090), ("dns", "UDP", 5353)): ["a"],
        (("http", "TCP", 8081), ("metrics", "TCP", 9090), ("dns", "UDP", 5353)): ["b"],
        (("http", "TCP", 8080), ("metrics", "TCP", 9090)): ["c"],
    }, "one slice per distinct port set; an unresolvable named port is left out for that pod"
    subsets = kube.store.get("endpoints", "default", "web")["subsets"]
    assert len(subsets) == 3


def test_dual_stack_and_ipv6_services_get_separate_slices(kube):
    svc = kube.apply(service(ipFamilyPolicy="PreferDualStack"))
    assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    assert [ipaddress.ip_address(ip).version for ip in svc["spec"]["clusterIPs"]] == [4, 6]
    kube.apply(pod("both", ip=["10.1.0.1", "fd00:10:244::1"]))
    kube.apply(pod("v4only", ip="10.1.0.2"))
    by_type = {s["addressType"]: [e["addresses"][0] for e in s["endpoints"]] for s in slices(kube)}
    assert by_type == {"IPv4": ["10.1.0.1", "10.1.0.2"], "IPv6": ["fd00:10:244::1"]}
    v6 = kube.apply(service("v6", ipFamilies=["IPv6"]))
    assert ipaddress.ip_address(v6["spec"]["clusterIP"]) in ipaddress.ip_network("fd00:10:96::/112")
    kube.apply(pod("v6-pod", app="v6", ip=["10.1.0.9", "fd00:10:244::9"]))
    assert [(s["addressType"], s["endpoints"][0]["addresses"]) for s in slices(kube, "v6")] == [
        ("IPv6", ["fd00:10:244::9"])
    ]
    legacy = kube.store.get("endpoints", "default", "v6")["subsets"][0]["addresses"]
    assert [a["ip"] for a in legacy] == ["fd00:10:244::9"], "Endpoints carry the primary family"


def test_more_than_100_pods_spread_over_slices_of_at_most_100(kube):
    kube.apply(service())
    for i in range(250):
        kube.apply(pod(f"web-{i:03d}", ip=f"10.1.{i // 200}.{i % 200 + 1}"))
    sizes = sorted(len(s["endpoints"]) for s in slices(kube))
    assert sizes == [50, 100, 100]
    addresses = [e["addresses"][0] for s in slices(kube) for e in s["endpoints"]]
    assert len(set(addresses)) == 250
    names_before = {s["metadata"]["name"] for s in slices(kube)}
    for i in range(10):
        kube.store.delete("pods", "default", f"web-{i:03d}")
    kube.apply(pod("web-new", ip="10.1.9.9"))
    assert {s["metadata"]["name"] for s in slices(kube)} == names_before, "gaps are refilled"
    assert sum(len(s["endpoints"]) for s in slices(kube)) == 241


def test_cluster_ip_and_node_port_allocation(kube):
    a = kube.apply(service("a"))
    b = kube.apply(service("b"))
    service_range = ipaddress.ip_network("10.96.0.0/12")
    for svc in (a, b):
        spec = svc["spec"]
        assert ipaddress.ip_address(spec["clusterIP"]) in service_range
        assert spec["clusterIPs"] == [spec["clusterIP"]]
        assert (spec["ipFamilies"], spec["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert a["spec"]["clusterIP"] != b["spec"]["clusterIP"]
    fixed = kube.apply(service("fixed", clusterIP="10.96.0.10"))
    assert fixed["spec"]["clusterIP"] == "10.96.0.10"
    with pytest.raises(StatusError) as info:
        kube.apply(service("clash", clusterIP="10.96.0.10"))
    assert info.value.code == 422 and "provided IP is already allocated" in info.value.message
    with pytest.raises(StatusError) as info:
        kube.apply(service("outside", clusterIP="192.168.0.1"))
    assert info.value.code == 422 and "not in the valid range" in info.value.message

    node_port = kube.apply(service("np", type="NodePort"))
    port = node_port["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    assert node_port["spec"]["externalTrafficPolicy"] == "Cluster"
    lb = kube.apply(
        service(
            "lb", type="LoadBalancer", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30080}]
        )
    )
    assert lb["spec"]["ports"][1]["nodePort"] == 30080
    assert 30000 <= lb["spec"]["ports"][0]["nodePort"] <= 32767
    with pytest.raises(StatusError) as info:
        kube.apply(service("np2", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert "provided port is already allocated" in info.value.message


def test_allocations_survive_replace_without_them_and_are_immutable(kube):
    created = kube.apply(service("web", type="NodePort"))
    replaced = kube.apply(service("web", type="NodePort"))  # the manifest has no clusterIP/nodePort
    assert replaced["spec"]["clusterIP"] == created["spec"]["clusterIP"]
    assert replaced["spec"]["ports"][0]["nodePort"] == created["spec"]["ports"][0]["nodePort"]
    assert replaced["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"], (
        "re-applying the same manifest is a no-op"
    )
    with pytest.raises(StatusError) as info:
        kube.apply(service("web", clusterIP="10.96.0.99"))
    assert info.value.code == 422 and "may not change once set" in info.value.message
    as_cluster_ip = kube.apply(service("web"))
    assert "nodePort" not in as_cluster_ip["spec"]["ports"][0], "type change drops node ports"


def test_headless_service_keeps_none_and_is_labelled(kube):
    svc = kube.apply(service("db", clusterIP="None"))
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["clusterIPs"] == ["None"]
    kube.apply(pod("db-0", app="db", hostname="db-0", subdomain="db"))
    piece = only_slice(kube, "db")
    assert piece["metadata"]["labels"]["service.kubernetes.io/headless"] == ""
    assert piece["endpoints"][0]["hostname"] == "db-0"
    endpoints = kube.store.get("endpoints", "default", "db")
    assert endpoints["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_selectorless_and_external_name_services_get_no_managed_slices(kube):
    kube.apply(service("manual", selector=False))
    kube.apply(service("ext", selector={"app": "web"}, type="ExternalName", externalName="example.com", ports=[]))
    kube.apply(pod("web-0"))
    assert slices(kube, "manual") == [] and slices(kube, "ext") == []
    ext = kube.store.get("services", "default", "ext")
    assert "clusterIP" not in ext["spec"]
    user_endpoints = kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "manual", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}],
        }
    )
    kube.apply(pod("web-1", ip="10.1.0.2"))
    assert kube.store.get("endpoints", "default", "manual") == user_endpoints, "left alone"


def test_placeholder_slice_when_nothing_matches(kube):
    kube.apply(service())
    piece = only_slice(kube)
    assert (piece["addressType"], piece["endpoints"], piece["ports"]) == ("IPv4", None, None)
    kube.apply(pod("web-0"))
    assert only_slice(kube)["metadata"]["name"] != piece["metadata"]["name"], (
        "the real controller replaces the placeholder rather than filling it"
    )


def test_unrelated_writes_do_not_churn_slices(kube):
    kube.apply(service())
    kube.apply(pod("web-0"))
    rv = only_slice(kube)["metadata"]["resourceVersion"]
    kube.apply(pod("web-0"))  # unchanged
    kube.apply(pod("db-0", app="db", ip="10.1.0.7"))  # different selector
    kube.apply(service("db"))
    kube.store.patch("pods", "default", "web-0", MERGE_PATCH, {"metadata": {"annotations": {"x": "y"}}})
    assert only_slice(kube)["metadata"]["resourceVersion"] == rv


def test_pods_elsewhere_terminal_or_without_ip_are_not_listed(kube):
    kube.apply(service())
    kube.store.create("namespaces", None, {"metadata": {"name": "other"}})
    kube.apply(pod("elsewhere", namespace="other"))
    done = pod("done", ip="10.1.0.2")
    done["status"]["phase"] = "Succeeded"
    kube.apply(done)
    no_ip = pod("pending")
    no_ip["status"] = {"phase": "Pending"}
    kube.apply(no_ip)
    assert only_slice(kube)["endpoints"] is None


def test_service_deletion_and_label_change_follow(kube):
    kube.apply(service())
    kube.apply(pod("web-0"))
    kube.store.patch("pods", "default", "web-0", MERGE_PATCH, {"metadata": {"labels": {"app": "other"}}})
    assert only_slice(kube)["endpoints"] is None, "a pod that stops matching leaves"
    kube.store.delete("services", "default", "web")
    assert slices(kube) == [] and kube.store.find("endpoints", "default", "web") is None


def test_edited_managed_slice_is_put_back(kube):
    kube.apply(service())
    kube.apply(pod("web-0"))
    piece = only_slice(kube)
    kube.store.patch("endpointslices", "default", piece["metadata"]["name"], MERGE_PATCH, {"endpoints": None})
    assert only_slice(kube)["endpoints"][0]["addresses"] == ["10.1.0.1"]
    kube.store.delete("endpointslices", "default", piece["metadata"]["name"])
    assert only_slice(kube)["endpoints"][0]["addresses"] == ["10.1.0.1"]


def test_official_client_reads_the_slices_like_consul_k8s(kube, tmp_path):
    kube.apply(service())
    for i in range(120):
        kube.apply(pod(f"web-{i:03d}", ip=f"10.1.0.{i + 1}", ready=i % 2 == 0))
    api_client = config.new_client_from_config(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        discovery = client.DiscoveryV1Api(api_client)
        found, token = [], None
        while True:
            page = discovery.list_namespaced_endpoint_slice(
                "default", label_selector="kubernetes.io/service-name=web", limit=1, _continue=token
            )
            found += page.items
            token = page.metadata._continue
            if not token:
                break
        assert len(found) == 2
        endpoints = [e for s in found for e in s.endpoints]
        assert len(endpoints) == 120
        assert sum(1 for e in endpoints if e.conditions.ready) == 60
        assert {s.address_type for s in found} == {"IPv4"}
        legacy = client.CoreV1Api(api_client).read_namespaced_endpoints("web", "default")
        assert len(legacy.subsets[0].addresses) == 60
        assert len(legacy.subsets[0].not_ready_addresses) == 60
    finally:
        api_client.close()
