"""Auth methods, binding rules, and the login and logout they serve (/v1/acl/auth-method,
/v1/acl/auth-methods, /v1/acl/binding-rule, /v1/acl/binding-rules, /v1/acl/login, /v1/acl/logout).

A login hands the auth method's validator (only `kubernetes`: acl_kubernetes.py) a bearer
token; the verified identity goes through the method's binding rules: each rule whose
`Selector` (bexpr over `serviceaccount.*`) matches binds its `BindName` (with `${...}`
interpolated) as a service identity (`service`), node identity (`node`), role (`role`; this
fake has no roles, so such a link grants nothing) or policy (`policy`, by name). No binding
means 403 `Permission denied`; otherwise a new local token, described "token created via
login", expiring after the method's `MaxTokenTTL` if it has one. Logout deletes the token it
is called with, only if a login made it. Texts are Consul's (`agent/consul/acl_endpoint.go`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from bridge.testing.consul.acl import not_found, permission_denied
from bridge.testing.consul.acl_kubernetes import FIELDS, Identity, KubernetesValidator, ValidatorError
from bridge.testing.consul.api_acl import (
    MAX_TOKEN_TTL,
    MIN_TOKEN_TTL,
    VALID_IDENTITY_NAME,
    VALID_POLICY_NAME,
    acl_authorizer,
    create_token,
    crud_target,
    decode_object,
    duration_seconds,
    listed,
    render_token,
    text_field,
)
from bridge.testing.consul.bexpr import compile_filter
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import HTTPError, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, empty_response, json_response
from bridge.testing.consul.query import request_token
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.wire import SECOND, format_duration

VALID_METHOD_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
BIND_TYPES = ("service", "node", "role", "policy")
_VARIABLE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class AuthMethod:
    name: str
    type: str
    config: dict[str, Any]
    validator: KubernetesValidator
    description: str = ""
    display_name: str = ""
    max_token_ttl: float = 0.0
    token_locality: str = ""
    create_index: int = 0
    modify_index: int = 0

    def render(self, *, stub: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": self.name, "Type": self.type}
        if self.display_name:
            out["DisplayName"] = self.display_name
        out["Description"] = self.description
        if self.max_token_ttl:
            out["MaxTokenTTL"] = format_duration(int(self.max_token_ttl * SECOND))
        if self.token_locality:
            out["TokenLocality"] = self.token_locality
        if not stub:
            out["Config"] = self.config
        out["CreateIndex"], out["ModifyIndex"] = self.create_index, self.modify_index
        return out


@dataclass
class BindingRule:
    id: str
    auth_method: str
    bind_type: str
    bind_name: str
    selector: str = ""
    description: str = ""
    create_index: int = 0
    modify_index: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        return {"ID": self.id, "Description": self.description, "AuthMethod": self.auth_method,
                "Selector": self.selector, "BindType": self.bind_type, "BindName": self.bind_name,
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}

    def matches(self, identity: Identity) -> bool:
        if not self.selector:
            return True
        predicate = compile_filter(self.selector, frozenset({"serviceaccount"}))
        return predicate is None or predicate(identity.selectable)


def interpolate(template: str, variables: dict[str, str]) -> str:
    """HIL `${name}` interpolation of a BindName; an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in variables:
            raise ValueError(f"unknown variable accessed: {name}")
        return variables[name]

    return _VARIABLE.sub(value, template)


def _bind_name_valid(bind_type: str, name: str) -> bool:
    if bind_type in ("service", "node"):
        return bool(VALID_IDENTITY_NAME.match(name)) and len(name) <= 256
    return bool(VALID_POLICY_NAME.match(name))


# ---------------------------------------------------------------------------
# Auth methods
# ---------------------------------------------------------------------------


@route("/v1/acl/auth-method", "PUT")
def auth_method_create(api: Api, req: Request) -> Response:
    return _auth_method_write(api, req, "")


@route("/v1/acl/auth-methods", "GET")
def auth_method_list(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "read")
    with api.acl.lock:
        methods = sorted(api.acl.auth_methods.values(), key=lambda m: m.name)
    return listed(api, req, [m.render(stub=True) for m in methods])


@route("/v1/acl/auth-method/", "GET", "PUT", "DELETE")
def auth_method_crud(api: Api, req: Request) -> Response:
    name = crud_target(api, req, "/v1/acl/auth-method/", "Missing auth method name")
    if req.method == "PUT":
        return _auth_method_write(api, req, name)
    with api.acl.lock:
        method = api.acl.auth_methods.get(name)
        if req.method == "GET":
            return listed(api, req, method.render()) if method else empty_response(404)
        if method is not None:
            del api.acl.auth_methods[name]
            for rule_id in [r.id for r in api.acl.binding_rules.values() if r.auth_method == name]:
                del api.acl.binding_rules[rule_id]
            for token in [t for t in api.acl.tokens.values() if t.auth_method == name]:
                api.acl.remove_token(token.accessor_id)
            api.acl.next_index()
    return json_response(req, True)


