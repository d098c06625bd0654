"""/v1/catalog/*: register, deregister and the catalog read endpoints.

Handlers follow Consul's HTTP + RPC path step by step so that the first failing check
decides the error, as it would on a real agent: body decoding (400), datacenter,
ACL token, `nodePreApply`/`servicePreApply` validation (500), ACL vetting, then the
state-store apply. Reads go through the blocking-query loop with the per-endpoint
index rules from catalog.py; each read hands the loop its index rule (`index_of`) apart
from its `evaluate`, so a woken query whose index did not move renders nothing.
"""

from __future__ import annotations

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.bexpr import NODE_FIELDS, NODE_SERVICE_FIELDS, SERVICE_NODE_FIELDS, Predicate, compile_filter
from bridge.testing.consul.catalog import (
    NODE_EXTINCTION,
    changes_node,
    check_from_request,
    index_for_service,
    lookup_node,
    service_from_node_service,
    services_named,
    services_on_node,
    sorted_nodes,
    tag_filter_passes,
)
from bridge.testing.consul.context import Api
from bridge.testing.consul.decode import DEREGISTER_REQUEST, REGISTER_REQUEST, decode_request
from bridge.testing.consul.errors import ApplyError, HTTPError, server_error
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.query import (
    QueryResult,
    node_meta_filters,
    parse_options,
    path_suffix,
    readable_instances,
    request_token,
    require_datacenter,
    resolve,
    respond,
    run_query,
    satisfies_meta,
)
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.state import Record, Tables
from bridge.testing.consul.validation import is_any_address, validate_node_id

CONSUL_SERVICE = "consul"


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------


def prepare_registration(api: Api, body: Record, authz: Authorizer) -> Record:
    """Catalog.Register's pre-apply steps: validate, default, fold Check into Checks."""
    node = body.get("Node", "")
    if not node:
        raise server_error("Must provide node")
    try:
        validate_node_id(body.get("ID", ""))
    except ValueError as exc:
        raise server_error(str(exc)) from None
    if not body.get("Address") and not body.get("SkipNodeUpdate"):
        raise server_error("Must provide address if SkipNodeUpdate is not set")
    req: Record = {
        "ID": body.get("ID", ""),
        "Node": node,
        "Address": body.get("Address", ""),
        "Datacenter": body.get("Datacenter") or api.config.datacenter,
        "TaggedAddresses": body.get("TaggedAddresses"),
        "NodeMeta": body.get("NodeMeta"),
        "SkipNodeUpdate": body.get("SkipNodeUpdate", False),
        "Service": None,
        "Checks": [],
    }
    if body.get("Service") is not None:
        req["Service"] = prepare_service(body["Service"], authz)
    checks = list(body.get("Checks") or [])
    if body.get("Check") is not None:
        checks.append(body["Check"])
    req["Checks"] = [check_from_request(check, node) for check in checks]
    for check in req["Checks"]:
        if not check["CheckID"]:
            raise server_error(
                f'failed inserting check on node "{node}": failed inserting check: missing value for index'
            )
    return req


def prepare_service(ns: Record, authz: Authorizer) -> Record:
    """`servicePreApply`: default ID, require a name with an ID, reject 0.0.0.0, ACL."""
    if not ns.get("ID") and ns.get("Service"):
        ns = {**ns, "ID": ns["Service"]}
    if ns.get("ID") and not ns.get("Service"):
        raise server_error("Must provide service name (Service.Service) when service ID is provided")
    if is_any_address(ns.get("Address", "")):
        raise server_error("Invalid service address")
    if ns.get("Kind") == "connect-proxy" and not ns.get("Port") and not ns.get("SocketPath"):
        raise server_error("Port or SocketPath must be set for a connect-proxy")
    if ns.get("Service", "") != CONSUL_SERVICE:
        authz.require("service", ns.get("Service", ""), "write")
    service = service_from_node_service(ns)
    if not service["ServiceID"]:
        raise server_error("failed inserting service: failed inserting service: missing value for index")
    return service


