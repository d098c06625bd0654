"""/v1/session/*: create, renew, destroy, info, list and per-node listing.

Creation follows Consul's defaults (agent node, serfHealth node check, 15s lock delay,
"release" behavior) and its validation order: Session.Apply checks Node, Behavior and
TTL bounds, then the state store requires the node and every check to exist and not be
critical. Errors there are plain 500s, e.g. `Missing node registration`.
"""

from __future__ import annotations

import uuid

from bridge.testing.consul import render
from bridge.testing.consul.context import Api
from bridge.testing.consul.decode import SESSION, decode_request
from bridge.testing.consul.errors import ApplyError, HTTPError, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.query import (
    QueryResult,
    parse_options,
    path_suffix,
    request_token,
    require_datacenter,
    resolve,
    respond,
    run_query,
)
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.sessions import SERF_CHECK_ID, delete_session, session_check_ids
from bridge.testing.consul.state import Record, Tables
from bridge.testing.consul.wire import SECOND, GoParseError, format_duration, parse_duration

_LOCK_DELAY_MIN_THRESHOLD = 1000


def _lock_delay(raw: object) -> int:
    """Session.UnmarshalJSON: a duration string or a number; small numbers mean seconds."""
    if isinstance(raw, str):
        try:
            delay = parse_duration(raw)
        except GoParseError as exc:
            raise bad_request(f"Request decode failed: {exc}") from None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        delay = int(raw)
    else:
        delay = 0
    if delay < _LOCK_DELAY_MIN_THRESHOLD:
        delay *= SECOND
    return delay


def _session_from_body(api: Api, body: Record) -> Record:
    session: Record = {
        "ID": "",
        "Name": body.get("Name", ""),
        "Node": body.get("Node", api.config.node_name),
        "LockDelay": 15 * SECOND,
        "Behavior": body.get("Behavior", "release"),
        "TTL": body.get("TTL", ""),
        "NodeChecks": body["NodeChecks"] if "NodeChecks" in body else [SERF_CHECK_ID],
        "ServiceChecks": body.get("ServiceChecks"),
        "Checks": body["Checks"] if "Checks" in body else [SERF_CHECK_ID],
    }
    if "LockDelay" in body and body["LockDelay"] is not None:
        session["LockDelay"] = _lock_delay(body["LockDelay"])
    # fixupEmptySessionChecks: the deprecated Checks field and NodeChecks interact.
    checks = session["Checks"] or []
    if not checks:
        session["NodeChecks"], session["Checks"] = [], None
    elif checks == [SERF_CHECK_ID]:
        session["Checks"] = None
    elif not session["NodeChecks"]:
        session["Checks"] = None
    return session


def _validate(api: Api, session: Record) -> float:
    """Session.Apply's checks; returns the TTL in seconds (0 for none)."""
    if session["Behavior"] == "":
        session["Behavior"] = "release"
    if session["Behavior"] not in ("release", "delete"):
        raise server_error(f"Invalid Behavior setting '{session['Behavior']}'")
    ttl_ns = 0
    if session["TTL"]:
        try:
            ttl_ns = parse_duration(session["TTL"])
        except GoParseError as exc:
            raise server_error(f"Session TTL '{session['TTL']}' invalid: {exc}") from None
        low, high = api.config.session_ttl_min_ns, api.config.session_ttl_max_ns
        if ttl_ns != 0 and not low <= ttl_ns <= high:
            raise server_error(
                f"Invalid Session TTL '{ttl_ns}', must be between [{format_duration(low)}={format_duration(high)}]"
            )
    return ttl_ns / SECOND


def _check_session_checks(tables: Tables, session: Record) -> None:
    """`validateSessionChecksTxn`: every check must exist on the node and not be critical."""
    for check_id in session_check_ids(session):
        check = tables.checks.get((session["Node"].lower(), check_id.lower()))
        if check is None:
            raise ApplyError(f"Missing check '{check_id}' registration")
        if check["Status"] == "critical":
            raise ApplyError(f"Check '{check_id}' is in critical state")


