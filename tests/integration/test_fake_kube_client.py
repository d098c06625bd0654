"""The fake kube-apiserver through the official `kubernetes` client: CRUD, errors, lists, patch."""

import json
import urllib.error
import urllib.request
from datetime import datetime

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from tests.integration import kube_fixtures

kube = kube_fixtures.server(seed=11)
api = kube_fixtures.api
core = kube_fixtures.core


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def pod_body(name, labels=None, ip="10.1.0.1"):
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_kubeconfig_works_and_any_bearer_token_is_accepted(kube, core):
    names = [n.metadata.name for n in core.list_namespace().items]
    assert {"default", "kube-system", "kube-public"} <= set(names)
    assert kube.requests[-1].path == "/api/v1/namespaces"


def test_create_get_replace_delete_roundtrip(core):
    created = core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
        },
    )
    assert created.metadata.uid and created.metadata.resource_version
    assert created.spec.cluster_ip.startswith("10.")
    assert created.spec.ports[0].target_port == 80, "targetPort defaults to port"
    fetched = core.read_namespaced_service("web", "default")
    assert fetched.metadata.resource_version == created.metadata.resource_version
    fetched.metadata.labels["tier"] = "front"
    replaced = core.replace_namespaced_service("web", "default", fetched)
    assert replaced.metadata.labels == {"app": "web", "tier": "front"}
    assert replaced.spec.cluster_ip == created.spec.cluster_ip
    deleted = core.delete_namespaced_service("web", "default")
    assert deleted.metadata.name == "web", "services answer DELETE with the object"
    with pytest.raises(ApiException) as info:
        core.read_namespaced_service("web", "default")
    assert info.value.status == 404
    assert status_of(info.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'services "web" not found',
        "reason": "NotFound",
        "details": {"name": "web", "kind": "services"},
        "code": 404,
    }


