"""/v1/status/*: the Raft leader and peers as this single-server "cluster" reports them."""

from __future__ import annotations

from bridge.testing.consul.context import Api
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.router import Route, route

RAFT_PORT = 8300


@route("/v1/status/leader", "GET")
def status_leader(api: Api, req: Request) -> Response:
    # With no known leader Consul answers an empty string, not an error.
    leader = f"{api.config.node_address}:{RAFT_PORT}" if api.faults.known_leader else ""
    return json_response(req, leader)


@route("/v1/status/peers", "GET")
def status_peers(api: Api, req: Request) -> Response:
    return json_response(req, [f"{api.config.node_address}:{RAFT_PORT}"])


ROUTES: list[Route] = [status_leader, status_peers]
