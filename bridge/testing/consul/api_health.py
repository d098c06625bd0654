"""/v1/health/*: service entries with their checks, and check listings by service/node/state.

`?passing` is validated and applied after the (possibly blocking) query, exactly where
Consul's HTTP handler does it, so it never changes the reported index; a warning check
counts as not passing and an entry with no checks counts as passing.

Each blocking endpoint gives the query loop its index rule on its own (`index_of`), which
its `evaluate` reuses, so a woken query whose index did not move costs no rendering.
"""

from __future__ import annotations

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.bexpr import HEALTH_CHECK_FIELDS, SERVICE_ENTRY_FIELDS, compile_filter
from bridge.testing.consul.catalog import (
    HEALTH_PASSING,
    checks_of_service_name,
    checks_on_node,
    index_for_service,
    instance_checks,
    service_names_like,
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

    def index_of(tables: Tables) -> int:
        # Without ?tag every spelling of the name that has instances counts; with ?tag,
        # whether the name exists is decided before the tag filter.
        names = service_names_like(tables, name)
        if tags is None and names:
            return max(index_for_service(tables, n, True, checks=True) for n in names)
        return index_for_service(tables, name, bool(names), checks=True)

    def evaluate(tables: Tables) -> QueryResult:
        instances = services_named(tables, name)
        if tags is not None:
            instances = [s for s in instances if tag_filter_passes(s, tags)]
        entries = []
        visible, filtered = readable_instances(tables, instances, meta, authz)
        for service, node in visible:
            checks = instance_checks(tables, node["Node"], service["ServiceID"])
            entry = render.service_entry(node, service, checks)
            if predicate is None or predicate(entry):
                entries.append(entry)
        return QueryResult(index_of(tables), entries, filtered)

    result = run_query(api, req, opts, evaluate, index_of)
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

    def selected(tables: Tables) -> list[Record]:
        """The checks `select` picks, in (node, check ID) order."""
        if select == "service":
            return checks_of_service_name(tables, value)
        if select == "node":
            return checks_on_node(tables, value)
        everything = (tables.checks[key] for key in sorted(tables.checks))
        return [check for check in everything if value == "any" or check["Status"] == value]

    def index_of(tables: Tables) -> int:
        if select == "service" and meta:
            return index_for_service(tables, value, True, checks=True)
        return tables.max_index("checks")

    def evaluate(tables: Tables) -> QueryResult:
        out = []
        filtered = False
        for check in selected(tables):
            if meta and not satisfies_meta(tables.nodes[check["Node"].lower()]["Meta"], meta):
                continue
            if not _readable(authz, check):
                filtered = True
                continue
            rendered = render.health_check(check)
            if predicate is None or predicate(rendered):
                out.append(rendered)
        return QueryResult(index_of(tables), out, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


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
