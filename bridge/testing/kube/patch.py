"""The three PATCH flavours kube-apiserver accepts for built-in types. Pure.

- JSON merge patch (RFC 7386): maps merge, `null` deletes, everything else replaces.
- Strategic merge patch: like merge patch, but lists declared with a patch strategy merge by
  a key (containers by `name`, service ports by `port`, conditions by `type`) and the
  `$patch`, `$retainKeys`, `$setElementOrder/<f>` and `$deleteFromPrimitiveList/<f>`
  directives that `kubectl apply` emits are honoured. The merge keys are transcribed from the
  Go struct tags of the fields these resources have; a list not listed here is atomic
  (replaced), as it is for the real type.
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.

Failures raise `PatchError`; the HTTP layer answers with 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.testing.kube.jsonvalue import clone

JSON = dict[str, Any]


class PatchError(ValueError):
    """The patch is malformed or cannot be applied to this document."""


@dataclass(frozen=True, slots=True)
class MergeList:
    """A list with `patchStrategy: merge`; `key` is its `patchMergeKey` (None: a set of scalars)."""

    key: str | None = None
    item: Mapping[str, Any] = field(default_factory=dict)


Schema = Mapping[str, Any]  # field name -> nested Schema | MergeList | REPLACE
REPLACE = "replace"  # `patchStrategy:"replace"` on a struct field: a patch sets it whole

_CONTAINER: Schema = {
    "ports": MergeList("containerPort"),
    "env": MergeList("name"),
    "volumeMounts": MergeList("mountPath"),
    "volumeDevices": MergeList("devicePath"),
}
_METADATA: Schema = {"finalizers": MergeList(None), "ownerReferences": MergeList("uid")}
_CONDITIONS: Schema = {"conditions": MergeList("type")}

SCHEMAS: dict[str, Schema] = {
    "Pod": {
        "metadata": _METADATA,
        "spec": {
            "containers": MergeList("name", _CONTAINER),
            "initContainers": MergeList("name", _CONTAINER),
            "ephemeralContainers": MergeList("name", _CONTAINER),
            "volumes": MergeList("name"),
            "imagePullSecrets": MergeList("name"),
            "hostAliases": MergeList("ip"),
            "topologySpreadConstraints": MergeList("topologyKey"),
            "resourceClaims": MergeList("name"),
            "schedulingGates": MergeList("name"),
        },
        "status": {
            "conditions": MergeList("type"),
            "podIPs": MergeList("ip"),
            "hostIPs": MergeList("ip"),
            "resourceClaimStatuses": MergeList("name"),
        },
    },
    "Service": {"metadata": _METADATA, "spec": {"ports": MergeList("port")}, "status": _CONDITIONS},
    "ServiceAccount": {"metadata": _METADATA, "secrets": MergeList("name")},
    "PodDisruptionBudget": {"metadata": _METADATA, "spec": {"selector": REPLACE}, "status": _CONDITIONS},
    "Namespace": {"metadata": _METADATA, "status": _CONDITIONS},
}
SCHEMAS["Deployment"] = {
    "metadata": _METADATA,
    "spec": {"template": {"metadata": _METADATA, "spec": SCHEMAS["Pod"]["spec"]}},
    "status": _CONDITIONS,
}
_DEFAULT_SCHEMA: Schema = {"metadata": _METADATA}


def schema_for(kind: str) -> Schema:
    return SCHEMAS.get(kind, _DEFAULT_SCHEMA)


# --- RFC 7386 ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new document."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch -------------------------------------------------------------

_DELETE = object()  # a map patched with `$patch: delete` disappears from its parent
_DELETE_FROM = "$deleteFromPrimitiveList/"
_ORDER = "$setElementOrder/"


def strategic_merge_patch(original: JSON, patch: Any, schema: Schema) -> JSON:
    """Apply a strategic merge patch to `original` using `schema` for list merge keys."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    merged = _merge_map(original, patch, schema)
    return {} if merged is _DELETE else merged


