"""/v1/agent/*: local service registration, check updates, and the agent's self description.

The agent endpoints accept snake_case keys (Consul's ServiceDefinition/CheckType
`UnmarshalJSON` aliases), answer writes with an empty 200 body, and do not carry the
blocking-query headers: they are served from the agent, not from the servers.
"""

from __future__ import annotations

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.bexpr import HEALTH_CHECK_FIELDS, NODE_SERVICE_FIELDS, compile_filter
from bridge.testing.consul.catalog import (
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_WARNING,
    check_type_of,
    service_from_node_service,
)
from bridge.testing.consul.context import Api
from bridge.testing.consul.decode import CHECK_UPDATE, SERVICE_DEFINITION, decode_request
from bridge.testing.consul.errors import HTTPError, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, empty_response, json_response
from bridge.testing.consul.query import request_token
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.state import Record
from bridge.testing.consul.validation import (
    VALID_STATUSES,
    is_any_address,
    service_meta_error,
    validate_check_type,
    weights_error,
)
from bridge.testing.consul.wire import SECOND, format_duration, go_quote


def _authz(api: Api, req: Request) -> Authorizer:
    token, _ = request_token(req)
    return api.acl.resolve(token)


def _agent_checks(api: Api, service: Record, check_types: list[Record]) -> list[Record]:
    """`addServiceInternal`: turn check definitions into HealthChecks on this node."""
    out = []
    for position, ctype in enumerate(check_types, start=1):
        check_id = ctype.get("CheckID", "")
        if not check_id:
            check_id = f"service:{service['ServiceID']}"
            if len(check_types) > 1:
                check_id += f":{position}"
        definition = {k: v for k, v in ctype.items() if k not in ("CheckID", "Name", "Status", "Notes")}
        out.append(
            {
                "Node": api.config.node_name,
                "CheckID": check_id,
                "Name": ctype.get("Name") or f"Service '{service['ServiceName']}' check",
                "Status": ctype.get("Status") or HEALTH_CRITICAL,
                "Notes": ctype.get("Notes", ""),
                "Output": "",
                "ServiceID": service["ServiceID"],
                "ServiceName": service["ServiceName"],
                "ServiceTags": service["ServiceTags"],
                "Type": check_type_of(definition),
                "Interval": format_duration(ctype.get("Interval", 0)),
                "Timeout": format_duration(ctype.get("Timeout", 0)),
                "ExposedPort": 0,
                "Definition": {},
                "_explicit_status": bool(ctype.get("Status")),
                "_ttl": ctype.get("TTL", 0) / SECOND,
            }
        )
    return out


@route("/v1/agent/service/register", "PUT")
def agent_service_register(api: Api, req: Request) -> Response:
    body = decode_request(req.body, SERVICE_DEFINITION)
    if not body.get("Name"):
        raise bad_request("Missing service name")
    if is_any_address(body.get("Address", "")):
        raise bad_request("Invalid service address")
    weights = body.get("Weights")
    if weights is not None and weights_error(weights) is not None:
        raise bad_request(f"Invalid Weights: {weights_error(weights)}")
    meta_error = service_meta_error(body.get("Kind", ""), body.get("Meta"))
    if meta_error is not None:
        raise bad_request(f"Invalid Service Meta: {meta_error}")
    check_types = ([body["Check"]] if body.get("Check") else []) + [c for c in body.get("Checks") or [] if c]
    for ctype in check_types:
        try:
            validate_check_type(ctype)
        except ValueError as exc:
            raise bad_request(f"Invalid check: {exc}") from None
        if ctype.get("Status") and ctype["Status"] not in VALID_STATUSES:
            raise bad_request("Status for checks must 'passing', 'warning', 'critical'")
    node_service = {
        "Kind": body.get("Kind", ""),
        "ID": body.get("ID") or body["Name"],
        "Service": body["Name"],
        "Tags": body.get("Tags"),
        "Address": body.get("Address", ""),
        "TaggedAddresses": body.get("TaggedAddresses"),
        "Meta": body.get("Meta"),
        "Port": body.get("Port", 0),
        "SocketPath": body.get("SocketPath", ""),
        "Weights": weights,
        "EnableTagOverride": body.get("EnableTagOverride", False),
        "Proxy": body.get("Proxy"),
        "Connect": body.get("Connect"),
        "Locality": body.get("Locality"),
    }
    service = service_from_node_service(node_service)
    authz = _authz(api, req)
    authz.require("service", service["ServiceName"], "write")
    with api.store.lock:
        existing = api.store.tables.agent_services.get(service["ServiceID"])
    if existing is not None:
        authz.require("service", existing["ServiceName"], "write")
    checks = _agent_checks(api, service, check_types)
    with api.store.write() as txn:
        api.agent.add_service(txn, service, checks, replace_checks=req.has("replace-existing-checks"))
    return empty_response()


