"""Query options shared by read endpoints, the blocking-query loop, and response metadata.

Mirrors Consul's `parse()` (dc, token, filter, consistency, wait/index, in that order),
`blockingquery.Query` and `setMeta`. The loop: no `index` (or 0) answers at once;
otherwise it re-checks after every commit and returns as soon as the query's own
index exceeds the client's, or when `wait` (default 5m, capped at 10m, plus up to
wait/16 jitter) runs out - returning the current index even if it is lower than the
client's. Waiting is a Condition wait; nothing polls.

Every commit wakes every blocked query (one Condition), where Consul's watch sets wake
only the queries whose data moved. To keep a wake that is not for us cheap, a woken
query first asks its endpoint's `index` function alone (when the endpoint gives one) and
goes back to waiting, without evaluating or rendering anything, while that index has not
passed the client's; and it never re-evaluates tables it has already evaluated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import Abort, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.state import Record, Tables
from bridge.testing.consul.wire import SECOND, GoParseError, go_quote, parse_duration, parse_uint


@dataclass
class QueryOptions:
    datacenter: str
    token: str
    token_source: str | None
    filter: str
    consistency: str  # "leader", "stale" or "consistent"
    min_index: int
    wait_ns: int


@dataclass
class QueryResult:
    """What one evaluation of a read produced."""

    index: int
    value: Any
    filtered: bool = False


def request_token(req: Request) -> tuple[str, str | None]:
    """`parseTokenInternal`: ?token, then X-Consul-Token, then Authorization: Bearer."""
    token = req.get("token")
    if token:
        return token, "query"
    token = req.header("X-Consul-Token")
    if token:
        return token, "header"
    auth = req.header("Authorization")
    parts = auth.split(" ")
    if len(parts) > 1 and parts[0].lower() == "bearer":
        value = " ".join(parts[1:]).strip().split(" ")[0].strip()
        if value:
            return value, "bearer"
    return "", None


def parse_options(req: Request, api: Api) -> QueryOptions:
    """Consul's `parse()`: consistency errors first, then wait, then index."""
    datacenter = req.get("dc") or api.config.datacenter
    token, source = request_token(req)
    stale = req.has("stale")
    consistent = req.has("consistent")
    max_stale = req.get("max_stale")
    if max_stale:
        try:
            if parse_duration(max_stale) > 0:
                stale = True
        except GoParseError:
            raise bad_request(f"Invalid max_stale value {go_quote(max_stale)}") from None
    if stale and consistent:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if req.has("cached") and consistent:
        raise bad_request("Cannot specify ?cached with ?consistent, conflicting semantics.")
    wait_ns = 0
    if req.get("wait"):
        try:
            wait_ns = parse_duration(req.get("wait"))
        except GoParseError:
            raise bad_request("Invalid wait time") from None
    min_index = 0
    if req.get("index"):
        try:
            min_index = parse_uint(req.get("index"))
        except GoParseError:
            raise bad_request("Invalid index") from None
    consistency = "consistent" if consistent else "stale" if stale else "leader"
    return QueryOptions(datacenter, token, source, req.get("filter"), consistency, min_index, wait_ns)


def require_datacenter(api: Api, datacenter: str | None) -> None:
    """Another datacenter ("" means ours) would be forwarded over the WAN; the fake knows no other."""
    if (datacenter or api.config.datacenter) != api.config.datacenter:
        raise server_error("No path to datacenter")


def resolve(api: Api, opts: QueryOptions) -> Authorizer:
    require_datacenter(api, opts.datacenter)
    return api.acl.resolve(opts.token)


def query_timeout(api: Api, wait_ns: int) -> float:
    """Effective blocking time in seconds: default, cap, then uniform jitter up to 1/16."""
    timeout = wait_ns
    if timeout > api.config.max_query_time_ns:
        timeout = api.config.max_query_time_ns
    elif timeout <= 0:
        timeout = api.config.default_query_time_ns
    seconds = timeout / SECOND
    if api.config.jitter:
        seconds += random.uniform(0, seconds / 16)
    return seconds


