"""/v1/kv/*: reads (single, ?recurse, ?keys, ?raw), writes (?cas, ?acquire, ?release, ?flags), deletes.

Index rules follow Consul: a single existing key reports its own ModifyIndex (so a
watcher of one key is not woken by others), a missing key or an empty listing reports
the KV table index (kvs or tombstones, at least 1), and a listing reports the highest
index among its entries and the tombstones under its prefix. Missing keys are 404 with
an empty body but full query-meta headers.
"""

from __future__ import annotations

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import ApplyError, HTTPError, bad_request, server_error
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.query import QueryOptions, QueryResult, parse_options, resolve, run_query, set_meta
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.sessions import kv_cas, kv_delete, kv_delete_cas, kv_delete_tree, kv_lock, kv_set, kv_unlock
from bridge.testing.consul.state import Record, Tables
from bridge.testing.consul.wire import GoParseError, go_values_encode, parse_uint

KV_MAX_VALUE_SIZE = 512 * 1024


def _kv_table_index(tables: Tables) -> int:
    return tables.max_index("kvs", "tombstones")


def _prefix_index(tables: Tables, prefix: str, entries: list[Record]) -> int:
    """`kvsListTxn`: highest entry/tombstone under the prefix, else the table index."""
    table = _kv_table_index(tables)
    if prefix:
        local = max((e["ModifyIndex"] for e in entries), default=0)
        tomb = max((i for key, i in tables.tombstones.items() if key.startswith(prefix)), default=0)
        local = max(local, tomb)
    else:
        local = table
    return local or table


def _not_found(api: Api, opts: QueryOptions, authz: Authorizer, result: QueryResult) -> Response:
    response = Response(404)
    set_meta(api, response, opts, authz, result)
    return response


@route("/v1/kv/", "GET", "PUT", "DELETE")
def kv_endpoint(api: Api, req: Request) -> Response:
    opts = parse_options(req, api)
    key = req.path.removeprefix("/v1/kv/")
    if req.method == "GET":
        if req.has("keys"):
            return _get_keys(api, req, opts, key)
        return _get(api, req, opts, key)
    if req.method == "PUT":
        return _put(api, req, opts, key)
    return _delete(api, req, opts, key)


def _get(api: Api, req: Request, opts: QueryOptions, key: str) -> Response:
    recurse = req.has("recurse")
    if not recurse and not key:
        raise bad_request("Missing key name")
    authz = resolve(api, opts)
    if not recurse:
        authz.require("key", key, "read")

    def evaluate(tables: Tables) -> QueryResult:
        if recurse:
            entries = [tables.kvs[k] for k in sorted(tables.kvs) if k.startswith(key)]
            index = _prefix_index(tables, key, entries)
            visible = [e for e in entries if authz.allowed("key", e["Key"], "read")]
            return QueryResult(index, visible, len(visible) != len(entries))
        entry = tables.kvs.get(key)
        if entry is None:
            return QueryResult(_kv_table_index(tables), [])
        return QueryResult(entry["ModifyIndex"], [entry])

    result = run_query(api, req, opts, evaluate)
    if not result.value:
        return _not_found(api, opts, authz, result)
    if req.has("raw") and not recurse:
        value = result.value[0]["Value"] or b""
        response = Response(200, value)
        response.set_header("Content-Type", "text/plain")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("Content-Security-Policy", "sandbox")
    else:
        response = json_response(req, [render.kv_entry(e) for e in result.value])
    set_meta(api, response, opts, authz, result)
    return response


def _get_keys(api: Api, req: Request, opts: QueryOptions, prefix: str) -> Response:
    separator = req.get("seperator") if req.has("seperator") else ""
    if req.has("separator"):
        separator = req.get("separator")
    authz = resolve(api, opts)
    authz.require("key", prefix, "list")

    def evaluate(tables: Tables) -> QueryResult:
        entries = [tables.kvs[k] for k in sorted(tables.kvs) if k.startswith(prefix)]
        index = _prefix_index(tables, prefix, entries)
        keys: list[str] = []
        filtered = False
        for entry in entries:
            if not authz.allowed("key", entry["Key"], "read"):
                filtered = True
                continue
            name = entry["Key"]
            if separator:
                cut = name.find(separator, len(prefix))
                if cut >= 0:
                    name = name[: cut + len(separator)]
            if not keys or keys[-1] != name:
                keys.append(name)
        return QueryResult(index, keys, filtered)

    result = run_query(api, req, opts, evaluate)
    if not result.value and prefix:
        return _not_found(api, opts, authz, result)
    response = json_response(req, result.value)
    set_meta(api, response, opts, authz, result)
    return response


def _conflicting(req: Request, *flags: str) -> None:
    if sum(1 for flag in flags if req.has(flag)) > 1:
        raise bad_request(f"Conflicting flags: {go_values_encode(req.query)}")


def _uint_param(req: Request, name: str) -> int:
    try:
        return parse_uint(req.get(name))
    except GoParseError as exc:
        raise server_error(str(exc)) from None


def _lock_delayed(api: Api, key: str) -> bool:
    expiry = api.store.lock_delays.get(key)
    return expiry is not None and expiry > api.store.clock.now()


def _put(api: Api, req: Request, opts: QueryOptions, key: str) -> Response:
    if not key:
        raise bad_request("Missing key name")
    _conflicting(req, "cas", "acquire", "release")
    entry: Record = {"Key": key, "Flags": 0, "Value": None, "LockIndex": 0, "Session": ""}
    op = "set"
    if req.has("flags"):
        entry["Flags"] = _uint_param(req, "flags")
    cas_index = 0
    if req.has("cas"):
        cas_index = _uint_param(req, "cas")
        op = "cas"
    if req.has("acquire"):
        entry["Session"], op = req.get("acquire"), "lock"
    if req.has("release"):
        entry["Session"], op = req.get("release"), "unlock"
    if len(req.body) > KV_MAX_VALUE_SIZE:
        raise HTTPError(
            413,
            f"Request body({len(req.body)} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See "
            "https://www.consul.io/docs/agent/config/config-files#kv_max_value_size.",
        )
    entry["Value"] = req.body or None
    authz = resolve(api, opts)
    authz.require("key", key, "write")
    if op == "lock" and _lock_delayed(api, key):
        return json_response(req, False)
    try:
        with api.store.write() as txn:
            if op == "set":
                kv_set(txn, entry, update_session=False)
                ok = True
            elif op == "cas":
                ok = kv_cas(txn, entry, cas_index)
            elif op == "lock":
                ok = kv_lock(txn, entry)
            else:
                ok = kv_unlock(txn, entry)
    except ApplyError as exc:
        raise server_error(str(exc)) from None
    return json_response(req, ok)


def _delete(api: Api, req: Request, opts: QueryOptions, key: str) -> Response:
    _conflicting(req, "recurse", "cas")
    recurse = req.has("recurse")
    if not recurse and not key:
        raise bad_request("Missing key name")
    cas_index = _uint_param(req, "cas") if req.has("cas") else None
    authz = resolve(api, opts)
    authz.require("key", key, "write")
    with api.store.write() as txn:
        if recurse:
            kv_delete_tree(txn, key)
            ok = True
        elif cas_index is not None:
            ok = kv_delete_cas(txn, key, cas_index)
        else:
            kv_delete(txn, key)
            ok = True
    return json_response(req, ok)


ROUTES: list[Route] = [kv_endpoint]