def _auth_method_write(api: Api, req: Request, path_name: str) -> Response:
    acl_authorizer(api, req, "write")
    body = decode_object(req, "AuthMethod")
    name = text_field(body, "Name", "AuthMethod")
    if path_name:
        if name and name != path_name:
            raise bad_request("AuthMethod Name in URL and payload do not match")
        name = path_name
    if not name:
        raise server_error("Invalid Auth Method: no Name is set")
    if not VALID_METHOD_NAME.match(name):
        raise server_error("Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    with api.acl.lock:
        existing = api.acl.auth_methods.get(name)
        kind = text_field(body, "Type", "AuthMethod") or (existing.type if existing else "")
        if existing is not None and kind != existing.type:
            raise server_error("the Type field of an Auth Method is immutable")
        if kind != "kubernetes":
            raise server_error("Invalid Auth Method: Type should be one of: [kubernetes]")
        ttl = duration_seconds(body.get("maxtokenttl") or 0, "MaxTokenTTL", "AuthMethod")
        if ttl and not MIN_TOKEN_TTL <= ttl <= MAX_TOKEN_TTL:
            bound = "more than 24h0m0s" if ttl > MAX_TOKEN_TTL else "less than 1m0s"
            raise server_error(f"MaxTokenTTL {format_duration(int(ttl * SECOND))} cannot be {bound}")
        locality = text_field(body, "TokenLocality", "AuthMethod")
        if locality not in ("", "local", "global"):
            raise server_error("Invalid Auth Method: TokenLocality should be one of 'local' or 'global'")
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise bad_request("AuthMethod decoding failed: Config must be an object")
        try:
            validator = KubernetesValidator(config)
        except ValidatorError as exc:
            raise server_error(f"Invalid Auth Method: {exc}") from None
        method = AuthMethod(name, kind, config, validator, text_field(body, "Description", "AuthMethod"),
                            text_field(body, "DisplayName", "AuthMethod"), ttl, locality)
        method.create_index = existing.create_index if existing else api.acl.next_index()
        method.modify_index = api.acl.index if existing is None else api.acl.next_index()
        api.acl.auth_methods[name] = method
    return json_response(req, method.render())


# ---------------------------------------------------------------------------
# Binding rules
# ---------------------------------------------------------------------------


@route("/v1/acl/binding-rule", "PUT")
def binding_rule_create(api: Api, req: Request) -> Response:
    return _binding_rule_write(api, req, "")


@route("/v1/acl/binding-rules", "GET")
def binding_rule_list(api: Api, req: Request) -> Response:
    acl_authorizer(api, req, "read")
    method = req.get("authmethod")
    with api.acl.lock:
        rules = sorted(api.acl.binding_rules.values(), key=lambda r: r.id)
    return listed(api, req, [r.render() for r in rules if not method or r.auth_method == method])


@route("/v1/acl/binding-rule/", "GET", "PUT", "DELETE")
def binding_rule_crud(api: Api, req: Request) -> Response:
    rule_id = crud_target(api, req, "/v1/acl/binding-rule/", "Missing binding rule ID")
    if req.method == "PUT":
        return _binding_rule_write(api, req, rule_id)
    with api.acl.lock:
        rule = api.acl.binding_rules.get(rule_id)
        if req.method == "GET":
            return listed(api, req, rule.render()) if rule else empty_response(404)
        if rule is not None:
            del api.acl.binding_rules[rule_id]
            api.acl.next_index()
    return json_response(req, True)


def _binding_rule_write(api: Api, req: Request, path_id: str) -> Response:
    acl_authorizer(api, req, "write")
    body = decode_object(req, "BindingRule")
    rule_id = text_field(body, "ID", "BindingRule")
    if rule_id and rule_id != path_id:
        raise bad_request("BindingRule ID in URL and payload do not match")
    rule_id = path_id
    method_name = text_field(body, "AuthMethod", "BindingRule")
    with api.acl.lock:
        existing = None
        if rule_id:
            try:
                uuid.UUID(rule_id)
            except ValueError:
                raise server_error("Binding Rule ID invalid UUID") from None
            existing = api.acl.binding_rules.get(rule_id)
            if existing is None:
                raise server_error(f"cannot find binding rule {rule_id}")
            if not method_name:
                method_name = existing.auth_method
            elif method_name != existing.auth_method:
                raise server_error("the AuthMethod field of an Binding Rule is immutable")
        if not method_name:
            raise server_error("Invalid Binding Rule: no AuthMethod is set")
        if method_name not in api.acl.auth_methods:
            raise server_error(f"cannot find auth method with name {json.dumps(method_name)}")
        selector = text_field(body, "Selector", "BindingRule")
        if selector:
            try:
                compile_filter(selector, frozenset({"serviceaccount"}))
            except HTTPError as exc:
                reason = exc.body.removeprefix("Failed to create boolean expression evaluator: ")
                raise server_error(f"invalid Binding Rule: Selector is invalid: {reason}") from None
        bind_type = text_field(body, "BindType", "BindingRule")
        bind_name = text_field(body, "BindName", "BindingRule")
        if not bind_type:
            raise server_error("Invalid Binding Rule: no BindType is set")
        if not bind_name:
            raise server_error("Invalid Binding Rule: no BindName is set")
        if bind_type not in BIND_TYPES:
            raise server_error(f"Invalid Binding Rule: unknown BindType {json.dumps(bind_type)}")
        try:
            sample = interpolate(bind_name, dict.fromkeys(FIELDS, "fake"))
        except ValueError as exc:
            raise server_error(f"Invalid Binding Rule: invalid BindName: {exc}") from None
        if not _bind_name_valid(bind_type, sample):
            raise server_error("Invalid Binding Rule: invalid BindName")
        rule = BindingRule(rule_id or str(uuid.uuid4()), method_name, bind_type, bind_name, selector,
                           text_field(body, "Description", "BindingRule"))
        rule.create_index = existing.create_index if existing else api.acl.next_index()
        rule.modify_index = api.acl.index if existing is None else api.acl.next_index()
        api.acl.binding_rules[rule.id] = rule
    return json_response(req, rule.render())


# ---------------------------------------------------------------------------
# Login and logout
# ---------------------------------------------------------------------------


@route("/v1/acl/login", "POST")
def login(api: Api, req: Request) -> Response:
    if not api.acl.enabled:
        raise HTTPError(401, "ACL support disabled")
    try:
        raw = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise bad_request(f"Failed to decode request body: {exc}") from None
    if not isinstance(raw, dict):
        raise bad_request("Failed to decode request body: json: cannot unmarshal into Go value")
    body = {str(k).lower(): v for k, v in raw.items()}
    method_name = str(body.get("authmethod") or "")
    with api.acl.lock:
        method = api.acl.auth_methods.get(method_name)
    if method is None:
        raise HTTPError(403, f'ACL not found: auth method "{method_name}" not found')
    try:
        identity = method.validator.validate_login(str(body.get("bearertoken") or ""))
    except ValidatorError as exc:
        raise server_error(str(exc)) from None
    links: dict[str, Any] = {"ServiceIdentities": [], "NodeIdentities": [], "Policies": []}
    with api.acl.lock:
        rules = [r for r in api.acl.binding_rules.values() if r.auth_method == method.name]
        for rule in sorted(rules, key=lambda r: r.id):
            if not rule.matches(identity):
                continue
            try:
                name = interpolate(rule.bind_name, identity.projected)
            except ValueError:
                continue
            if not _bind_name_valid(rule.bind_type, name):
                continue
            if rule.bind_type == "service":
                links["ServiceIdentities"].append({"ServiceName": name})
            elif rule.bind_type == "node":
                links["NodeIdentities"].append({"NodeName": name, "Datacenter": api.config.datacenter})
            elif rule.bind_type == "policy" and api.acl.policy_by_name(name) is not None:
                links["Policies"].append({"Name": name})
        if not any(links.values()):
            raise permission_denied()
        meta = body.get("meta") or {}
        description = "token created via login" + (f": {json.dumps(meta, separators=(',', ':'))}" if meta else "")
        token = create_token(api, {"description": description, "local": method.token_locality != "global",
                                   "serviceidentities": links["ServiceIdentities"],
                                   "nodeidentities": links["NodeIdentities"], "policies": links["Policies"]},
                             "Token", auth_method=method.name)
        if method.max_token_ttl:
            token.expiration_time = token.create_time + method.max_token_ttl
    return json_response(req, render_token(api, token))


@route("/v1/acl/logout", "POST")
def logout(api: Api, req: Request) -> Response:
    if not api.acl.enabled:
        raise HTTPError(401, "ACL support disabled")
    secret, _ = request_token(req)
    token = api.acl.token_by_secret(secret) if secret else None
    if token is None:
        raise not_found()
    if not token.auth_method:
        raise permission_denied()  # only a login's token can be logged out of
    api.acl.remove_token(token.accessor_id)
    return json_response(req, True)


ROUTES: list[Route] = [
    auth_method_create,
    auth_method_list,
    auth_method_crud,
    binding_rule_create,
    binding_rule_list,
    binding_rule_crud,
    login,
    logout,
]
