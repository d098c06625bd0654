"""Object-store semantics of the fake kube-apiserver, driven in-process (no sockets)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.testing.kube.errors import StatusError
from bridge.testing.kube.store import MERGE_PATCH, Store


@pytest.fixture
def store():
    return Store(seed=7)


def pod(name, labels=None, ip="10.0.0.1", **spec):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "img:1"}], **spec},
        "status": {"podIP": ip},
    }


def lease(name, holder="a"):
    return {"metadata": {"name": name}, "spec": {"holderIdentity": holder}}


def error_of(call, *args, **kwargs) -> StatusError:
    with pytest.raises(StatusError) as info:
        call(*args, **kwargs)
    return info.value


def test_initial_namespaces_exist_and_are_active(store):
    names = [n["metadata"]["name"] for n in store.objects("namespaces")]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    default = store.get("namespaces", None, "default")
    assert default["status"]["phase"] == "Active"
    assert default["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}


def test_every_write_bumps_one_global_resource_version(store):
    start = int(store.resource_version)
    a = store.create("leases", "default", lease("a"))
    b = store.create("pods", "default", pod("b"))
    assert int(a["metadata"]["resourceVersion"]) == start + 1
    assert int(b["metadata"]["resourceVersion"]) == start + 2
    assert store.resource_version == b["metadata"]["resourceVersion"]
    deleted, finished = store.delete("leases", "default", "a")
    assert finished
    assert int(deleted["metadata"]["resourceVersion"]) == start + 3, "DELETED carries a new revision"


def test_create_sets_server_fields_and_ignores_client_ones(store):
    body = lease("x")
    body["metadata"].update(uid="client", resourceVersion="99", creationTimestamp="2000-01-01T00:00:00Z")
    created = store.create("leases", "default", body)
    meta = created["metadata"]
    assert meta["uid"] != "client" and len(meta["uid"]) == 36
    assert meta["creationTimestamp"] != "2000-01-01T00:00:00Z"
    assert meta["namespace"] == "default"
    assert created["kind"] == "Lease" and created["apiVersion"] == "coordination.k8s.io/v1"


def test_generate_name(store):
    created = store.create(
        "pods", "default", {"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    )
    name = created["metadata"]["name"]
    assert name.startswith("web-") and len(name) == len("web-") + 5


def test_create_conflicts_and_validation_errors(store):
    store.create("leases", "default", lease("dup"))
    err = error_of(store.create, "leases", "default", lease("dup"))
    assert (err.code, err.reason) == (409, "AlreadyExists")
    assert err.message == 'leases.coordination.k8s.io "dup" already exists'

    err = error_of(store.create, "leases", "nowhere", lease("x"))
    assert (err.code, err.reason, err.message) == (404, "NotFound", 'namespaces "nowhere" not found')

    err = error_of(store.create, "leases", "default", lease("Bad_Name"))
    assert (err.code, err.reason) == (422, "Invalid")
    # apierrors.NewInvalid names the kind with its group, as GroupKind.String() writes it.
    assert err.message.startswith(
        'Lease.coordination.k8s.io "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a lowercase RFC 1123 subdomain"
    )
    assert err.details["causes"][0]["field"] == "metadata.name"

    # Services need DNS-1035 labels: a leading digit is fine for pods but not for services.
    err = error_of(
        store.create, "services", "default", {"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert err.code == 422 and "DNS-1035" in err.message
    store.create("pods", "default", pod("1web"))


def test_replace_with_stale_resource_version_conflicts(store):
    first = store.create("leases", "default", lease("l"))
    second = store.replace("leases", "default", "l", {**first, "spec": {"holderIdentity": "b"}})
    err = error_of(store.replace, "leases", "default", "l", {**first, "spec": {"holderIdentity": "c"}})
    assert (err.code, err.reason) == (409, "Conflict")
    assert "the object has been modified" in err.message
    assert store.get("leases", "default", "l")["spec"]["holderIdentity"] == "b"
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_no_op_update_keeps_the_resource_version(store):
    created = store.create("leases", "default", lease("same"))
    before = store.resource_version
    again = store.replace("leases", "default", "same", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.resource_version == before


def test_pod_status_kept_on_create_but_only_changed_through_status(store):
    created = store.create("pods", "default", pod("p", ip="10.0.0.9"))
    assert created["status"]["podIP"] == "10.0.0.9"
    assert created["status"]["podIPs"] == [{"ip": "10.0.0.9"}]
    assert created["metadata"]["generation"] == 1
    patched = store.patch(
        "pods", "default", "p", MERGE_PATCH, {"metadata": {"labels": {"x": "1"}}, "status": {"podIP": "10.0.0.10"}}
    )
    assert patched["status"]["podIP"] == "10.0.0.9", "main resource writes ignore status"
    assert patched["metadata"]["labels"] == {"x": "1"}
    assert patched["metadata"]["generation"] == 1, "metadata changes do not bump generation"
    status = store.patch(
        "pods",
        "default",
        "p",
        MERGE_PATCH,
        {"metadata": {"labels": {"y": "2"}}, "status": {"phase": "Failed"}},
        subresource="status",
    )
    assert status["status"]["phase"] == "Failed"
    assert "y" not in status["metadata"]["labels"], "status writes ignore everything else"


def test_pod_spec_is_mostly_immutable(store):
    created = store.create("pods", "default", pod("p", nodeName="n1"))
    created["spec"]["nodeName"] = "n2"
    err = error_of(store.replace, "pods", "default", "p", created)
    assert err.code == 422 and "pod updates may not change fields" in err.message
    created["spec"]["nodeName"] = "n1"
    created["spec"]["containers"][0]["image"] = "img:2"
    assert store.replace("pods", "default", "p", created)["metadata"]["generation"] == 2


def test_finalizers_postpone_deletion(store):
    body = lease("held")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    store.create("leases", "default", body)
    marked, finished = store.delete("leases", "default", "held")
    assert not finished
    assert marked["metadata"]["deletionTimestamp"]
    store.patch("leases", "default", "held", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert store.find("leases", "default", "held") is None


def test_namespace_deletion_removes_contents_and_protects_system_namespaces(store):
    store.create("namespaces", None, {"metadata": {"name": "team"}})
    store.create("leases", "team", lease("l"))
    store.create("pods", "team", pod("p"))
    gone, finished = store.delete("namespaces", None, "team")
    assert finished and gone["status"]["phase"] == "Terminating"
    assert store.objects("leases", "team") == [] and store.objects("pods", "team") == []
    assert store.find("namespaces", None, "team") is None
    err = error_of(store.delete, "namespaces", None, "default")
    assert (err.code, err.reason) == (403, "Forbidden")


def test_namespace_with_finalized_content_stays_terminating(store):
    store.create("namespaces", None, {"metadata": {"name": "team"}})
    held = lease("held")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    store.create("leases", "team", held)
    _, finished = store.delete("namespaces", None, "team")
    assert not finished
    err = error_of(store.create, "leases", "team", lease("new"))
    assert err.code == 403 and "being terminated" in err.message
    store.patch("leases", "team", "held", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert store.find("namespaces", None, "team") is None, "last object gone -> namespace removed"


def test_pagination_is_a_consistent_snapshot(store):
    for i in range(5):
        store.create("leases", "default", lease(f"l{i}"))
    first = store.list("leases", "default", limit=2)
    assert [i["metadata"]["name"] for i in first["items"]] == ["l0", "l1"]
    assert first["metadata"]["remainingItemCount"] == 3
    assert "kind" not in first["items"][0], "list items carry no kind, like the real server"
    store.delete("leases", "default", "l3")
    store.create("leases", "default", lease("l9"))
    second = store.list("leases", "default", limit=2, continue_token=first["metadata"]["continue"])
    third = store.list("leases", "default", limit=2, continue_token=second["metadata"]["continue"])
    names = [i["metadata"]["name"] for page in (second, third) for i in page["items"]]
    assert names == ["l2", "l3", "l4"], "later pages show the snapshot of the first page"
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert "continue" not in third["metadata"]


def test_expired_continue_token_is_410_with_a_fresh_token(store):
    for i in range(3):
        store.create("leases", "default", lease(f"l{i}"))
    first = store.list("leases", "default", limit=1)
    store.create("leases", "default", lease("later"))
    store.compact()
    err = error_of(store.list, "leases", "default", limit=1, continue_token=first["metadata"]["continue"])
    assert (err.code, err.reason) == (410, "Expired")
    assert err.list_meta and err.list_meta["continue"], "410 carries a token to continue inconsistently"
    rest = store.list("leases", "default", continue_token=err.list_meta["continue"])
    assert [i["metadata"]["name"] for i in rest["items"]] == ["l1", "l2", "later"]


def test_list_at_exact_resource_version(store):
    store.create("leases", "default", lease("a"))
    rv = store.resource_version
    store.create("leases", "default", lease("b"))
    exact = store.list("leases", "default", resource_version=rv, resource_version_match="Exact")
    assert [i["metadata"]["name"] for i in exact["items"]] == ["a"]
    err = error_of(store.list, "leases", resource_version="999999", resource_version_match="Exact")
    assert err.code == 504 and "Too large resource version" in err.message


def test_watch_replays_history_and_translates_selector_transitions(store):
    rv = store.resource_version
    store.create("pods", "default", pod("a", {"app": "web"}))
    store.patch("pods", "default", "a", MERGE_PATCH, {"metadata": {"labels": {"app": "db"}}})
    store.patch("pods", "default", "a", MERGE_PATCH, {"metadata": {"labels": {"app": "web"}}})
    store.delete("pods", "default", "a")
    watcher = store.watch("pods", "default", label_selector="app=web", resource_version=rv)
    events = []
    while (event := watcher.get(0)) is not None:
        events.append((event.type, event.object["metadata"]["labels"]["app"]))
    assert events == [("ADDED", "web"), ("DELETED", "db"), ("ADDED", "web"), ("DELETED", "web")]


def test_watch_from_compacted_revision_fails_with_410(store):
    rv = store.resource_version
    store.create("leases", "default", lease("a"))
    compacted = store.compact()
    watcher = store.watch("leases", resource_version=rv)
    event = watcher.get(0)
    assert event is not None and event.type == "ERROR"
    assert event.object["code"] == 410 and event.object["reason"] == "Expired"
    assert event.object["message"] == f"too old resource version: {rv} ({compacted})"
    assert watcher.finished


def test_history_ring_overflow_compacts(store):
    small = Store(history_size=3, controllers=False)
    rv = small.resource_version
    for i in range(5):
        small.create("leases", "default", lease(f"l{i}"))
    assert small.compacted_resource_version > int(rv)
    assert small.watch("leases", resource_version=rv).get(0).type == "ERROR"


def test_slow_watcher_overflow_turns_into_410(store):
    tiny = Store(watch_capacity=2)
    watcher = tiny.watch("leases", "default", resource_version=tiny.resource_version)
    for i in range(3):
        tiny.create("leases", "default", lease(f"l{i}"))
    event = watcher.get(0)
    assert event.type == "ERROR" and event.object["code"] == 410
    assert watcher.finished


def test_bookmarks_only_for_watchers_that_allow_them(store):
    with_bookmarks = store.watch("leases", resource_version=store.resource_version, allow_bookmarks=True)
    without = store.watch("leases", resource_version=store.resource_version)
    assert store.emit_bookmark() == 1
    event = with_bookmarks.get(0)
    assert event.type == "BOOKMARK"
    assert event.object == {
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"resourceVersion": store.resource_version},
    }
    assert without.get(0) is None


# --- the per-namespace index behind live() and list() ---------------------------------------

NAMESPACED = ("pods", "services", "endpointslices", "endpoints")
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["create-pod", "create-service", "label-pod", "delete-pod", "delete-service"]),
        st.sampled_from(["default", "a", "b"]),
        st.integers(0, 3),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(OPERATIONS)
def test_namespace_reads_equal_a_full_scan_after_any_writes(operations):
    store = Store(seed=3)
    for ns in ("a", "b"):
        store.create("namespaces", None, {"metadata": {"name": ns}})
    for op, ns, n in operations:
        try:
            if op == "create-pod":
                store.create("pods", ns, pod(f"p{n}", {"app": f"s{n % 2}"}, ip=f"10.0.{n}.1"))
            elif op == "create-service":
                store.create("services", ns, {"metadata": {"name": f"s{n % 2}"},
                                              "spec": {"selector": {"app": f"s{n % 2}"}, "ports": [{"port": 80}]}})
            elif op == "label-pod":
                store.patch("pods", ns, f"p{n}", MERGE_PATCH, {"metadata": {"labels": {"app": f"s{(n + 1) % 2}"}}})
            elif op == "delete-pod":
                store.delete("pods", ns, f"p{n}")
            else:
                store.delete("services", ns, f"s{n % 2}")
        except StatusError:
            pass  # already there, or not there: the write is refused and nothing changes
        with store.lock:
            for plural in NAMESPACED:
                scan = [o["metadata"] for o in store.live(plural)]
                for space in ("default", "a", "b", "nowhere"):
                    indexed = [o["metadata"] for o in store.live(plural, space)]
                    assert indexed == [m for m in scan if m["namespace"] == space], (plural, space)
                    listed = [i["metadata"] for i in store.list(plural, space)["items"]]
                    assert listed == indexed, (plural, space)


def test_picked_node_ports_leave_the_static_band_to_services_that_name_one(store):
    # Kubernetes' portallocator keeps the lowest min(max(16, 2768/32), 128) = 86 ports of
    # 30000-32767 for Services that ask for a port: random picks come from above them first.
    picked = []
    for i in range(150):
        created = store.create("services", "default", {
            "metadata": {"name": f"np-{i}"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
        picked.append(created["spec"]["ports"][0]["nodePort"])
    assert min(picked) >= 30086, sorted(picked)[:5]
    asked = store.create("services", "default", {
        "metadata": {"name": "fixed"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}})
    assert asked["spec"]["ports"][0]["nodePort"] == 30000
