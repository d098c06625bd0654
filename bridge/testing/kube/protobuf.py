"""Decoding the protobuf request bodies kubectl's generator commands send. Pure.

`kubectl create namespace X` and `kubectl create service ...` post
`application/vnd.kubernetes.protobuf` rather than JSON (every other kubectl verb the fake
supports uses JSON). The body is the `k8s\\x00` magic followed by a `runtime.Unknown`
envelope whose `raw` field holds the object. Only Namespace and Service are decoded, with the
field numbers of `k8s.io/api/core/v1/generated.proto` and apimachinery's `meta/v1`,
`intstr` and `runtime` protos, and the access and token reviews `kubectl auth can-i` and
`kubectl auth whoami` post (`authorization/v1`, `authentication/v1` protos), and the
generator commands of the deploy kinds (ConfigMap, Secret, ServiceAccount, the RBAC
objects, and a Deployment's common fields); other kinds raise `ProtobufError` (answered
with 415).

Go writes zero values of non-pointer fields on the wire; JSON would omit them, so decoded
zero values are dropped unless the field is a pointer in Go (e.g. a `false`
`allocateLoadBalancerNodePorts` must survive). Timestamps and managed fields are ignored:
the server sets them anyway.
"""

from __future__ import annotations

import base64
from typing import Any

JSON = dict[str, Any]

MAGIC = b"k8s\x00"

# Schema entries: field number -> (json name, kind[, sub-schema]); kinds: str, int, bool,
# ptrbool and ptrint (kept when zero), msg, rmsg (repeated message), rstr (repeated string),
# map (string to string), bmap (string to bytes), intstr.
Schema = dict[int, tuple[Any, ...]]
_POINTERS = ("ptrbool", "ptrint")

_OWNER_REFERENCE: Schema = {
    5: ("apiVersion", "str"),
    1: ("kind", "str"),
    3: ("name", "str"),
    4: ("uid", "str"),
    6: ("controller", "ptrbool"),
    7: ("blockOwnerDeletion", "ptrbool"),
}
_OBJECT_META: Schema = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    5: ("uid", "str"),
    6: ("resourceVersion", "str"),
    7: ("generation", "int"),
    11: ("labels", "map"),
    12: ("annotations", "map"),
    13: ("ownerReferences", "rmsg", _OWNER_REFERENCE),
    14: ("finalizers", "rstr"),
}
_SERVICE_PORT: Schema = {
    1: ("name", "str"),
    2: ("protocol", "str"),
    6: ("appProtocol", "str"),
    3: ("port", "int"),
    4: ("targetPort", "intstr"),
    5: ("nodePort", "int"),
}
_SERVICE_SPEC: Schema = {
    1: ("ports", "rmsg", _SERVICE_PORT),
    2: ("selector", "map"),
    3: ("clusterIP", "str"),
    18: ("clusterIPs", "rstr"),
    4: ("type", "str"),
    5: ("externalIPs", "rstr"),
    7: ("sessionAffinity", "str"),
    8: ("loadBalancerIP", "str"),
    9: ("loadBalancerSourceRanges", "rstr"),
    10: ("externalName", "str"),
    11: ("externalTrafficPolicy", "str"),
    12: ("healthCheckNodePort", "int"),
    13: ("publishNotReadyAddresses", "bool"),
    19: ("ipFamilies", "rstr"),
    17: ("ipFamilyPolicy", "str"),
    20: ("allocateLoadBalancerNodePorts", "ptrbool"),
    21: ("loadBalancerClass", "str"),
    22: ("internalTrafficPolicy", "str"),
}
# k8s.io/api/authorization/v1/generated.proto
_RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "str"),
    2: ("verb", "str"),
    3: ("group", "str"),
    4: ("version", "str"),
    5: ("resource", "str"),
    6: ("subresource", "str"),
    7: ("name", "str"),
}
_NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "str"), 2: ("verb", "str")}
_ACCESS_REVIEW_SPEC: Schema = {
    1: ("resourceAttributes", "msg", _RESOURCE_ATTRIBUTES),
    2: ("nonResourceAttributes", "msg", _NON_RESOURCE_ATTRIBUTES),
    3: ("user", "str"),
    4: ("groups", "rstr"),
    6: ("uid", "str"),
}
_AUTHZ = "authorization.k8s.io/v1"
_AUTHN = "authentication.k8s.io/v1"