def run_query(
    api: Api,
    req: Request,
    opts: QueryOptions,
    evaluate: Callable[[Tables], QueryResult],
    index: Callable[[Tables], int] | None = None,
) -> QueryResult:
    """Evaluate a read, blocking per the options. `evaluate` runs under the store lock.

    `index`, if given, must return exactly the index `evaluate` would report for the same
    tables (endpoints build `evaluate` on top of it), only cheaper: no rendering.
    """
    store, faults = api.store, api.faults
    with store.cond:
        evaluated = store.tables
        result = _evaluate(evaluated, evaluate)
        if opts.min_index == 0 or result.index > opts.min_index:
            return result
        clock = store.clock
        started = clock.now()
        deadline = started + query_timeout(api, opts.wait_ns)
        drop_generation = faults.drop_generation
        while True:
            if store.closing or req.conn.closed or faults.drop_generation != drop_generation:
                raise Abort()
            now = clock.now()
            drop_after = faults.drop_blocking_after
            if drop_after is not None and now - started >= drop_after:
                raise Abort()
            remaining = deadline - now
            if remaining <= 0:
                # Answer from the current tables, as if every wake had re-evaluated.
                if store.tables is not evaluated:
                    result = _evaluate(store.tables, evaluate)
                return result
            if drop_after is not None:
                remaining = min(remaining, started + drop_after - now)
            clock.wait(store.cond, remaining)
            tables = store.tables
            # Committed tables are never modified in place: the same object means no commit.
            if tables is evaluated:
                continue
            if index is not None and max(index(tables), 1) <= opts.min_index:
                continue
            evaluated = tables
            result = _evaluate(tables, evaluate)
            if result.index > opts.min_index:
                return result


def _evaluate(tables: Tables, evaluate: Callable[[Tables], QueryResult]) -> QueryResult:
    result = evaluate(tables)
    if result.index < 1:
        # Never report 0: a client echoing index=0 would never block and would spin.
        result.index = 1
    return result


def set_meta(api: Api, response: Response, opts: QueryOptions, authz: Authorizer, result: QueryResult) -> None:
    """`setMeta`: index (>= 1), leader knowledge, last contact, consistency, ACL filtering."""
    response.set_header("X-Consul-Index", str(max(result.index, 1)))
    set_leader_meta(api, response)
    response.set_header("X-Consul-Effective-Consistency", opts.consistency)
    if result.filtered and authz.supplied:
        response.set_header("X-Consul-Results-Filtered-By-ACLs", "true")


def set_leader_meta(api: Api, response: Response) -> None:
    response.set_header("X-Consul-KnownLeader", "true" if api.faults.known_leader else "false")
    response.set_header("X-Consul-LastContact", str(api.faults.last_contact_ms))


def respond(api: Api, req: Request, opts: QueryOptions, authz: Authorizer, result: QueryResult) -> Response:
    """A JSON query response with the full set of query-meta headers."""
    response = json_response(req, result.value)
    set_meta(api, response, opts, authz, result)
    return response


def path_suffix(req: Request, prefix: str, missing: str) -> str:
    """What follows an endpoint's prefix (`/v1/catalog/node/<name>`); 400 `missing` if nothing does."""
    value = req.path.removeprefix(prefix)
    if not value:
        raise bad_request(missing)
    return value


def node_meta_filters(req: Request) -> dict[str, str]:
    """`parseMetaFilter`: repeatable ?node-meta=key:value (a missing colon means value "")."""
    filters: dict[str, str] = {}
    for raw in req.query.get("node-meta", []):
        key, _, value = raw.partition(":")
        filters[key] = value
    return filters


def satisfies_meta(meta: dict[str, str] | None, filters: dict[str, str]) -> bool:
    meta = meta or {}
    return all(key in meta and meta[key] == value for key, value in filters.items())


def readable_instances(
    tables: Tables, instances: list[Record], meta: dict[str, str], authz: Authorizer
) -> tuple[list[tuple[Record, Record]], bool]:
    """Service instances on nodes that pass ?node-meta and whose node and service the token
    may read, each with its node; and whether ACLs hid any."""
    visible = []
    filtered = False
    for service in instances:
        node = tables.nodes[service["Node"].lower()]
        if meta and not satisfies_meta(node["Meta"], meta):
            continue
        if not (
            authz.allowed("node", node["Node"], "read") and authz.allowed("service", service["ServiceName"], "read")
        ):
            filtered = True
            continue
        visible.append((service, node))
    return visible, filtered