def _unknown_service(service_id: str) -> HTTPError:
    return HTTPError(
        404, f"Unknown service ID {go_quote(service_id)}. Ensure that the service ID is passed, not the service name."
    )


@route("/v1/agent/service/deregister/", "PUT")
def agent_service_deregister(api: Api, req: Request) -> Response:
    service_id = req.path.removeprefix("/v1/agent/service/deregister/")
    authz = _authz(api, req)
    with api.store.lock:
        existing = api.store.tables.agent_services.get(service_id)
    if existing is None:
        raise _unknown_service(service_id)
    authz.require("service", existing["ServiceName"], "write")
    with api.store.write() as txn:
        api.agent.remove_service(txn, service_id)
    return empty_response()


@route("/v1/agent/services", "GET")
def agent_services(api: Api, req: Request) -> Response:
    authz = _authz(api, req)
    predicate = compile_filter(req.get("filter"), NODE_SERVICE_FIELDS)
    out: dict[str, Record] = {}
    filtered = False
    with api.store.lock:
        services = dict(api.store.tables.agent_services)
    for sid in sorted(services):
        service = services[sid]
        if not authz.allowed("service", service["ServiceName"], "read"):
            filtered = True
            continue
        rendered = render.agent_service(service, api.config.datacenter)
        if predicate is None or predicate(rendered):
            out[sid] = rendered
    response = json_response(req, out)
    if filtered and authz.supplied:
        response.set_header("X-Consul-Results-Filtered-By-ACLs", "true")
    return response


@route("/v1/agent/service/", "GET")
def agent_service(api: Api, req: Request) -> Response:
    service_id = req.path.removeprefix("/v1/agent/service/")
    authz = _authz(api, req)
    with api.store.lock:
        service = api.store.tables.agent_services.get(service_id)
    if service is None:
        raise HTTPError(404, f"unknown service ID: {service_id}")
    authz.require("service", service["ServiceName"], "read")
    return json_response(req, render.agent_service(service, api.config.datacenter))


@route("/v1/agent/checks", "GET")
def agent_checks(api: Api, req: Request) -> Response:
    authz = _authz(api, req)
    # After the ACL filtering, as in Consul (a filter must not probe what the token cannot read).
    predicate = compile_filter(req.get("filter"), HEALTH_CHECK_FIELDS)
    with api.store.lock:
        checks = dict(api.store.tables.agent_checks)
    out: dict[str, Record] = {}
    for cid in sorted(checks):
        check = checks[cid]
        readable = (
            authz.allowed("service", check["ServiceName"], "read")
            if check["ServiceID"]
            else authz.allowed("node", check["Node"], "read")
        )
        if readable:
            rendered = render.health_check({**check, "CreateIndex": 0, "ModifyIndex": 0})
            del rendered["CreateIndex"], rendered["ModifyIndex"]
            if predicate is None or predicate(rendered):
                out[cid] = rendered
    return json_response(req, out)


def _update_check(api: Api, req: Request, check_id: str, status: str, output: str) -> Response:
    authz = _authz(api, req)
    with api.store.lock:
        check = api.store.tables.agent_checks.get(check_id)
    if check is None:
        raise HTTPError(
            404, f"Unknown check ID {go_quote(check_id)}. Ensure that the check ID is passed, not the check name."
        )
    if check["ServiceID"]:
        authz.require("service", check["ServiceName"], "write")
    else:
        authz.require("node", check["Node"], "write")
    if not api.agent.has_ttl(check_id):
        # `updateTTLCheck`: only a TTL check takes updates; the error is a plain 500.
        raise server_error(f"CheckID {go_quote(check_id)} does not have associated TTL")
    with api.store.write() as txn:
        api.agent.update_check(txn, check_id, status, output)
    return empty_response()


