"""What a request asks to do, as the authorizer sees it: verb, API group, resource, namespace, name. Pure.

A port of apiserver's `endpoints/request/requestinfo.go` (`RequestInfoFactory.NewRequestInfo`),
whose quirks show up in denial messages and so are kept:

- only `/api/v1/...` and `/apis/<group>/<version>/...` with a resource are resource requests;
  `/version`, `/healthz` and discovery documents are non-resource requests with the lowercase
  HTTP method as verb;
- a GET without a name is `list`, or `watch` with `watch=true`; a DELETE without one is
  `deletecollection`; a list or watch with `fieldSelector=metadata.name=X` is about name X;
- `/api/v1/namespaces/foo` is the namespace `foo` *in* namespace `foo`, so RoleBindings there
  apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}


@dataclass(frozen=True, slots=True)
class Attributes:
    """authorizer.Attributes without the user: one request, or one access review's question."""

    verb: str
    resource_request: bool
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def request_attributes(method: str, path: str, query: dict[str, str]) -> Attributes:
    """The attributes of an HTTP request (path without the query string)."""
    parts = [p for p in path.strip("/").split("/") if p]
    verb = _VERBS.get(method.upper(), method.lower())
    non_resource = Attributes(method.lower(), False, path)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 4:
            return non_resource
        group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = unquote(rest[1])
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = unquote(rest[1]) if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch", "") in _TRUE else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        if selected:
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(verb, True, path, group, version, namespace, resource, subresource, name)


def _exact_name(selector: str) -> str:
    """The X of a field selector that requires `metadata.name=X` (or `==`), else ''."""
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name":  # `metadata.name!=x` leaves the key `metadata.name!`
                value = value.strip()
                return value if value not in (".", "..") and "/" not in value and "%" not in value else ""
    return ""
