"""The `/_admin/...` HTTP API: fault injection and inspection for out-of-process tests.

Real Consul has nothing under `/_admin`, so these paths can never collide with the API
being emulated. They are not logged, never faulted (except by an outage, which closes
everything) and need no token. Bodies and answers are JSON:

    GET    /_admin/requests[?since=n]            the request log (from its n-th record on)
    DELETE /_admin/requests                      clear it
    GET    /_admin/faults                        current fault settings
    PUT    /_admin/faults/error                  {"status", "body", "count", "path_prefix", "methods"}
    PUT    /_admin/faults/no-leader              {"count"}
    PUT    /_admin/faults/rate-limit             {"count", "retry_after"}
    PUT    /_admin/faults/slow                   {"seconds", "path_prefix"}
    PUT    /_admin/faults/known-leader           {"known", "last_contact_ms"}
    PUT    /_admin/faults/drop-blocking          {"after": seconds or null}; empty body = drop now
    PUT    /_admin/faults/outage                 {"seconds"} (required: the listener is closed)
    PUT    /_admin/faults/clear
    GET    /_admin/state/index                   {"Index": n}
    GET    /_admin/state/node/<node>             {"Index": n, "Services": instances on the node}
    PUT    /_admin/state/reset-index             {"index": n}
    PUT    /_admin/anti-entropy                  run one full agent anti-entropy pass
    PUT    /_admin/load                          a list of catalog register bodies
    PUT    /_admin/acl/token                     {"SecretID", "AccessorID", "Policy", "Management"}
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from bridge.testing.consul.context import Api
from bridge.testing.consul.loader import load_registrations
from bridge.testing.consul.protocol import Request, Response, text_response
from bridge.testing.consul.wire import dumps

PREFIX = "/_admin/"


class AdminError(Exception):
    pass


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, dumps(obj), [("Content-Type", "application/json")])


def _body(req: Request) -> dict[str, Any]:
    if not req.body.strip():
        return {}
    try:
        value = json.loads(req.body)
    except ValueError as exc:
        raise AdminError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict | list):
        raise AdminError("expected a JSON object")
    return value if isinstance(value, dict) else {"items": value}


def handle_admin(api: Api, req: Request) -> Response:
    try:
        return _route(api, req)
    except (AdminError, ValueError, KeyError, TypeError) as exc:
        return text_response(400, str(exc))


def _route(api: Api, req: Request) -> Response:
    path, method = req.path.removeprefix(PREFIX), req.method
    faults = api.faults
    if path == "requests" and method == "GET":
        since = int(req.get("since") or 0)
        if since < 0:
            raise AdminError("since must be >= 0")
        return _json([asdict(r) for r in api.requests.records()[since:]])
    if path == "requests" and method == "DELETE":
        api.requests.clear()
        return _json(True)
    if path == "faults" and method == "GET":
        return _json(faults.describe())
    if path == "state/index" and method == "GET":
        return _json({"Index": api.store.index})
    if path.startswith("state/node/") and method == "GET":
        # A count without rendering the node's records (cheap to poll, unlike /v1).
        node = path.removeprefix("state/node/")
        with api.store.lock:
            count = len(api.store.tables.services_by_node.get(node.lower()))
            return _json({"Index": api.store.index, "Services": count})
    if method != "PUT":
        return text_response(404, f"unknown admin endpoint {method} {req.path}")
    body = _body(req)
    if path == "faults/error":
        faults.fail_requests(
            int(body["status"]),
            str(body.get("body", "")),
            count=body.get("count"),
            path_prefix=body.get("path_prefix", "/v1/"),
            methods=body.get("methods"),
        )
    elif path == "faults/no-leader":
        faults.no_leader(count=body.get("count"))
    elif path == "faults/rate-limit":
        faults.rate_limit(count=body.get("count"), retry_after=body.get("retry_after"))
    elif path == "faults/slow":
        faults.slow(float(body.get("seconds", 0)), path_prefix=body.get("path_prefix", "/v1/"))
    elif path == "faults/known-leader":
        faults.set_known_leader(bool(body.get("known", True)), last_contact_ms=int(body.get("last_contact_ms", 0)))
    elif path == "faults/drop-blocking":
        if "after" in body:
            faults.drop_blocking_queries_after(body["after"])
        else:
            faults.drop_blocking_queries()
    elif path == "faults/outage":
        if "seconds" not in body:
            raise AdminError('outage over HTTP needs {"seconds": n}: nothing could reach us to recover')
        seconds = float(body["seconds"])
        response = _json(True)
        response.on_sent = lambda: faults.outage(seconds)
        return response
    elif path == "faults/clear":
        faults.clear()
    elif path == "state/reset-index":
        faults.reset_index(int(body["index"]))
    elif path == "anti-entropy":
        api.agent.anti_entropy()
    elif path == "load":
        return _json({"Loaded": load_registrations(api, body.get("items", []))})
    elif path == "acl/token":
        token = api.acl.create_token(
            body.get("Policy") or {},
            secret_id=body.get("SecretID"),
            accessor_id=body.get("AccessorID"),
            management=bool(body.get("Management", False)),
        )
        return _json({"SecretID": token.secret_id, "AccessorID": token.accessor_id})
    else:
        return text_response(404, f"unknown admin endpoint {method} {req.path}")
    return _json(True)