@route("/v1/agent/check/pass/", "PUT")
def agent_check_pass(api: Api, req: Request) -> Response:
    return _update_check(api, req, req.path.removeprefix("/v1/agent/check/pass/"), HEALTH_PASSING, req.get("note"))


@route("/v1/agent/check/warn/", "PUT")
def agent_check_warn(api: Api, req: Request) -> Response:
    return _update_check(api, req, req.path.removeprefix("/v1/agent/check/warn/"), HEALTH_WARNING, req.get("note"))


@route("/v1/agent/check/fail/", "PUT")
def agent_check_fail(api: Api, req: Request) -> Response:
    return _update_check(api, req, req.path.removeprefix("/v1/agent/check/fail/"), HEALTH_CRITICAL, req.get("note"))


@route("/v1/agent/check/update/", "PUT")
def agent_check_update(api: Api, req: Request) -> Response:
    body = decode_request(req.body, CHECK_UPDATE)
    status = body.get("Status", "")
    if status not in VALID_STATUSES:
        raise bad_request(f"Invalid check status: '{status}'")
    return _update_check(api, req, req.path.removeprefix("/v1/agent/check/update/"), status, body.get("Output", ""))


def _stats(api: Api) -> dict[str, dict[str, str]]:
    """`Agent.Stats`: sections of string values; the numbers are the agent's own."""
    with api.store.lock:
        services = len(api.store.tables.agent_services)
        checks = api.store.tables.agent_checks
        ttls = sum(1 for cid in checks if api.agent.has_ttl(cid))
        total = len(checks)
    cfg = api.config
    return {
        "agent": {"check_monitors": "0", "check_ttls": str(ttls), "checks": str(total), "services": str(services)},
        "build": {"prerelease": "", "revision": "fake", "version": cfg.version, "version_metadata": ""},
        "consul": {
            "acl": "enabled" if api.acl.enabled else "disabled",
            "bootstrap": "true",
            "known_datacenters": "1",
            "leader": str(api.faults.known_leader).lower(),
            "leader_addr": f"{cfg.node_address}:8300",
            "server": "true",
        },
        "runtime": {"arch": "amd64", "cpu_count": "1", "goroutines": "1", "max_procs": "1", "os": "linux",
                    "version": "go1.22"},
    }


@route("/v1/agent/self", "GET")
def agent_self(api: Api, req: Request) -> Response:
    authz = _authz(api, req)
    authz.require("agent", api.config.node_name, "read")
    cfg = api.config
    body = {
        "Config": {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": cfg.node_id,
            "Partition": "",
            "Revision": "fake",
            "Server": True,
            "Version": cfg.version,
            "BuildDate": "2026-01-01T00:00:00Z",
        },
        "DebugConfig": {"ACLsEnabled": api.acl.enabled, "Datacenter": cfg.datacenter, "NodeName": cfg.node_name},
        "Coord": {"Vec": [0, 0, 0, 0, 0, 0, 0, 0], "Error": 1.5, "Adjustment": 0, "Height": 1e-05},
        "Member": {
            "Name": cfg.node_name,
            "Addr": cfg.node_address,
            "Port": 8301,
            "Tags": {"dc": cfg.datacenter, "role": "consul", "id": cfg.node_id, "build": cfg.version},
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        },
        "Stats": _stats(api),
        "Meta": {"consul-network-segment": "", "consul-version": cfg.version},
        "xDS": None,
    }
    return json_response(req, body)


ROUTES: list[Route] = [
    agent_service_register,
    agent_service_deregister,
    agent_services,
    agent_service,
    agent_checks,
    agent_check_pass,
    agent_check_warn,
    agent_check_fail,
    agent_check_update,
    agent_self,
]
