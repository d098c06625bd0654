"""A minimal OpenAPI v3 surface: just enough for `kubectl create/apply` with default validation.

kubectl (>= 1.27) decides between server-side and client-side field validation by looking up,
in `/openapi/v3/<group-version>`, the PATCH operation of the object's kind and checking that it
declares a `fieldValidation` query parameter. If the document is missing it falls back to
downloading `/openapi/v2` for client-side validation, and fails when that is missing too.
So each group-version document lists the resources' paths with operations that carry
`x-kubernetes-group-version-kind` and the `fieldValidation` parameter.

PATCH operations deliberately declare no request body: kubectl then builds strategic merge
patches from its compiled-in Go types, which carry the exact merge keys, instead of from
OpenAPI. There are no schemas here, so `kubectl explain` does not work. Pure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bridge.testing.kube.discovery import SERVER_VERSION
from bridge.testing.kube.resources import ResourceType, group_versions, in_group_version

JSON = dict[str, Any]


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _param(name: str) -> JSON:
    return {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}


def _operation(rt: ResourceType, action: str, params: list[str]) -> JSON:
    return {
        "operationId": f"{action}{rt.kind}",
        "parameters": [_param(p) for p in params],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }


def _paths(rt: ResourceType) -> JSON:
    write = ["dryRun", "fieldManager", "fieldValidation"]
    collection = rt.collection_path("{namespace}" if rt.namespaced else None)
    if not rt.stored:
        return {collection: {"post": _operation(rt, "post", write)}}
    item = f"{collection}/{{name}}"
    paths: JSON = {
        collection: {
            "get": _operation(
                rt, "list", ["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]
            ),
            "post": _operation(rt, "post", write),
        },
        item: {
            "get": _operation(rt, "get", []),
            "put": _operation(rt, "put", write),
            "patch": _operation(rt, "patch", [*write, "force"]),
            "delete": _operation(rt, "delete", ["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        },
    }
    if rt.status_subresource:
        paths[f"{item}/status"] = {
            "get": _operation(rt, "get", []),
            "put": _operation(rt, "put", write),
            "patch": _operation(rt, "patch", [*write, "force"]),
        }
    return paths


def group_version_document(group: str, version: str) -> JSON | None:
    types = in_group_version(group, version)
    if not types:
        return None
    paths: JSON = {}
    for rt in types:
        paths.update(_paths(rt))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def index() -> JSON:
    """The `/openapi/v3` root: one entry per group-version, with a content hash for caching."""
    paths: JSON = {}
    for group, version in group_versions():
        doc = group_version_document(group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()
        path = _gv_path(group, version)
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def lookup(path: str) -> JSON | None:
    """The document for `/openapi/v3/<path>`, or None."""
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "api":
        return group_version_document("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return group_version_document(parts[1], parts[2])
    return None
