"""Fault injection, the admin API, manifests and lifecycle of the fake kube-apiserver."""

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import urllib3
import yaml
from kubernetes import watch
from kubernetes.client.rest import ApiException

from bridge.testing.kube import KubeAPIServer, StatusError
from tests.conftest import assert_pending, eventually
from tests.integration import kube_fixtures

kube = kube_fixtures.server(seed=1)
api = kube_fixtures.api
core = kube_fixtures.core
clock = kube_fixtures.clock
timed_kube = kube_fixtures.timed_kube


def request(kube, method, path, body=None, timeout=5):
    conn = http.client.HTTPConnection(*kube.address, timeout=timeout)
    try:
        conn.request(
            method,
            path,
            body=json.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), json.loads(data) if data else None
    finally:
        conn.close()


def connectable(address):
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def test_fail_next_requests_with_500_then_recover(kube, core):
    kube.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            core.list_namespace()
        assert info.value.status == 500
        assert json.loads(info.value.body)["reason"] == "InternalError"
    assert core.list_namespace().items, "the third request is served normally"
    assert [r.injected for r in kube.requests] == [True, True, False]


def test_429_carries_retry_after(kube, core):
    kube.fail_next(1, 429, retry_after=3)
    status, headers, body = request(kube, "GET", "/api/v1/namespaces/default/services")
    assert (status, headers["Retry-After"]) == (429, "3")
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 3},
        "code": 429,
    }


class SleepRecorder:
    """Stands in for urllib3's `time` module: its sleeps are recorded instead of slept."""

    def __init__(self):
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def test_official_client_transparently_retries_a_429_after_retry_after(kube, core, monkeypatch):
    # urllib3 under the official client honours Retry-After on 429/503: callers never see it.
    recorder = SleepRecorder()
    monkeypatch.setattr(urllib3.util.retry, "time", recorder)
    kube.fail_next(1, 429, retry_after=7)
    assert core.list_namespaced_service("default").items == []
    assert recorder.slept == [7], "the client waits the Retry-After the server sent, once"
    assert [(r.status, r.injected) for r in kube.requests] == [(429, True), (200, False)]


def test_503_and_path_and_method_filters(kube, core):
    kube.fail_next(1, 503, path_prefix="/api/v1/namespaces/default/pods", methods=["POST"])
    assert core.list_namespaced_pod("default").items == []
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod(
            "default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        )
    assert (info.value.status, json.loads(info.value.body)["reason"]) == (503, "ServiceUnavailable")


def test_watch_only_failures_hit_the_watch_request(kube, core):
    kube.fail_next(1, 500, watch_only=True)
    core.list_namespaced_pod("default")
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1))
    assert info.value.status == 500


def test_latency_slows_requests_down(timed_kube, clock):
    server, core = timed_kube
    server.set_latency(0.3)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(core.list_namespace)
        eventually(lambda: clock.waiting() == [pytest.approx(0.3)], 5, "the request to be held 0.3s")
        clock.advance(0.29)
        assert_pending(slow, "a request 0.01s before its latency ran out")
        clock.advance(0.02)  # past the deadline whatever the float sum
        assert slow.result(timeout=10).items
    server.clear_faults()
    assert core.list_namespace().items, "served with the clock standing still"


def test_outage_refuses_connections_and_cuts_watches_then_recovers_on_the_same_port(kube, core):
    conn = http.client.HTTPConnection(*kube.address, timeout=5)
    conn.request("GET", "/api/v1/pods?watch=true")
    response = conn.getresponse()
    assert response.status == 200
    kube.begin_outage()
    assert kube.in_outage
    assert not connectable(kube.address), "the listening socket must be closed"
    with pytest.raises((http.client.IncompleteRead, ConnectionError, OSError)):
        response.read()  # cut mid-stream: no terminating chunk
    conn.close()
    port = kube.address[1]
    kube.end_outage()
    assert kube.address[1] == port
    assert [n.metadata.name for n in core.list_namespace().items][:1] == ["default"]


def test_timed_outage_through_the_admin_api(kube):
    status, _, body = request(kube, "POST", "/_admin/outage", {"seconds": 0.3})
    assert (status, body) == (200, {"seconds": 0.3})
    eventually(lambda: not connectable(kube.address), what="the outage to start")
    eventually(lambda: connectable(kube.address), what="the server to listen again")
    assert request(kube, "GET", "/version")[0] == 200


def test_admin_api_hooks(kube, core):
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod(
        "default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    )
    status, _, body = request(kube, "POST", "/_admin/compact", {})
    assert status == 200 and body["compactedResourceVersion"] == kube.store.resource_version
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=rv))
    assert info.value.status == 410

    status, _, body = request(kube, "POST", "/_admin/fail", {"count": 1, "code": 503, "retryAfter": 2})
    assert status == 200
    status, headers, body = request(kube, "GET", "/api/v1/namespaces")
    assert (status, headers["Retry-After"], body["reason"]) == (503, "2", "ServiceUnavailable")

    status, _, body = request(kube, "POST", "/_admin/bookmark", {})
    assert (status, body) == (200, {"watchers": 0})
    status, _, body = request(kube, "POST", "/_admin/drop-watches", {})
    assert (status, body) == (200, {"dropped": 0})
    status, _, body = request(kube, "POST", "/_admin/latency", {"seconds": 0})
    assert (status, body) == (200, {"latency": 0.0})
    status, _, state = request(kube, "GET", "/_admin/state")
    assert state["resourceVersion"] == kube.store.resource_version

    status, _, log = request(kube, "GET", "/_admin/requests")
    assert [(r["method"], r["path"], r["status"]) for r in log["items"]][-1] == ("GET", "/api/v1/namespaces", 503)
    assert not any(r["path"].startswith("/_admin") for r in log["items"]), "admin calls are not logged"
    assert request(kube, "DELETE", "/_admin/requests")[0] == 200
    assert kube.requests == []

    status, _, created = request(
        kube, "POST", "/_admin/apply", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    )
    assert status == 200 and created["metadata"]["uid"]
    status, _, loaded = request(
        kube, "POST", "/_admin/load", {"manifests": "kind: Namespace\napiVersion: v1\nmetadata: {name: y}\n"}
    )
    assert [o["metadata"]["name"] for o in loaded["items"]] == ["y"]
    assert request(kube, "POST", "/_admin/nonsense", {})[0] == 404


