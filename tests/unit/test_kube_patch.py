"""PATCH flavours of the fake kube-apiserver: RFC 7386, strategic merge, RFC 6902 (pure)."""

import pytest

from bridge.testing.kube.patch import (
    PatchError,
    json_patch,
    merge_patch,
    schema_for,
    strategic_merge_patch,
)

POD = {
    "metadata": {"name": "p", "labels": {"app": "web", "old": "x"}, "finalizers": ["a"]},
    "spec": {
        "containers": [
            {"name": "app", "image": "nginx:1", "ports": [{"name": "http", "containerPort": 80}]},
            {"name": "sidecar", "image": "envoy:1"},
        ],
        "tolerations": [{"key": "a"}],
    },
    "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]},
}


# --- RFC 7386 -------------------------------------------------------------------------


def test_merge_patch_merges_maps_deletes_nulls_and_replaces_lists():
    result = merge_patch(
        POD, {"metadata": {"labels": {"old": None, "new": "y"}}, "spec": {"containers": [{"name": "only"}]}}
    )
    assert result["metadata"]["labels"] == {"app": "web", "new": "y"}
    assert result["spec"]["containers"] == [{"name": "only"}], "merge patch replaces lists whole"
    assert POD["metadata"]["labels"]["old"] == "x", "the input must not be mutated"


def test_merge_patch_rfc7386_examples():
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch(["a"], {"a": "b"}) == {"a": "b"}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


# --- strategic merge ---------------------------------------------------------------------


def smp(original, patch, kind="Pod"):
    return strategic_merge_patch(original, patch, schema_for(kind))


def test_strategic_merge_merges_containers_by_name():
    result = smp(
        POD, {"spec": {"containers": [{"name": "sidecar", "image": "envoy:2"}, {"name": "new", "image": "busybox"}]}}
    )
    names = [c["name"] for c in result["spec"]["containers"]]
    assert names == ["app", "sidecar", "new"]
    assert result["spec"]["containers"][1]["image"] == "envoy:2"
    assert result["spec"]["containers"][0]["ports"] == [{"name": "http", "containerPort": 80}]


def test_strategic_merge_merges_container_ports_by_container_port():
    result = smp(
        POD,
        {
            "spec": {
                "containers": [
                    {"name": "app", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 9090}]}
                ]
            }
        },
    )
    assert result["spec"]["containers"][0]["ports"] == [
        {"name": "http", "containerPort": 80, "protocol": "TCP"},
        {"containerPort": 9090},
    ]


def test_strategic_merge_conditions_by_type_and_atomic_lists_replaced():
    result = smp(
        POD, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"tolerations": [{"key": "b"}]}}
    )
    assert result["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "Initialized", "status": "True"},
    ]
    assert result["spec"]["tolerations"] == [{"key": "b"}], "lists without a strategy are replaced"


def test_strategic_merge_delete_directive_removes_list_item():
    result = smp(POD, {"spec": {"containers": [{"$patch": "delete", "name": "sidecar"}]}})
    assert [c["name"] for c in result["spec"]["containers"]] == ["app"]


def test_strategic_merge_replace_directive_on_list_and_map():
    result = smp(POD, {"spec": {"containers": [{"name": "x", "image": "i"}, {"$patch": "replace"}]}})
    assert result["spec"]["containers"] == [{"name": "x", "image": "i"}]
    result = smp(POD, {"metadata": {"labels": {"$patch": "replace", "only": "this"}}})
    assert result["metadata"]["labels"] == {"only": "this"}


def test_strategic_merge_primitive_set_lists_union_and_delete_from_primitive_list():
    result = smp(POD, {"metadata": {"finalizers": ["b", "a"]}})
    assert result["metadata"]["finalizers"] == ["a", "b"]
    result = smp(POD, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert result["metadata"]["finalizers"] == []


def test_strategic_merge_set_element_order_as_kubectl_apply_sends_it():
    service = {"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 443}]}}
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
            "ports": [{"name": "c", "port": 8080}, {"$patch": "delete", "port": 80}],
        }
    }
    result = smp(service, patch, "Service")
    assert result["spec"]["ports"] == [{"name": "c", "port": 8080}, {"name": "b", "port": 443}]


def test_strategic_merge_retain_keys_clears_other_keys():
    result = smp(
        {"spec": {"strategy": {"type": "A", "rollingUpdate": {"x": 1}}}},
        {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
        "Deployment",
    )
    assert result["spec"]["strategy"] == {"type": "Recreate"}


def test_strategic_merge_errors():
    with pytest.raises(PatchError, match="merge key"):
        smp(POD, {"spec": {"containers": [{"image": "no-name"}]}})
    with pytest.raises(PatchError, match="Unknown patch type"):
        smp(POD, {"metadata": {"$patch": "explode"}})


def test_strategic_merge_does_not_mutate_input():
    before = repr(POD)
    smp(POD, {"spec": {"containers": [{"name": "app", "image": "changed"}]}})
    assert repr(POD) == before


# --- RFC 6902 -------------------------------------------------------------------------


def test_json_patch_operations():
    doc = {"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2, 3]}
    result = json_patch(
        doc,
        [
            {"op": "add", "path": "/metadata/labels/new", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "replace", "path": "/list/0", "value": 10},
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "move", "from": "/list/1", "path": "/moved"},
            {"op": "copy", "from": "/moved", "path": "/copied"},
            {"op": "test", "path": "/copied", "value": 2},
        ],
    )
    assert result == {"metadata": {"labels": {"new": "x"}}, "list": [10, 3, 4], "moved": 2, "copied": 2}
    assert doc["list"] == [1, 2, 3]


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "test", "path": "/a", "value": True}],  # 1 is not true in JSON
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "/list/9", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        {"op": "add"},
    ],
)
def test_json_patch_failures(ops):
    with pytest.raises(PatchError):
        json_patch({"a": 1, "list": []}, ops)