def test_already_exists_conflict_missing_namespace_and_invalid_name(api, core):
    coordination = client.CoordinationV1Api(api)
    lease = {"metadata": {"name": "lock"}, "spec": {"holderIdentity": "a"}}
    first = coordination.create_namespaced_lease("default", lease)
    with pytest.raises(ApiException) as info:
        coordination.create_namespaced_lease("default", lease)
    assert (info.value.status, status_of(info.value)["reason"]) == (409, "AlreadyExists")
    assert status_of(info.value)["details"] == {"name": "lock", "group": "coordination.k8s.io", "kind": "leases"}

    first.spec.holder_identity = "b"
    coordination.replace_namespaced_lease("lock", "default", first)
    with pytest.raises(ApiException) as info:
        coordination.replace_namespaced_lease("lock", "default", first)  # stale resourceVersion
    assert (info.value.status, status_of(info.value)["reason"]) == (409, "Conflict")

    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("ghost", pod_body("p"))
    assert info.value.status == 404
    assert status_of(info.value)["message"] == 'namespaces "ghost" not found'

    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("default", pod_body("Not_Valid"))
    body = status_of(info.value)
    assert (info.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"


def test_lease_lock_from_the_client_library_gets_optimistic_concurrency(api):
    now = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    locks = []
    for identity in ("a", "b"):
        lock = LeaseLock("leader", "default", identity)
        lock.api_instance = client.CoordinationV1Api(api)
        locks.append(lock)
    record = LeaderElectionRecord("a", "15", now, now)
    assert locks[0].get("leader", "default")[0] is False, "404 means no lease yet"
    assert locks[0].create("leader", "default", record) is True
    assert locks[1].create("leader", "default", record) is False, "409 AlreadyExists loses the race"
    assert locks[0].get("leader", "default")[0] and locks[1].get("leader", "default")[0]
    later = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    assert locks[0].update("leader", "default", LeaderElectionRecord("a", "15", now, later)) is True
    assert locks[1].update("leader", "default", LeaderElectionRecord("b", "15", now, now)) is False, (
        "b's copy is stale: the replace must conflict"
    )
    renew = client.CoordinationV1Api(api).read_namespaced_lease("leader", "default").spec.renew_time
    assert renew is not None


def test_lease_micro_time_is_emitted_with_six_digits(kube, api):
    coordination = client.CoordinationV1Api(api)
    coordination.create_namespaced_lease(
        "default", {"metadata": {"name": "t"}, "spec": {"renewTime": "2026-11-26T02:18:58.1Z"}}
    )
    raw = kube.store.get("leases", "default", "t")
    assert raw["spec"]["renewTime"] == "2026-11-26T02:18:58.100000Z"


def test_label_and_field_selectors(core):
    for name, app in (("a", "web"), ("b", "web"), ("c", "db")):
        core.create_namespaced_pod("default", pod_body(name, {"app": app, "idx": name}))
    listed = core.list_namespaced_pod("default", label_selector="app=web")
    assert [p.metadata.name for p in listed.items] == ["a", "b"]
    listed = core.list_namespaced_pod("default", label_selector="app in (web,db),idx!=a")
    assert [p.metadata.name for p in listed.items] == ["b", "c"]
    listed = core.list_pod_for_all_namespaces(field_selector="metadata.name=c")
    assert [p.metadata.name for p in listed.items] == ["c"]
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod("default", label_selector="app in ()")
    assert info.value.status == 400
    with pytest.raises(ApiException) as info:
        core.list_namespaced_service("default", field_selector="spec.nodeName=x")
    assert info.value.status == 400 and "field label not supported" in status_of(info.value)["message"]


def test_pagination_keeps_one_resource_version_and_expires(kube, core):
    for i in range(7):
        core.create_namespaced_pod("default", pod_body(f"p{i}"))
    seen, token, versions = [], None, set()
    while True:
        page = core.list_namespaced_pod("default", limit=3, _continue=token)
        seen += [p.metadata.name for p in page.items]
        versions.add(page.metadata.resource_version)
        if not page.metadata._continue:
            break
        if token is None:
            core.delete_namespaced_pod("p0", "default")  # writes between pages are not visible
        token = page.metadata._continue
    assert seen == [f"p{i}" for i in range(7)]
    assert len(versions) == 1
    first = core.list_namespaced_pod("default", limit=1)
    kube.compact()
    core.create_namespaced_pod("default", pod_body("later"))
    kube.compact()
    with pytest.raises(ApiException) as info:
        core.list_namespaced_pod("default", limit=1, _continue=first.metadata._continue)
    body = status_of(info.value)
    assert (info.value.status, body["reason"]) == (410, "Expired")
    assert body["metadata"]["continue"], "a fresh (inconsistent) continue token comes with the 410"


def test_patch_flavours(core):
    core.create_namespaced_pod("default", pod_body("p", {"app": "web"}))
    # The client picks the content type: a dict is sent as strategic merge patch.
    patched = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"tier": "x"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "x"}
    patched = core.patch_namespaced_pod("p", "default", [{"op": "remove", "path": "/metadata/labels/tier"}])
    assert patched.metadata.labels == {"app": "web"}
    status = core.patch_namespaced_pod_status(
        "p", "default", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert [c.status for c in status.status.conditions if c.type == "Ready"] == ["False"]
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod("ghost", "default", {"metadata": {"labels": {"a": "b"}}})
    assert info.value.status == 404


def test_merge_patch_content_type_and_stale_resource_version_in_patch(kube, core):
    created = core.create_namespaced_pod("default", pod_body("p"))
    core.api_client.set_default_header("Content-Type", "application/merge-patch+json")
    patched = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "1"}}})
    assert patched.metadata.labels == {"a": "1"}
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_pod(
            "p", "default", {"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"a": "2"}}}
        )
    assert info.value.status == 409
    assert [r.query.get("fieldManager") for r in kube.requests if r.method == "PATCH"] == [None, None]


def test_deleting_endpoint_slices_and_leases_answers_with_a_status(api):
    coordination = client.CoordinationV1Api(api)
    created = coordination.create_namespaced_lease("default", {"metadata": {"name": "l"}})
    # The v37 client returns DELETE bodies as plain dicts.
    status = coordination.delete_namespaced_lease("l", "default")
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"] == {
        "name": "l",
        "group": "coordination.k8s.io",
        "kind": "leases",
        "uid": created.metadata.uid,
    }


def test_namespace_delete_removes_its_contents(core):
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_pod("team", pod_body("p"))
    answer = core.delete_namespace("team")
    assert answer["kind"] == "Namespace" and answer["status"]["phase"] == "Terminating"
    assert core.list_namespaced_pod("team").items == []
    with pytest.raises(ApiException) as info:
        core.read_namespace("team")
    assert info.value.status == 404


def raw(kube, method, path, body=None):
    request = urllib.request.Request(
        kube.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()) if "json" in exc.headers.get("Content-Type") else None


def test_unknown_paths_and_methods(kube):
    code, body = raw(kube, "GET", "/api/v1/widgets")
    assert (code, body["reason"]) == (404, "NotFound")
    code, body = raw(kube, "POST", "/api/v1/pods", {"metadata": {"name": "x"}})
    assert (code, body["reason"]) == (405, "MethodNotAllowed"), "create needs a namespaced path"
    code, _ = raw(kube, "GET", "/nothing-here")
    assert code == 404
    code, body = raw(kube, "GET", "/version")
    assert code == 200 and body["gitVersion"].startswith("v1.")
