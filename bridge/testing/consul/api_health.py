"""/v1/health/*: service entries with their checks, and check listings by service/node/state.

`?passing` is validated and applied after the (possibly blocking) query, exactly where
Consul's HTTP handler does it, so it never changes the reported index; a warning check
counts as not passing and an entry with no checks counts as passing.
"""

from __future__ import annotations

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.bexpr import HEALTH_CHECK_FIELDS, SERVICE_ENTRY_FIELDS, compile_filter
from bridge.testing.consul.catalog import (
    HEALTH_PASSING,
    checks_by_node,
    checks_of_instance,
    index_for_service,
    services_named,
    tag_filter_passes,
)
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import bad_request
from bridge.testing.consul.protocol import Request, Response
from bridge.testing.consul.query import (
    QueryResult,
    node_meta_filters,
    parse_options,
    path_suffix,
    readable_instances,
    resolve,
    respond,
    run_query,
    satisfies_meta,
)
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.state import Record, Tables
from bridge.testing.consul.wire import GoParseError, parse_bool


def _passing_param(req: Request) -> bool:
    """`getBoolQueryParam`: bare ?passing means true; otherwise strconv.ParseBool."""
    if not req.has("passing"):
        return False
    value = req.get("passing")
    if value == "":
        return True
    try:
        return parse_bool(value)
    except GoParseError:
        raise bad_request("Invalid value for ?passing") from None


@route("/v1/health/service/", "GET")
def health_service(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    meta = node_meta_filters(req)
    tags = req.query.get("tag") if req.has("tag") else None
    name = path_suffix(req, "/v1/health/service/", "Missing service name")
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, SERVICE_ENTRY_FIELDS)

    def evaluate(tables: Tables) -> QueryResult:
        instances = services_named(tables, name)
        if tags is None:
            if instances:
                names = {s["ServiceName"] for s in instances}
                index = max(index_for_service(tables, n, True, checks=True) for n in names)
            else:
                index = index_for_service(tables, name, False, checks=True)
        else:
            exists = bool(instances)
            instances = [s for s in instances if tag_filter_passes(s, tags)]
            index = index_for_service(tables, name, exists, checks=True)
        entries = []
        grouped = checks_by_node(tables, {s["Node"].lower() for s in instances})
        visible, filtered = readable_instances(tables, instances, meta, authz)
        for service, node in visible:
            checks = checks_of_instance(grouped.get(node["Node"].lower(), []), service["ServiceID"])
            entry = render.service_entry(node, service, checks)
            if predicate is None or predicate(entry):
                entries.append(entry)
        return QueryResult(index, entries, filtered)

    result = run_query(api, req, opts, evaluate)
    if _passing_param(req):
        result.value = [e for e in result.value if all(c["Status"] == HEALTH_PASSING for c in e["Checks"])]
    return respond(api, req, opts, authz, result)


def _readable(authz: Authorizer, check: Record) -> bool:
    if check["ServiceID"]:
        return authz.allowed("service", check["ServiceName"], "read")
    return authz.allowed("node", check["Node"], "read")


def _check_listing(api: Api, req: Request, select: str) -> Response:
    """Shared body of /health/checks, /health/node and /health/state."""
    prefix = {"service": "/v1/health/checks/", "node": "/v1/health/node/", "state": "/v1/health/state/"}[select]
    opts = parse_options(req, api)
    meta = node_meta_filters(req) if select != "node" else {}
    missing = {"service": "Missing service name", "node": "Missing node name", "state": "Missing check state"}
    value = path_suffix(req, prefix, missing[select])
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, HEALTH_CHECK_FIELDS)

    def wanted(check: Record) -> bool:
        if select == "service":
            return check["ServiceName"].lower() == value.lower()
        if select == "node":
            return check["Node"].lower() == value.lower()
        return value == "any" or check["Status"] == value

    def evaluate(tables: Tables) -> QueryResult:
        if select == "service" and meta:
            index = index_for_service(tables, value, True, checks=True)
        else:
            index = tables.max_index("checks")
        out = []
        filtered = False
        for key in sorted(tables.checks):
            check = tables.checks[key]
            if not wanted(check):
                continue
            if meta and not satisfies_meta(tables.nodes[key[0]]["Meta"], meta):
                continue
            if not _readable(authz, check):
                filtered = True
                continue
            rendered = render.health_check(check)
            if predicate is None or predicate(rendered):
                out.append(rendered)
        return QueryResult(index, out, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate))


@route("/v1/health/checks/", "GET")
def health_checks(api: Api, req: Request) -> Response:
    return _check_listing(api, req, "service")


@route("/v1/health/node/", "GET")
def health_node(api: Api, req: Request) -> Response:
    return _check_listing(api, req, "node")


@route("/v1/health/state/", "GET")
def health_state(api: Api, req: Request) -> Response:
    return _check_listing(api, req, "state")


ROUTES: list[Route] = [health_service, health_checks, health_node, health_state]