def _merge_map(original: Any, patch: JSON, schema: Schema) -> Any:
    result: JSON = clone(original) if isinstance(original, dict) else {}
    directive = patch.get("$patch")
    if directive == "replace":
        return _merge_map({}, {k: v for k, v in patch.items() if k != "$patch"}, schema)
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive}")

    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("$retainKeys must be a list")
        result = {k: v for k, v in result.items() if k in retain}

    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            name = key[len(_DELETE_FROM) :]
            if not isinstance(value, list):
                raise PatchError(f"{key} must be a list")
            if isinstance(result.get(name), list):
                result[name] = [item for item in result[name] if item not in value]
        elif key.startswith(_ORDER):
            if not isinstance(value, list):
                raise PatchError(f"{key} must be a list")
            orders[key[len(_ORDER) :]] = value

    before = {name: result.get(name) for name in orders}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        sub = schema.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and sub == REPLACE:
            result[key] = clone(value)
        elif isinstance(value, dict):
            merged = _merge_map(result.get(key), value, sub if isinstance(sub, Mapping) else {})
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, sub if isinstance(sub, MergeList) else None)
        else:
            result[key] = clone(value)

    for name, order in orders.items():
        strategy = schema.get(name)
        if isinstance(result.get(name), list) and isinstance(strategy, MergeList):
            prior = before[name]
            server = prior if isinstance(prior, list) else []
            result[name] = _apply_order(result[name], order, server, strategy.key)
    return result


def _merge_list(original: Any, patch: list[Any], strategy: MergeList | None) -> list[Any]:
    if strategy is None:
        return clone(patch)
    replace = [i for i in patch if isinstance(i, dict) and i.get("$patch") == "replace"]
    if replace:
        kept = [i for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
        return [_merge_map({}, i, strategy.item) if isinstance(i, dict) else i for i in kept]
    result = clone(original) if isinstance(original, list) else []
    if strategy.key is None:
        for item in patch:
            if item not in result:
                result.append(clone(item))
        return result
    key = strategy.key
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"list items must be objects with merge key {key!r}, got {item!r}")
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (i for i, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_merge_map({}, item, strategy.item))
        else:
            result[index] = _merge_map(result[index], item, strategy.item)
    return result


def _apply_order(items: list[Any], order: list[Any], server: list[Any], key: str | None) -> list[Any]:
    """Reorder per `$setElementOrder`, interleaving server-only items as apimachinery does."""

    def key_of(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, dict) else item

    wanted = [key_of(o) for o in order]
    position = {k: i for i, k in enumerate(wanted)}
    server_keys = [key_of(s) for s in server]
    left = sorted((i for i in items if key_of(i) in position), key=lambda i: position[key_of(i)])
    right = sorted(
        (i for i in items if key_of(i) not in position),
        key=lambda i: server_keys.index(key_of(i)) if key_of(i) in server_keys else len(server),
    )
    out: list[Any] = []
    while left or right:
        if not right:
            out.append(left.pop(0))
        elif not left:
            out.append(right.pop(0))
        else:
            lk, rk = key_of(left[0]), key_of(right[0])
            if lk in server_keys and rk in server_keys and server_keys.index(lk) < server_keys.index(rk):
                out.append(left.pop(0))
            else:
                out.append(right.pop(0))
    return out


# --- RFC 6902 ---------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds")
    return index


def _resolve(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path not found: /{'/'.join(tokens)}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"path not found: /{'/'.join(tokens)}")
    return node


def _strict_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b) and not (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; returns a new document."""
    if not isinstance(operations, list):
        raise PatchError("JSON patch must be a list of operations")
    result = clone(doc)

    def add(tokens: list[str], value: Any) -> None:
        nonlocal result
        if not tokens:
            result = value
            return
        parent = _resolve(result, tokens[:-1])
        if isinstance(parent, dict):
            parent[tokens[-1]] = value
        elif isinstance(parent, list):
            parent.insert(_index(parent, tokens[-1], for_add=True), value)
        else:
            raise PatchError(f"cannot add to a scalar at /{'/'.join(tokens[:-1])}")

    def remove(tokens: list[str]) -> Any:
        if not tokens:
            raise PatchError("cannot remove the whole document")
        parent = _resolve(result, tokens[:-1])
        if isinstance(parent, dict):
            if tokens[-1] not in parent:
                raise PatchError(f"path not found: /{'/'.join(tokens)}")
            return parent.pop(tokens[-1])
        if isinstance(parent, list):
            return parent.pop(_index(parent, tokens[-1], for_add=False))
        raise PatchError(f"path not found: /{'/'.join(tokens)}")

    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}")
        kind, tokens = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {kind} needs a value")
        if kind == "add":
            add(tokens, clone(op["value"]))
        elif kind == "remove":
            remove(tokens)
        elif kind == "replace":
            _resolve(result, tokens)
            if tokens:
                remove(tokens)
            add(tokens, clone(op["value"]))
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"operation {kind} needs 'from'")
            source = _pointer(op["from"])
            if kind == "move" and tokens[: len(source)] == source and tokens != source:
                raise PatchError("cannot move a value into one of its children")
            value = remove(source) if kind == "move" else clone(_resolve(result, source))
            add(tokens, value)
        elif kind == "test":
            if not _strict_equal(_resolve(result, tokens), op["value"]):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return result