def vet_register(tables: Tables, authz: Authorizer, req: Record) -> None:
    """`vetRegisterWithACL`; its node/service consistency checks run even without ACLs."""
    node = lookup_node(tables, req["Node"])

    def existing_service(service_id: str) -> Record | None:
        # The node's instance with exactly this ID (the lookup is by key, so case-insensitive;
        # Consul compares the IDs it listed, so the spelling must match too).
        found = tables.services.get((node["Node"].lower(), service_id.lower())) if node else None
        return found if found is not None and found["ServiceID"] == service_id else None

    if node is None or changes_node(req, node):
        authz.require("node", req["Node"], "write")
    service = req["Service"]
    if service is not None and node is not None:
        other = existing_service(service["ServiceID"])
        if other is not None and not authz.allowed("service", other["ServiceName"], "write"):
            raise HTTPError(403, "Permission denied")
    for check in req["Checks"]:
        if check["Node"] != req["Node"]:
            raise server_error(
                f"Node '{check['Node']}' for check '{check['CheckID']}' "
                f"doesn't match register request node '{req['Node']}'"
            )
        if not check["ServiceID"]:
            authz.require("node", req["Node"], "write")
            continue
        if service is not None and service["ServiceID"] == check["ServiceID"]:
            continue
        other = existing_service(check["ServiceID"])
        if other is None:
            raise server_error(f"Unknown service ID '{check['ServiceID']}' for check ID '{check['CheckID']}'")
        authz.require("service", other["ServiceName"], "write")


@route("/v1/catalog/register", "PUT")
def catalog_register(api: Api, req: Request) -> Response:
    body = decode_request(req.body, REGISTER_REQUEST)
    token, _ = request_token(req)
    require_datacenter(api, body.get("Datacenter"))
    authz = api.acl.resolve(token)
    registration = prepare_registration(api, body, authz)
    with api.store.lock:
        vet_register(api.store.tables, authz, registration)
    try:
        with api.store.write() as txn:
            api.catalog.ensure_registration(txn, registration)
    except ApplyError as exc:
        raise server_error(str(exc)) from None
    return json_response(req, True)


def vet_deregister(tables: Tables, authz: Authorizer, body: Record) -> None:
    """`vetDeregisterWithACL`: node:write allows everything; otherwise per target."""
    node = body["Node"]
    if authz.allowed("node", node, "write"):
        return
    if body.get("ServiceID"):
        service = tables.services.get((node.lower(), body["ServiceID"].lower()))
        if service is None:
            raise server_error(f"Unknown service ID '{body['ServiceID']}'")
        authz.require("service", service["ServiceName"], "write")
    elif body.get("CheckID"):
        check = tables.checks.get((node.lower(), body["CheckID"].lower()))
        if check is None:
            raise server_error(f"Unknown check ID '{body['CheckID']}'")
        if check["ServiceID"]:
            authz.require("service", check["ServiceName"], "write")
        else:
            raise authz.denied("node", node, "write")
    else:
        raise authz.denied("node", node, "write")


@route("/v1/catalog/deregister", "PUT")
def catalog_deregister(api: Api, req: Request) -> Response:
    body = decode_request(req.body, DEREGISTER_REQUEST)
    token, _ = request_token(req)
    require_datacenter(api, body.get("Datacenter"))
    if not body.get("Node"):
        raise server_error("Must provide node")
    authz = api.acl.resolve(token)
    with api.store.lock:
        vet_deregister(api.store.tables, authz, body)
    with api.store.write() as txn:
        if body.get("ServiceID"):
            api.catalog.delete_service(txn, body["Node"], body["ServiceID"])
        elif body.get("CheckID"):
            api.catalog.delete_check(txn, body["Node"], body["CheckID"])
        else:
            api.catalog.delete_node(txn, body["Node"])
    return json_response(req, True)


# ---------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------


@route("/v1/catalog/datacenters", "GET")
def catalog_datacenters(api: Api, req: Request) -> Response:
    return json_response(req, [api.config.datacenter])