def test_request_log_records_queries_and_watches(kube, core):
    core.list_namespaced_pod("default", label_selector="app=web", limit=5)
    # What Watch.stream sends, without waiting for events: the response returns after headers.
    response = core.list_namespaced_pod(
        "default", watch=True, timeout_seconds=5, resource_version=kube.store.resource_version, _preload_content=False
    )
    response.close()
    first, second = kube.requests
    assert (first.method, first.path, first.watch, first.status) == (
        "GET",
        "/api/v1/namespaces/default/pods",
        False,
        200,
    )
    assert first.query == {"labelSelector": "app=web", "limit": "5"}
    assert second.watch and second.query["watch"] == "true" and second.query["timeoutSeconds"] == "5"
    assert "OpenAPI-Generator" in first.user_agent or first.user_agent


def test_load_manifests_from_text_file_and_directory(kube, tmp_path):
    text = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web-0, namespace: shop, labels: {app: web}}
  spec: {containers: [{name: c, image: i}]}
  status: {podIP: 10.2.0.1, conditions: [{type: Ready, status: "True"}]}
"""
    loaded = kube.load_manifests(text)
    assert [o["kind"] for o in loaded] == ["Namespace", "Service", "Pod"], "namespaces go first"
    slices = kube.store.objects("endpointslices", "shop")
    assert slices[0]["endpoints"][0]["addresses"] == ["10.2.0.1"]

    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "a.yaml").write_text(text.replace("targetPort: 8080", "targetPort: 9090"))
    (folder / "notes.txt").write_text("not yaml: [")
    kube.load_manifests(folder)
    assert kube.store.objects("endpointslices", "shop")[0]["ports"][0]["port"] == 9090
    single = folder / "a.yaml"
    assert len(kube.load_manifests(str(single))) == 3
    with pytest.raises(FileNotFoundError, match="manifest file not found"):
        kube.load_manifests(str(folder / "missing.yaml"))
    with pytest.raises(StatusError) as info:
        kube.load_manifests("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad}\nspec: {}\n")
    assert info.value.code == 422
    assert any("while loading Pod" in note for note in info.value.__notes__)


def test_kubeconfig_content(kube, tmp_path):
    path = kube.write_kubeconfig(tmp_path / "nested" / "config", namespace="shop")
    written = yaml.safe_load(path.read_text())
    assert written["clusters"][0]["cluster"]["server"] == kube.url
    assert written["contexts"][0]["context"]["namespace"] == "shop"
    assert written["current-context"] == written["contexts"][0]["name"]
    assert kube.url == f"http://127.0.0.1:{kube.address[1]}"


def test_fixed_port_context_manager_and_restart_on_same_port():
    with KubeAPIServer() as first:
        port = first.address[1]
    assert not connectable(("127.0.0.1", port))
    with KubeAPIServer(port=port) as second:
        assert second.address == ("127.0.0.1", port)
        assert request(second, "GET", "/version")[0] == 200


def test_stop_joins_its_threads_despite_idle_keep_alive_connections(kube, core):
    core.list_namespace()  # leaves a pooled keep-alive connection open
    threads = [t for t in threading.enumerate() if t.name.startswith("fake-kube-")]
    assert any(t.name.startswith("fake-kube-conn-") for t in threads), "the keep-alive connection's thread"
    kube.stop()
    # stop() gives up joining after its 2 s timeout: a thread still alive is one it could not end.
    assert [t.name for t in threads if t.is_alive()] == []


def test_manifest_timestamps_stay_strings_and_yaml_is_served_on_request(kube):
    (lease,) = kube.load_manifests(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\n"
        "metadata: {name: l}\nspec: {renewTime: 2026-11-26T02:18:58Z}\n"
    )
    assert lease["spec"]["renewTime"] == "2026-11-26T02:18:58.000000Z"
    conn = http.client.HTTPConnection(*kube.address, timeout=5)
    conn.request(
        "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/l", headers={"Accept": "application/yaml"}
    )
    response = conn.getresponse()
    assert response.getheader("Content-Type") == "application/yaml"
    assert yaml.safe_load(response.read())["spec"]["renewTime"] == "2026-11-26T02:18:58.000000Z"
    conn.close()


def test_wildcard_bind_address_is_reached_through_loopback():
    with KubeAPIServer(host="0.0.0.0") as server:
        assert server.url == f"http://127.0.0.1:{server.address[1]}"
        assert server.address[0] == "0.0.0.0"
