"""Ingresses (networking.k8s.io/v1) on the fake kube-apiserver: through the official client
(`NetworkingV1Api`), `kubectl`, and the bridge's own KubeSource."""

import json
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from bridge import config
from bridge.catalog.model import IngressRoute
from bridge.kube.client import KubeClient
from bridge.kube.source import KubeSource
from tests.conftest import eventually
from tests.integration import kube_fixtures

kube = kube_fixtures.server(seed=23)
api = kube_fixtures.api
core = kube_fixtures.core


@pytest.fixture
def net(api):
    return client.NetworkingV1Api(api)


def ingress_body(name="front", *, host="web.example.com", service="web", path="/", tls_hosts=None,
                 lb=None, port=None):
    body = {
        "metadata": {"name": name},
        "spec": {"rules": [{"host": host, "http": {"paths": [{
            "path": path, "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": port or {"number": 80}}}}]}}]},
    }
    if tls_hosts is not None:
        body["spec"]["tls"] = [{"hosts": tls_hosts, "secretName": "web-tls"}]
    if lb is not None:
        body["status"] = {"loadBalancer": {"ingress": lb}}
    return body


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_ingress_crud_keeps_a_status_given_on_create(net):
    created = net.create_namespaced_ingress(
        "default", ingress_body(tls_hosts=["web.example.com"], lb=[{"ip": "203.0.113.7"}]))
    assert created.kind == "Ingress" and created.api_version == "networking.k8s.io/v1"
    assert created.metadata.generation == 1 and created.metadata.uid
    assert created.status.load_balancer.ingress[0].ip == "203.0.113.7", "status from the manifest is kept"
    rule = created.spec.rules[0]
    assert (rule.host, rule.http.paths[0].path, rule.http.paths[0].backend.service.name) == (
        "web.example.com", "/", "web")
    assert created.spec.tls[0].hosts == ["web.example.com"]

    listed = net.list_ingress_for_all_namespaces()
    assert [i.metadata.name for i in listed.items] == ["front"]
    assert net.read_namespaced_ingress("front", "default").metadata.resource_version == (
        created.metadata.resource_version)

    fetched = net.read_namespaced_ingress("front", "default")
    fetched.spec.rules[0].host = "www.example.com"
    fetched.status = None
    replaced = net.replace_namespaced_ingress("front", "default", fetched)
    assert replaced.spec.rules[0].host == "www.example.com"
    assert replaced.metadata.generation == 2, "a spec change bumps generation"
    assert replaced.status.load_balancer.ingress[0].ip == "203.0.113.7", "an update keeps the status"

    replaced.status.load_balancer.ingress[0].ip = "203.0.113.8"
    replaced.spec.rules[0].host = "ignored.example.com"
    by_status = net.replace_namespaced_ingress_status("front", "default", replaced)
    assert by_status.status.load_balancer.ingress[0].ip == "203.0.113.8"
    assert by_status.spec.rules[0].host == "www.example.com", "the status endpoint leaves spec alone"
    assert by_status.metadata.generation == 2

    deleted = net.delete_namespaced_ingress("front", "default", _preload_content=False)
    body = json.loads(deleted.data)
    assert body["kind"] == "Status" and body["status"] == "Success", "ingresses answer DELETE with a Status"
    assert {k: body["details"][k] for k in ("name", "group", "kind")} == {
        "name": "front", "group": "networking.k8s.io", "kind": "ingresses"}
    with pytest.raises(ApiException) as info:
        net.read_namespaced_ingress("front", "default")
    assert info.value.status == 404
    assert status_of(info.value)["message"] == 'ingresses.networking.k8s.io "front" not found'