@route("/v1/catalog/services", "GET")
def catalog_services(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    meta = node_meta_filters(req)
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, SERVICE_NODE_FIELDS)

    def index_of(tables: Tables) -> int:
        return tables.max_index("services", "nodes") if meta else tables.max_index("services")

    def evaluate(tables: Tables) -> QueryResult:
        matched = []
        filtered = False
        # No sort: the summary is sorted by name and tag whatever the input order.
        for key, service in tables.services.items():
            node = tables.nodes[key[0]]
            if meta and not satisfies_meta(node["Meta"], meta):
                continue
            if not authz.allowed("service", service["ServiceName"], "read"):
                filtered = True
                continue
            if predicate is not None and not predicate(render.catalog_service(service, node)):
                continue
            matched.append(service)
        return QueryResult(index_of(tables), render.services_summary(matched), filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


@route("/v1/catalog/nodes", "GET")
def catalog_nodes(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    meta = node_meta_filters(req)
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, NODE_FIELDS)

    def index_of(tables: Tables) -> int:
        return tables.max_index("nodes")

    def evaluate(tables: Tables) -> QueryResult:
        out = []
        filtered = False
        for node in sorted_nodes(tables):
            if meta and not satisfies_meta(node["Meta"], meta):
                continue
            if not authz.allowed("node", node["Node"], "read"):
                filtered = True
                continue
            rendered = render.node(node)
            if predicate is None or predicate(rendered):
                out.append(rendered)
        return QueryResult(index_of(tables), out, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


@route("/v1/catalog/service/", "GET")
def catalog_service(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    meta = node_meta_filters(req)
    tags = req.query.get("tag") if req.has("tag") else None
    name = path_suffix(req, "/v1/catalog/service/", "Missing service name")
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, SERVICE_NODE_FIELDS)

    def index_of(tables: Tables) -> int:
        # Existence is decided before any ?tag filter.
        exists = bool(tables.services_by_name.get(name.lower()))
        return index_for_service(tables, name, exists, checks=False)

    def evaluate(tables: Tables) -> QueryResult:
        instances = services_named(tables, name)
        if tags is not None:
            instances = [s for s in instances if tag_filter_passes(s, tags)]
        visible, filtered = readable_instances(tables, instances, meta, authz)
        rendered = [render.catalog_service(service, node) for service, node in visible]
        return QueryResult(index_of(tables), [r for r in rendered if predicate is None or predicate(r)], filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


def _node_index(tables: Tables, name: str, node: Record | None) -> int:
    if node is not None:
        return tables.index.get(f"node.{node['Node']}", 0)
    if len(name) < 2:
        return 0
    return tables.index.get(NODE_EXTINCTION, 0)


def _node_services(
    tables: Tables, authz: Authorizer, node: Record, predicate: Predicate | None
) -> tuple[list[Record], bool]:
    """The node's services the token may read, rendered and filtered; and whether ACLs hid any."""
    out = []
    filtered = False
    for service in services_on_node(tables, node["Node"]):
        if not authz.allowed("service", service["ServiceName"], "read"):
            filtered = True
            continue
        rendered = render.node_service(service)
        if predicate is None or predicate(rendered):
            out.append(rendered)
    return out, filtered


@route("/v1/catalog/node/", "GET")
def catalog_node(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    name = path_suffix(req, "/v1/catalog/node/", "Missing node name")
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, NODE_SERVICE_FIELDS)

    def index_of(tables: Tables) -> int:
        return _node_index(tables, name, lookup_node(tables, name))

    def evaluate(tables: Tables) -> QueryResult:
        node = lookup_node(tables, name)
        index = _node_index(tables, name, node)
        if node is None:
            return QueryResult(index, None)
        if not authz.allowed("node", node["Node"], "read"):
            return QueryResult(index, None, True)
        services, filtered = _node_services(tables, authz, node, predicate)
        ordered = {s["ID"]: s for s in sorted(services, key=lambda s: s["ID"])}
        return QueryResult(index, {"Node": render.node(node), "Services": ordered}, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


@route("/v1/catalog/node-services/", "GET")
def catalog_node_services(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    name = path_suffix(req, "/v1/catalog/node-services/", "Missing node name")
    authz = resolve(api, opts)
    predicate = compile_filter(opts.filter, NODE_SERVICE_FIELDS)

    def index_of(tables: Tables) -> int:
        return _node_index(tables, name, lookup_node(tables, name))

    def evaluate(tables: Tables) -> QueryResult:
        node = lookup_node(tables, name)
        index = _node_index(tables, name, node)
        if node is None or index == 0:
            return QueryResult(index, {"Node": None, "Services": None})
        if not authz.allowed("node", node["Node"], "read"):
            return QueryResult(index, {"Node": None, "Services": None}, True)
        services, filtered = _node_services(tables, authz, node, predicate)
        return QueryResult(index, {"Node": render.node(node), "Services": services or None}, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate, index_of))


ROUTES: list[Route] = [
    catalog_register,
    catalog_deregister,
    catalog_datacenters,
    catalog_services,
    catalog_nodes,
    catalog_service,
    catalog_node,
    catalog_node_services,
]