# The deploy kinds `kubectl create configmap|secret|serviceaccount|role|clusterrole|rolebinding|
# clusterrolebinding|deployment` post: core/v1, rbac/v1 and apps/v1 generated.proto.
_LABEL_SELECTOR: Schema = {
    1: ("matchLabels", "map"),
    2: ("matchExpressions", "rmsg", {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "rstr")}),
}
_POLICY_RULE: Schema = {
    1: ("verbs", "rstr"),
    2: ("apiGroups", "rstr"),
    3: ("resources", "rstr"),
    4: ("resourceNames", "rstr"),
    5: ("nonResourceURLs", "rstr"),
}
_BINDING: Schema = {
    1: ("metadata", "msg", _OBJECT_META),
    2: ("subjects", "rmsg", {1: ("kind", "str"), 2: ("apiGroup", "str"), 3: ("name", "str"), 4: ("namespace", "str")}),
    3: ("roleRef", "msg", {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")}),
}
_CONTAINER: Schema = {
    1: ("name", "str"),
    2: ("image", "str"),
    3: ("command", "rstr"),
    4: ("args", "rstr"),
    5: ("workingDir", "str"),
    6: (
        "ports",
        "rmsg",
        {1: ("name", "str"), 2: ("hostPort", "int"), 3: ("containerPort", "int"), 4: ("protocol", "str")},
    ),
    7: ("env", "rmsg", {1: ("name", "str"), 2: ("value", "str")}),
    14: ("imagePullPolicy", "str"),
}
_POD_SPEC: Schema = {
    2: ("containers", "rmsg", _CONTAINER),
    3: ("restartPolicy", "str"),
    8: ("serviceAccountName", "str"),
    20: ("initContainers", "rmsg", _CONTAINER),
}
_RBAC = "rbac.authorization.k8s.io/v1"

_SCHEMAS: dict[tuple[str, str], Schema] = {
    ("v1", "ConfigMap"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("data", "map"),
        3: ("binaryData", "bmap"),
        4: ("immutable", "ptrbool"),
    },
    ("v1", "Secret"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("data", "bmap"),
        3: ("type", "str"),
        4: ("stringData", "map"),
        5: ("immutable", "ptrbool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("secrets", "rmsg", {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str")}),
        3: ("imagePullSecrets", "rmsg", {1: ("name", "str")}),
        4: ("automountServiceAccountToken", "ptrbool"),
    },
    (_RBAC, "Role"): {1: ("metadata", "msg", _OBJECT_META), 2: ("rules", "rmsg", _POLICY_RULE)},
    (_RBAC, "ClusterRole"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("rules", "rmsg", _POLICY_RULE),
        3: ("aggregationRule", "msg", {1: ("clusterRoleSelectors", "rmsg", _LABEL_SELECTOR)}),
    },
    (_RBAC, "RoleBinding"): _BINDING,
    (_RBAC, "ClusterRoleBinding"): _BINDING,
    ("apps/v1", "Deployment"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: (
            "spec",
            "msg",
            {
                1: ("replicas", "ptrint"),
                2: ("selector", "msg", _LABEL_SELECTOR),
                3: ("template", "msg", {1: ("metadata", "msg", _OBJECT_META), 2: ("spec", "msg", _POD_SPEC)}),
                4: ("strategy", "msg", {1: ("type", "str")}),
            },
        ),
    },
    (_AUTHZ, "SelfSubjectAccessReview"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", _ACCESS_REVIEW_SPEC),
    },
    (_AUTHZ, "SubjectAccessReview"): {1: ("metadata", "msg", _OBJECT_META), 2: ("spec", "msg", _ACCESS_REVIEW_SPEC)},
    (_AUTHZ, "LocalSubjectAccessReview"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", _ACCESS_REVIEW_SPEC),
    },
    (_AUTHZ, "SelfSubjectRulesReview"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", {1: ("namespace", "str")}),
    },
    # k8s.io/api/authentication/v1/generated.proto
    (_AUTHN, "SelfSubjectReview"): {1: ("metadata", "msg", _OBJECT_META)},
    (_AUTHN, "TokenRequest"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: (
            "spec",
            "msg",
            {
                1: ("audiences", "rstr"),
                3: (
                    "boundObjectRef",
                    "msg",
                    {1: ("kind", "str"), 2: ("apiVersion", "str"), 3: ("name", "str"), 4: ("uid", "str")},
                ),
                4: ("expirationSeconds", "ptrint"),
            },
        ),
    },
    (_AUTHN, "TokenReview"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", {1: ("token", "str"), 2: ("audiences", "rstr")}),
    },
    ("v1", "Namespace"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", {1: ("finalizers", "rstr")}),
        3: ("status", "msg", {1: ("phase", "str")}),
    },
    ("v1", "Service"): {
        1: ("metadata", "msg", _OBJECT_META),
        2: ("spec", "msg", _SERVICE_SPEC),
    },
}


