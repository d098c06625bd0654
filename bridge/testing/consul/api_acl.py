"""/v1/acl/policy, /v1/acl/policies, /v1/acl/token, /v1/acl/tokens, /v1/acl/token/self.

Consul's HTTP handlers (`agent/acl_endpoint.go`) over its ACL RPCs (`agent/consul/acl_endpoint.go`):
reading needs `acl:read`, writing `acl:write` (a management token has both), and a token that
lacks it gets a bare 403 `Permission denied`. With ACLs off every endpoint answers 401 `ACL
support disabled`. Validation errors are the RPC's own texts, which Consul answers with 500
(they are plain errors, not HTTP ones); unknown tokens and policies read by ID are 403
`ACL not found`. Bodies are decoded as Go's encoding/json does: field names in any case.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bridge.testing.consul.acl import (
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    RESERVED_PREFIX,
    AclPolicy,
    Authorizer,
    Token,
    not_found,
    permission_denied,
)
from bridge.testing.consul.acl_rules import RulesError, parse_rules
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import HTTPError, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.query import request_token, set_leader_meta
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.wire import SECOND, GoParseError, parse_duration

VALID_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
VALID_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
MIN_TOKEN_TTL, MAX_TOKEN_TTL = 60.0, 24 * 3600.0  # Consul's acl token_min/max_expiration_ttl


# ---------------------------------------------------------------------------
# Shared by the ACL endpoints (acl_login.py too)
# ---------------------------------------------------------------------------


def acl_authorizer(api: Api, req: Request, access: str) -> Authorizer:
    """The request's authorizer, after Consul's checks: ACLs on, token known, `acl:<access>`."""
    if not api.acl.enabled:
        raise HTTPError(401, "ACL support disabled")
    token, _ = request_token(req)
    authz = api.acl.resolve(token)
    if not authz.allowed("acl", "", access):
        raise permission_denied()  # acl.ErrPermissionDenied carries no detail
    return authz


def crud_target(api: Api, req: Request, prefix: str, missing: str) -> str:
    """The ID or name a GET/PUT/DELETE path ends in, after Consul's checks: ACLs on, present
    unless the PUT creates, and for GET and DELETE `acl:read` / `acl:write` (a PUT checks
    `acl:write` when it writes)."""
    target = req.path.removeprefix(prefix)
    if not api.acl.enabled:
        raise HTTPError(401, "ACL support disabled")
    if not target and req.method != "PUT":
        raise bad_request(missing)
    if req.method != "PUT":
        acl_authorizer(api, req, "read" if req.method == "GET" else "write")
    return target


def decode_object(req: Request, what: str) -> dict[str, Any]:
    """A JSON object body with its keys folded to lower case (Go matches field names so)."""
    try:
        value = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise bad_request(f"{what} decoding failed: {exc}") from None
    if not isinstance(value, dict):
        raise bad_request(f"{what} decoding failed: json: cannot unmarshal {type(value).__name__} into Go value")
    return {str(k).lower(): v for k, v in value.items()}


def text_field(body: dict[str, Any], name: str, what: str) -> str:
    value = body.get(name.lower(), "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{what} decoding failed: json: cannot unmarshal {type(value).__name__} "
                          f"into Go struct field .{name} of type string")
    return value


def listed(api: Api, req: Request, value: Any) -> Response:
    """A JSON answer with the query meta headers (the ACL index stands in for raft's)."""
    response = json_response(req, value)
    response.set_header("X-Consul-Index", str(max(api.acl.index, 1)))
    set_leader_meta(api, response)
    return response


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def duration_seconds(value: Any, field: str, what: str) -> float:
    """A Go duration given as text ("1h") or nanoseconds, in seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / SECOND
    if isinstance(value, str):
        try:
            return parse_duration(value) / SECOND
        except GoParseError:
            pass
    raise bad_request(f"{what} decoding failed: invalid {field} {value!r}")


def _hash(*parts: Any) -> str:
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=32)
    return base64.b64encode(digest.digest()).decode()


def _is_uuid(value: str) -> bool:
    try:
        return len(value) == 36 and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------


def render_policy(policy: AclPolicy, *, stub: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": policy.id, "Name": policy.name, "Description": policy.description}
    if not stub:
        out["Rules"] = policy.rules
    out["Datacenters"] = policy.datacenters or None
    out["Hash"] = _hash(policy.name, policy.description, policy.rules, policy.datacenters)
    out["CreateIndex"], out["ModifyIndex"] = policy.create_index, policy.modify_index
    return out


@route("/v1/acl/policy", "PUT")
def policy_create(api: Api, req: Request) -> Response:
    return _policy_write(api, req, "", create=True)


@route("/v1/acl/policies", "GET")
def policy_list(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "read")
    with api.acl.lock:
        policies = sorted(api.acl.policies.values(), key=lambda p: p.id)
    return listed(api, req, [render_policy(p, stub=True) for p in policies])


@route("/v1/acl/policy/name/", "GET")
def policy_read_by_name(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "read")
    name = req.path.removeprefix("/v1/acl/policy/name/")
    if not name:
        raise bad_request("Missing policy Name")
    policy = api.acl.policy_by_name(name)
    if policy is None:
        raise not_found()
    return listed(api, req, render_policy(policy))


@route("/v1/acl/policy/", "GET", "PUT", "DELETE")
def policy_crud(api: Api, req: Request) -> Response:
    policy_id = crud_target(api, req, "/v1/acl/policy/", "Missing policy ID")
    if req.method == "PUT":
        return _policy_write(api, req, policy_id, create=False)
    with api.acl.lock:
        policy = api.acl.policies.get(policy_id)
        if req.method == "GET":
            if policy is None:
                raise not_found()
            return listed(api, req, render_policy(policy))
        if policy is not None:
            if policy.id == GLOBAL_MANAGEMENT_ID:
                raise server_error("Delete operation not permitted on the builtin global-management policy")
            del api.acl.policies[policy.id]
            api.acl.next_index()
    return json_response(req, True)


def _policy_write(api: Api, req: Request, policy_id: str, *, create: bool) -> Response:
    acl_authorizer(api, req, "write")
    body = decode_object(req, "Policy")
    given_id = text_field(body, "ID", "Policy")
    if create and given_id:
        raise bad_request("Cannot specify the ID when creating a new policy")
    if not create:
        if given_id and given_id != policy_id:
            raise bad_request("Policy ID in URL and payload do not match")
        given_id = policy_id
    name = text_field(body, "Name", "Policy")
    rules = text_field(body, "Rules", "Policy")
    datacenters = body.get("datacenters") or []
    if not name:
        raise server_error("Invalid Policy: no Name is set")
    if not VALID_POLICY_NAME.match(name):
        raise server_error("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    with api.acl.lock:
        by_name = api.acl.policy_by_name(name)
        if not given_id:
            if by_name is not None:
                raise server_error(f"Invalid Policy: A Policy with Name {json.dumps(name)} already exists")
            existing = None
        else:
            if not _is_uuid(given_id):
                raise server_error("Policy ID invalid UUID")
            existing = api.acl.policies.get(given_id)
            if existing is None:
                raise server_error(f"cannot find policy {given_id}")
            if existing.name != name and by_name is not None:
                raise server_error(f"Invalid Policy: A policy with name {json.dumps(name)} already exists")
            if existing.id == GLOBAL_MANAGEMENT_ID and rules != existing.rules:
                raise server_error("Changing the Rules for the builtin global-management policy is not permitted")
        try:
            parsed = parse_rules(rules)
        except RulesError as exc:
            raise server_error(str(exc)) from None
        policy = AclPolicy(given_id or str(uuid.uuid4()), name, text_field(body, "Description", "Policy"),
                           rules, list(datacenters), parsed)
        policy.create_index = existing.create_index if existing else api.acl.next_index()
        policy.modify_index = api.acl.index if existing is None else api.acl.next_index()
        api.acl.policies[policy.id] = policy
    return json_response(req, render_policy(policy))


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------


def render_token(api: Api, token: Token, *, stub: bool = False) -> dict[str, Any]:
    """`structs.ACLToken` (or its list stub) as Consul's JSON has it."""
    with api.acl.lock:
        links = [{"ID": i, "Name": api.acl.policies[i].name if i in api.acl.policies else ""}
                 for i in token.policy_ids]
    out: dict[str, Any] = {"AccessorID": token.accessor_id, "SecretID": token.secret_id,
                           "Description": token.description}
    if links:
        out["Policies"] = links
    if token.service_identities:
        out["ServiceIdentities"] = token.service_identities
    if token.node_identities:
        out["NodeIdentities"] = token.node_identities
    out["Local"] = token.local
    if token.auth_method:
        out["AuthMethod"] = token.auth_method
    if token.expiration_time is not None:
        out["ExpirationTime"] = rfc3339(token.expiration_time)
    out["CreateTime"] = rfc3339(token.create_time)
    out["Hash"] = _hash(token.policy_ids, token.service_identities, token.node_identities, token.local)
    if stub:
        out["Legacy"] = False
    out["CreateIndex"], out["ModifyIndex"] = token.create_index, token.modify_index
    return out


@route("/v1/acl/token", "PUT")
def token_create(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "write")
    body = decode_object(req, "Token")
    if text_field(body, "AuthMethod", "Token"):
        raise server_error("AuthMethod field is disallowed outside of Login")
    return json_response(req, render_token(api, create_token(api, body, "Token")))


@route("/v1/acl/tokens", "GET")
def token_list(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "read")
    now = api.acl.clock.now()
    policy, method = req.get("policy"), req.get("authmethod")
    with api.acl.lock:
        tokens = sorted(api.acl.tokens.values(), key=lambda t: t.accessor_id)
    tokens = [t for t in tokens if not t.expired(now) and (not policy or policy in t.policy_ids)
              and (not method or t.auth_method == method)]
    return listed(api, req, [render_token(api, t, stub=True) for t in tokens])


@route("/v1/acl/token/self", "GET")
def token_self(api: Api, req: Request) -> Response:
    if not api.acl.enabled:
        raise HTTPError(401, "ACL support disabled")
    secret, _ = request_token(req)
    token = api.acl.token_by_secret(secret or "anonymous")
    if token is None:
        raise not_found()
    return listed(api, req, render_token(api, token))


@route("/v1/acl/token/", "GET", "PUT", "DELETE")
def token_crud(api: Api, req: Request) -> Response:
    accessor = crud_target(api, req, "/v1/acl/token/", "Missing token ID")
    if req.method == "GET":
        token = api.acl.tokens.get(accessor)
        if token is None or token.expired(api.acl.clock.now()):
            raise not_found()
        return listed(api, req, render_token(api, token))
    if req.method == "DELETE":
        return _token_delete(api, req, accessor)
    acl_authorizer(api, req, "write")
    body = decode_object(req, "Token")
    given = text_field(body, "AccessorID", "Token")
    if given and given != accessor:
        raise bad_request("Token Accessor ID in URL and payload do not match")
    return json_response(req, render_token(api, _token_update(api, body, accessor)))


def _token_delete(api: Api, req: Request, accessor: str) -> Response:
    if not _is_uuid(accessor):
        raise server_error("Accessor ID is missing or an invalid UUID")
    if accessor == ANONYMOUS_ACCESSOR:
        raise server_error("Delete operation not permitted on the anonymous token")
    secret, _ = request_token(req)
    with api.acl.lock:
        token = api.acl.tokens.get(accessor)
        if token is not None:
            if token.secret_id == secret:
                raise server_error("Deletion of the request's authorization token is not permitted")
            api.acl.remove_token(accessor)
    return json_response(req, True)


def _policy_links(api: Api, body: dict[str, Any], what: str) -> list[str]:
    ids: list[str] = []
    for link in body.get("policies") or []:
        if not isinstance(link, dict):
            raise bad_request(f"{what} decoding failed: Policies must be a list of objects")
        link = {str(k).lower(): v for k, v in link.items()}
        if link.get("id"):
            if link["id"] not in api.acl.policies:
                raise server_error(f"No such ACL policy with ID {json.dumps(link['id'])}")
            found = str(link["id"])
        else:
            policy = api.acl.policy_by_name(str(link.get("name") or ""))
            if policy is None:
                raise server_error(f"No such ACL policy with name {json.dumps(str(link.get('name') or ''))}")
            found = policy.id
        if found not in ids:
            ids.append(found)
    return ids


def _identities(body: dict[str, Any], key: str, name_field: str, check: Callable[[dict[str, Any]], None]) -> list[
        dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for raw in body.get(key) or []:
        item = {str(k).lower(): v for k, v in (raw or {}).items()}
        identity: dict[str, Any] = {name_field: str(item.get(name_field.lower()) or "")}
        if item.get("datacenter"):
            identity["Datacenter"] = str(item["datacenter"])
        if item.get("datacenters"):
            identity["Datacenters"] = list(item["datacenters"])
        check(identity)
        if identity not in out:
            out.append(identity)
    return out


def _check_service_identity(identity: dict[str, Any]) -> None:
    name = identity["ServiceName"]
    if not name:
        raise server_error("Service identity is missing the service name field on this token")
    if not VALID_IDENTITY_NAME.match(name) or len(name) > 256:
        raise server_error(f"Service identity {json.dumps(name)} has an invalid name. "
                           f"Only alphanumeric characters, '-' and '_' are allowed")


def _check_node_identity(identity: dict[str, Any]) -> None:
    if not identity["NodeName"]:
        raise server_error("Node identity is missing the node name field on this token")
    if not identity.get("Datacenter"):
        raise server_error("Node identity is missing the datacenter field on this token")
    if not VALID_IDENTITY_NAME.match(identity["NodeName"]):
        raise server_error("Node identity has an invalid name. Only alphanumeric characters, '-' and '_' are allowed")


def _new_id(api: Api, given: str, field: str) -> str:
    if not given:
        return str(uuid.uuid4())
    if not _is_uuid(given):
        raise server_error(f"Invalid Token: {field} is not a valid UUID")
    in_use = given in api.acl.tokens or api.acl.token_by_secret(given) is not None
    if in_use:
        raise server_error(f"Invalid Token: {field} is already in use")
    if given.startswith(RESERVED_PREFIX):
        raise server_error(f'Invalid Token: UUIDs with the prefix "{RESERVED_PREFIX}" are reserved')
    return given


def create_token(api: Api, body: dict[str, Any], what: str, *, auth_method: str = "") -> Token:
    """`tokenSetInternal` for a new token (also what a login makes, with `auth_method`)."""
    for legacy in ("rules", "type"):
        if body.get(legacy):
            raise server_error(f"{legacy.capitalize()} cannot be specified for this token")
    with api.acl.lock:
        accessor = _new_id(api, text_field(body, "AccessorID", what), "AccessorID")
        secret = _new_id(api, text_field(body, "SecretID", what), "SecretID")
        token = Token(secret, accessor, description=text_field(body, "Description", what),
                      policy_ids=_policy_links(api, body, what),
                      service_identities=_identities(body, "serviceidentities", "ServiceName",
                                                     _check_service_identity),
                      node_identities=_identities(body, "nodeidentities", "NodeName", _check_node_identity),
                      local=bool(body.get("local", False)), auth_method=auth_method,
                      create_time=api.acl.clock.now())
        ttl = body.get("expirationttl")
        if ttl:
            seconds = duration_seconds(ttl, "ExpirationTTL", what)
            if seconds < 0:
                raise server_error(f"Token Expiration TTL '{ttl}' should be > 0")
            if body.get("expirationtime"):
                raise server_error("Token Expiration TTL and Expiration Time cannot both be set")
            if seconds > MAX_TOKEN_TTL or seconds < MIN_TOKEN_TTL:
                bound = "more" if seconds > MAX_TOKEN_TTL else "less"
                raise server_error(f"ExpirationTime cannot be {bound} than the ACL token expiration bounds")
            token.expiration_time = token.create_time + seconds
        return api.acl.store_token(token)


def _token_update(api: Api, body: dict[str, Any], accessor: str) -> Token:
    if not _is_uuid(accessor):
        raise server_error("AccessorID is not a valid UUID")
    with api.acl.lock:
        existing = api.acl.tokens.get(accessor)
        if existing is None or existing.expired(api.acl.clock.now()):
            raise server_error(f"Cannot find token {json.dumps(accessor)}")
        secret = text_field(body, "SecretID", "Token")
        if secret and secret != existing.secret_id:
            raise server_error("Changing a tokens SecretID is not permitted")
        if bool(body.get("local", existing.local)) != existing.local:
            raise server_error(f"cannot toggle local mode of {accessor}")
        method = text_field(body, "AuthMethod", "Token")
        if method and method != existing.auth_method:
            raise server_error(f"Cannot change AuthMethod of {accessor}")
        if body.get("expirationttl"):
            raise server_error(f"Cannot change expiration time of {accessor}")
        token = Token(existing.secret_id, accessor, policy=existing.policy,
                      description=text_field(body, "Description", "Token"),
                      policy_ids=_policy_links(api, body, "Token"),
                      service_identities=_identities(body, "serviceidentities", "ServiceName",
                                                     _check_service_identity),
                      node_identities=_identities(body, "nodeidentities", "NodeName", _check_node_identity),
                      local=existing.local, auth_method=existing.auth_method,
                      expiration_time=existing.expiration_time)
        return api.acl.store_token(token)


ROUTES: list[Route] = [
    policy_create,
    policy_list,
    policy_read_by_name,
    policy_crud,
    token_create,
    token_list,
    token_self,
    token_crud,
]