@route("/v1/session/create", "PUT")
def session_create(api: Api, req: Request) -> Response:
    body: Record = decode_request(req.body, SESSION) if req.body else {}
    session = _session_from_body(api, body)
    token, _ = request_token(req)
    require_datacenter(api, req.get("dc"))
    if not session["Node"]:
        raise server_error("Must provide Node")
    authz = api.acl.resolve(token)
    authz.require("session", session["Node"], "write")
    ttl_s = _validate(api, session)
    session["ID"] = str(uuid.uuid4())
    try:
        with api.store.write() as txn:
            if session["Node"].lower() not in txn.tables.nodes:
                raise ApplyError("Missing node registration")
            _check_session_checks(txn.tables, session)
            record = {**session, "CreateIndex": txn.idx, "ModifyIndex": txn.idx}
            txn.tables.sessions[session["ID"]] = record
            txn.tables.bump("sessions", txn.idx)
    except ApplyError as exc:
        raise server_error(str(exc)) from None
    if ttl_s > 0:
        api.session_timers.reset(session["ID"], ttl_s)
    return json_response(req, {"ID": session["ID"]})


def expire_session(api: Api, session_id: str) -> None:
    """Invalidate a session whose TTL ran out (called by the TTL timer thread)."""
    with api.store.write() as txn:
        delete_session(txn, session_id, api.store.lock_delays)


@route("/v1/session/destroy/", "PUT")
def session_destroy(api: Api, req: Request) -> Response:
    session_id = path_suffix(req, "/v1/session/destroy/", "Missing session")
    token, _ = request_token(req)
    authz = api.acl.resolve(token)
    with api.store.lock:
        existing = api.store.tables.sessions.get(session_id.lower())
    if existing is not None:
        authz.require("session", existing["Node"], "write")
    with api.store.write() as txn:
        delete_session(txn, session_id, api.store.lock_delays)
    api.session_timers.cancel(session_id.lower())
    return json_response(req, True)


@route("/v1/session/renew/", "PUT")
def session_renew(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    session_id = path_suffix(req, "/v1/session/renew/", "Missing session")
    authz = resolve(api, opts)
    with api.store.lock:
        session = api.store.tables.sessions.get(session_id.lower())
    if session is None:
        raise HTTPError(404, f"Session id '{session_id}' not found")
    authz.require("session", session["Node"], "write")
    if session["TTL"]:
        ttl_ns = parse_duration(session["TTL"])
        if ttl_ns > 0:
            api.session_timers.reset(session["ID"], ttl_ns / SECOND)
    return json_response(req, [render.session(session)])


def _session_listing(api: Api, req: Request, select: str) -> Response:
    opts = parse_options(req, api)
    missing = {"info": "Missing session", "node": "Missing node name"}
    value = path_suffix(req, f"/v1/session/{select}/", missing[select]) if select in missing else ""
    authz = resolve(api, opts)

    def evaluate(tables: Tables) -> QueryResult:
        out = []
        filtered = False
        for sid in sorted(tables.sessions):
            session = tables.sessions[sid]
            if select == "info" and sid != value.lower():
                continue
            if select == "node" and session["Node"].lower() != value.lower():
                continue
            if not authz.allowed("session", session["Node"], "read"):
                filtered = True
                continue
            out.append(render.session(session))
        return QueryResult(tables.max_index("sessions"), out, filtered)

    return respond(api, req, opts, authz, run_query(api, req, opts, evaluate))


@route("/v1/session/info/", "GET")
def session_info(api: Api, req: Request) -> Response:
    return _session_listing(api, req, "info")


@route("/v1/session/node/", "GET")
def session_node(api: Api, req: Request) -> Response:
    return _session_listing(api, req, "node")


@route("/v1/session/list", "GET")
def session_list(api: Api, req: Request) -> Response:
    return _session_listing(api, req, "list")


ROUTES: list[Route] = [session_create, session_destroy, session_renew, session_info, session_node, session_list]