def test_ingress_status_defaults_to_an_empty_load_balancer(kube, net):
    net.create_namespaced_ingress("default", ingress_body())
    assert kube.store.get("ingresses", "default", "front")["status"] == {"loadBalancer": {}}


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(name=""),
     "spec.rules[0].http.paths[0].backend.service.name", "Required value"),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(name="Web_1"),
     "spec.rules[0].http.paths[0].backend.service.name", 'Invalid value: "Web_1": a DNS-1035 label'),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(port={}),
     "spec.rules[0].http.paths[0].backend", "Required value: port name or number is required"),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
        port={"name": "http", "number": 80}),
     "spec.rules[0].http.paths[0].backend", "cannot set both port name & port number"),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
        port={"number": 70000}),
     "spec.rules[0].http.paths[0].backend.service.port.number", "must be between 1 and 65535, inclusive"),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0].update(path="api"),
     "spec.rules[0].http.paths[0].path", 'Invalid value: "api": must be an absolute path'),
    (lambda b: b["spec"]["rules"][0]["http"]["paths"][0].update(pathType="Regex"),
     "spec.rules[0].http.paths[0].pathType", 'Unsupported value: "Regex"'),
    (lambda b: b["spec"]["rules"][0].update(host="10.0.0.1"),
     "spec.rules[0].host", "must be a DNS name, not an IP address"),
    (lambda b: b["spec"]["rules"][0]["http"].update(paths=[]), "spec.rules[0].http.paths", "Required value"),
    (lambda b: b["spec"].update(rules=[]), "spec", "either `defaultBackend` or `rules` must be specified"),
])
def test_invalid_ingresses_are_refused_naming_the_field(net, mutate, field, message):
    body = ingress_body()
    mutate(body)
    with pytest.raises(ApiException) as info:
        net.create_namespaced_ingress("default", body)
    assert info.value.status == 422
    status = status_of(info.value)
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "Ingress"
    causes = {c["field"]: c["message"] for c in status["details"]["causes"]}
    assert field in causes and message in causes[field], causes


def test_a_path_without_path_type_is_refused(kube):
    # The official client's models insist on pathType, so this one goes as raw HTTP.
    body = ingress_body()
    del body["spec"]["rules"][0]["http"]["paths"][0]["pathType"]
    body.update(apiVersion="networking.k8s.io/v1", kind="Ingress")
    request = urllib.request.Request(kube.url + "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
                                     method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 422
    causes = json.loads(info.value.read())["details"]["causes"]
    assert causes == [{"reason": "FieldValueRequired", "field": "spec.rules[0].http.paths[0].pathType",
                       "message": "Required value: pathType must be specified"}]


def test_ingress_watch_sees_status_changes(kube, net):
    net.create_namespaced_ingress("default", ingress_body())
    listed = net.list_ingress_for_all_namespaces()
    w = watch.Watch()
    events = []
    done = threading.Event()

    def consume():
        for event in w.stream(net.list_ingress_for_all_namespaces,
                              resource_version=listed.metadata.resource_version, timeout_seconds=30):
            events.append(event)
            if len(events) == 2:
                w.stop()
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    eventually(lambda: kube.store.watcher_count() == 1, what="the watch to subscribe")
    current = net.read_namespaced_ingress("front", "default")
    current.status = {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
    net.replace_namespaced_ingress_status("front", "default", current)
    net.delete_namespaced_ingress("front", "default")
    assert done.wait(10), f"events so far: {[e['type'] for e in events]}"
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"].status.load_balancer.ingress[0].ip == "203.0.113.9"


def test_kubectl_gets_ingresses_as_a_table(kube, tmp_path, net):
    binary = shutil.which("kubectl")
    assert binary, "this test needs kubectl on PATH"
    net.create_namespaced_ingress("default", ingress_body(tls_hosts=["web.example.com"],
                                                          lb=[{"ip": "203.0.113.7"}]))
    plain = ingress_body("plain", host="", service="api")
    plain["spec"]["ingressClassName"] = "nginx"
    net.create_namespaced_ingress("default", plain)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    result = subprocess.run([binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                             "get", "ing"], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    assert lines[1].split()[:6] == ["front", "<none>", "web.example.com", "203.0.113.7", "80,", "443"]
    assert lines[2].split()[:4] == ["plain", "nginx", "*", "80"]


def test_kube_source_mirrors_ingress_routes_when_asked(kube, tmp_path, core, net):
    for ns in ("shop", "kube-system"):
        if ns != "kube-system":
            core.create_namespace({"metadata": {"name": ns}})
        net.create_namespaced_ingress(ns, ingress_body(tls_hosts=["web.example.com"], lb=[{"ip": "203.0.113.7"}]))
    settings = config.build(environ={}, flags={
        "kubernetes.kubeconfig": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}).kubernetes
    stop = threading.Event()
    kube_client = KubeClient(settings)
    plain = KubeSource(kube_client, settings, "c1", lambda: None, stop)
    source = KubeSource(kube_client, settings, "c1", lambda: None, stop, watch_ingresses=True)
    assert plain.ingresses is None
    try:
        source.start()
        eventually(lambda: source.synced, what="the source to list")
        expected = IngressRoute("shop", "front", "web", "web.example.com", "/", True, ("203.0.113.7",))
        assert source.snapshot().ingresses == (expected,), "kube-system is denied by default"
        net.delete_namespaced_ingress("front", "shop")
        eventually(lambda: source.snapshot().ingresses == (), what="the deleted Ingress to go")
    finally:
        stop.set()
        kube_client.close()