class ProtobufError(ValueError):
    """The body is not a Kubernetes protobuf envelope of a kind this fake can decode."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            out.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8  # fixed64: no field decoded here uses it
        elif wire == 5:
            pos += 4  # fixed32: likewise
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited field")
    return value.decode()


def _message(data: bytes, schema: Schema) -> JSON:
    out: JSON = {}
    for number, value in _fields(data):
        entry = schema.get(number)
        if entry is None:
            continue
        name, kind = entry[0], entry[1]
        if kind == "str":
            out[name] = _text(value)
        elif kind in ("int", "ptrint", "bool", "ptrbool"):
            if not isinstance(value, int):
                raise ProtobufError(f"{name}: expected a varint")
            out[name] = _signed(value) if kind in ("int", "ptrint") else bool(value)
        elif kind == "msg":
            out[name] = _message(value if isinstance(value, bytes) else b"", entry[2])
        elif kind == "rmsg":
            out.setdefault(name, []).append(_message(value if isinstance(value, bytes) else b"", entry[2]))
        elif kind == "rstr":
            out.setdefault(name, []).append(_text(value))
        elif kind == "map":
            pair = _message(value if isinstance(value, bytes) else b"", {1: ("k", "str"), 2: ("v", "str")})
            out.setdefault(name, {})[pair.get("k", "")] = pair.get("v", "")
        elif kind == "bmap":
            # map<string, bytes> (Secret data): JSON carries the bytes base64-encoded.
            key, payload = "", b""
            for number, item in _fields(value if isinstance(value, bytes) else b""):
                if number == 1:
                    key = _text(item)
                elif number == 2 and isinstance(item, bytes):
                    payload = item
            out.setdefault(name, {})[key] = base64.b64encode(payload).decode()
        elif kind == "intstr":
            raw = _message(
                value if isinstance(value, bytes) else b"",
                {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "str")},
            )
            out[name] = raw.get("strVal", "") if raw.get("type") == 1 else raw.get("intVal", 0)
    # Zero values stand for "unset" in Go's non-pointer fields; JSON would not show them.
    kinds = {entry[0]: entry[1] for entry in schema.values()}
    return {k: v for k, v in out.items() if kinds[k] in _POINTERS or v not in ("", 0, False, [], {})}


def decode(body: bytes) -> JSON:
    """The JSON form of a protobuf-encoded Namespace or Service request body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    # runtime.Unknown: typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2.
    envelope = dict(_fields(body[len(MAGIC) :]))
    type_meta_bytes = envelope.get(1, b"")
    type_meta = _message(
        type_meta_bytes if isinstance(type_meta_bytes, bytes) else b"", {1: ("apiVersion", "str"), 2: ("kind", "str")}
    )
    raw = envelope.get(2, b"")
    key = (type_meta.get("apiVersion", ""), type_meta.get("kind", ""))
    schema = _SCHEMAS.get(key)
    if schema is None:
        raise ProtobufError(f"protobuf decoding of {key[1] or 'this kind'} is not supported")
    obj: JSON = {"apiVersion": key[0], "kind": key[1]}
    obj.update(_message(raw if isinstance(raw, bytes) else b"", schema))
    return obj
