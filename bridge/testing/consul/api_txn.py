"""/v1/txn: atomic multi-operation transactions over KV, nodes, services and checks.

Mirrors agent/txn_endpoint.go, agent/consul/txn_endpoint.go and state/txn.go: the body
is a list of `{"KV"|"Node"|"Service"|"Check": {...}}`; a body over `txn_max_req_len` or
more than the configured number of operations is 413; every operation is pre-checked
(validation + ACL) and then applied in one state transaction; any failure rolls back
everything and answers 409 with
`{"Results": null, "Errors": [{"OpIndex", "What"}]}`. A transaction with no writes takes
Consul's read-only path, whose response also carries the QueryMeta fields.

Consul quirks kept on purpose: Service ops ignore `TaggedAddresses` and need the
service *name* even to delete; Check ops drop `Type`; deletes produce no result entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.testing.consul import render
from bridge.testing.consul.acl import Authorizer
from bridge.testing.consul.catalog import service_from_node_service
from bridge.testing.consul.context import Api
from bridge.testing.consul.decode import TXN_OP, DecodeError, decode_list, parse_json
from bridge.testing.consul.errors import ApplyError, HTTPError, bad_request
from bridge.testing.consul.protocol import Request, Response, json_response
from bridge.testing.consul.query import parse_options, request_token, require_datacenter, resolve, set_leader_meta
from bridge.testing.consul.router import Route, route
from bridge.testing.consul.sessions import kv_cas, kv_delete, kv_delete_cas, kv_delete_tree, kv_lock, kv_set, kv_unlock
from bridge.testing.consul.state import Record, Tables, WriteTxn, cas_allows, index_matches
from bridge.testing.consul.validation import is_any_address, validate_node_id
from bridge.testing.consul.wire import go_quote

KV_MAX_VALUE_SIZE = 512 * 1024
_KV_WRITES = {"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"}
_CATALOG_VERBS = {"get", "set", "cas", "delete", "delete-cas"}


@dataclass
class Op:
    kind: str  # "KV", "Node", "Service" or "Check"
    verb: str
    data: Record
    node: str = ""  # Service ops name their node separately

    @property
    def is_write(self) -> bool:
        return self.verb in _KV_WRITES if self.kind == "KV" else self.verb != "get"


class _TxnFailed(ApplyError):
    def __init__(self, errors: list[Record]) -> None:
        super().__init__("transaction failed")
        self.errors = errors


def _convert(api: Api, decoded: list[Record]) -> list[Op]:
    """`convertOps`: pick the op type (KV, Node, Service, Check - first present wins)."""
    ops: list[Op] = []
    for item in decoded:
        if item.get("KV") is not None:
            kv = item["KV"]
            value = kv.get("Value")
            if value is not None and len(value) > KV_MAX_VALUE_SIZE:
                raise HTTPError(
                    413,
                    f"Value for key {go_quote(kv.get('Key', ''))} is too large "
                    f"({len(value)} > {KV_MAX_VALUE_SIZE} bytes)",
                )
            entry = {
                "Key": kv.get("Key", ""),
                "Value": value,
                "Flags": kv.get("Flags", 0),
                "Session": kv.get("Session", ""),
                "LockIndex": 0,
                "ModifyIndex": kv.get("Index", 0),
            }
            ops.append(Op("KV", kv.get("Verb", ""), entry))
        elif item.get("Node") is not None:
            op = item["Node"]
            node = op.get("Node") or {}
            record = {
                "ID": node.get("ID", ""),
                "Node": node.get("Node", ""),
                "Address": node.get("Address", ""),
                "Datacenter": node.get("Datacenter") or api.config.datacenter,
                "TaggedAddresses": node.get("TaggedAddresses"),
                "Meta": node.get("Meta"),
                "ModifyIndex": node.get("ModifyIndex", 0),
            }
            ops.append(Op("Node", op.get("Verb", ""), record))
        elif item.get("Service") is not None:
            op = item["Service"]
            svc = op.get("Service") or {}
            weights = svc.get("Weights") or {}
            ns = {
                "ID": svc.get("ID", ""),
                "Service": svc.get("Service", ""),
                "Kind": svc.get("Kind", ""),
                "Tags": svc.get("Tags"),
                "Address": svc.get("Address", ""),
                "Meta": svc.get("Meta"),
                "Port": svc.get("Port", 0),
                # api.AgentService.Weights is not a pointer: absent means {0, 0}.
                "Weights": {"Passing": weights.get("Passing", 0), "Warning": weights.get("Warning", 0)},
                "EnableTagOverride": svc.get("EnableTagOverride", False),
                "Proxy": svc.get("Proxy"),
                "ModifyIndex": svc.get("ModifyIndex", 0),
            }
            ops.append(Op("Service", op.get("Verb", ""), ns, node=op.get("Node", "")))
        elif item.get("Check") is not None:
            op = item["Check"]
            check = op.get("Check") or {}
            definition = {
                k: v
                for k, v in (check.get("Definition") or {}).items()
                if k in ("HTTP", "TLSServerName", "TLSSkipVerify", "Header", "Method", "Body", "TCP", "GRPC",
                         "GRPCUseTLS", "OSService", "Interval", "Timeout", "DeregisterCriticalServiceAfter")
            }  # fmt: skip
            record = {
                "Node": check.get("Node", ""),
                "CheckID": check.get("CheckID", ""),
                "Name": check.get("Name", ""),
                "Status": check.get("Status", ""),
                "Notes": check.get("Notes", ""),
                "Output": check.get("Output", ""),
                "ServiceID": check.get("ServiceID", ""),
                "ServiceName": check.get("ServiceName", ""),
                "ServiceTags": check.get("ServiceTags"),
                "Type": "",
                "Interval": "",
                "Timeout": "",
                "ExposedPort": check.get("ExposedPort", 0),
                "Definition": definition,
                "ModifyIndex": check.get("ModifyIndex", 0),
            }
            ops.append(Op("Check", op.get("Verb", ""), record))
        # An entry with none of the four keys is dropped, as convertOps does.
    return ops


# ---------------------------------------------------------------------------
# preCheck: validation and ACLs before anything is applied
# ---------------------------------------------------------------------------


def _precheck(api: Api, tables: Tables, authz: Authorizer, ops: list[Op]) -> list[Record]:
    errors: list[Record] = []
    for index, op in enumerate(ops):
        try:
            _precheck_one(api, tables, authz, op)
        except (ValueError, HTTPError) as exc:
            text = exc.body if isinstance(exc, HTTPError) else str(exc)
            errors.append({"OpIndex": index, "What": text})
    return errors


def _precheck_one(api: Api, tables: Tables, authz: Authorizer, op: Op) -> None:
    data = op.data
    if op.kind == "KV":
        key = data["Key"]
        if op.verb == "delete-tree":
            authz.require("key", key, "write")
        elif op.verb in ("get", "get-tree"):
            pass  # filtered on the way out instead
        elif op.verb in ("check-session", "check-index"):
            authz.require("key", key, "read")
        else:
            authz.require("key", key, "write")
        if op.verb == "lock":
            expiry = api.store.lock_delays.get(key)
            if expiry is not None and expiry > api.store.clock.now():
                raise ValueError(f"failed to lock key {go_quote(key)} due to lock delay")
        return
    if op.verb not in _CATALOG_VERBS:
        raise ValueError(f"unknown {op.kind.lower()} operation: {op.verb}")
    if op.verb == "get":
        return
    if op.kind == "Node":
        if not data["Node"]:
            raise ValueError("Must provide node")
        validate_node_id(data["ID"])
        existing = None
        if data["ID"]:
            existing = next((n for n in tables.nodes.values() if n["ID"].lower() == data["ID"].lower()), None)
        if existing is not None:
            authz.require("node", existing["Node"], "write")
            if existing["Node"].lower() != data["Node"].lower():
                authz.require("node", data["Node"], "write")
        else:
            authz.require("node", data["Node"], "write")
    elif op.kind == "Service":
        if not data["ID"] and data["Service"]:
            data["ID"] = data["Service"]
        if data["ID"] and not data["Service"]:
            raise ValueError("Must provide service name (Service.Service) when service ID is provided")
        if is_any_address(data["Address"]):
            raise ValueError("Invalid service address")
        existing = tables.services.get((op.node.lower(), data["ID"].lower()))
        if existing is not None and existing["ServiceName"] != data["Service"]:
            raise ValueError(
                f"service name does not match existing service name for service ID {go_quote(data['ID'])} "
                f"on node {go_quote(op.node)}"
            )
        authz.require("service", data["Service"], "write")
    else:
        if not data["CheckID"] and data["Name"]:
            data["CheckID"] = data["Name"]
        subject = tables.checks.get((data["Node"].lower(), data["CheckID"].lower())) or data
        if not subject["ServiceID"]:
            authz.require("node", subject["Node"], "write")
            return
        service = tables.services.get((subject["Node"].lower(), subject["ServiceID"].lower()))
        if service is not None:
            authz.require("service", service["ServiceName"], "write")
        elif not subject["ServiceName"]:
            raise ValueError(
                f"unknown service ID {go_quote(subject['ServiceID'])} for check ID {go_quote(subject['CheckID'])}"
            )
        else:
            authz.require("service", subject["ServiceName"], "write")


# ---------------------------------------------------------------------------
# Dispatch: apply each operation inside one state transaction
# ---------------------------------------------------------------------------

Result = tuple[str, Record]


def _dispatch(api: Api, txn: WriteTxn, ops: list[Op]) -> tuple[list[Result], list[Record]]:
    results: list[Result] = []
    errors: list[Record] = []
    handlers: dict[str, Callable[[Api, WriteTxn, Op], list[Result]]] = {
        "KV": _kv_op,
        "Node": _node_op,
        "Service": _service_op,
        "Check": _check_op,
    }
    for index, op in enumerate(ops):
        try:
            results.extend(handlers[op.kind](api, txn, op))
        except ApplyError as exc:
            errors.append({"OpIndex": index, "What": str(exc)})
        except ValueError as exc:
            errors.append({"OpIndex": index, "What": str(exc)})
    return results, errors


def _kv_op(api: Api, txn: WriteTxn, op: Op) -> list[Result]:
    tables, data, verb = txn.tables, op.data, op.verb
    key = data["Key"]
    quoted = go_quote(key)
    entry = {k: data[k] for k in ("Key", "Value", "Flags", "Session", "LockIndex")}
    written: Record | None = None
    if verb == "set":
        written = kv_set(txn, entry, update_session=False)
    elif verb == "delete":
        kv_delete(txn, key)
    elif verb == "delete-cas":
        if not kv_delete_cas(txn, key, data["ModifyIndex"]):
            raise ApplyError(f"failed to delete key {quoted}, index is stale")
    elif verb == "delete-tree":
        kv_delete_tree(txn, key)
    elif verb == "cas":
        if not kv_cas(txn, entry, data["ModifyIndex"]):
            raise ApplyError(f"failed to set key {quoted}, index is stale")
        written = tables.kvs[key]
    elif verb == "lock":
        if not kv_lock(txn, entry):
            raise ApplyError(f"failed to lock key {quoted}, lock is already held")
        written = tables.kvs[key]
    elif verb == "unlock":
        if not kv_unlock(txn, entry):
            raise ApplyError(f"failed to unlock key {quoted}, lock isn't held, or is held by another session")
        written = tables.kvs[key]
    elif verb == "get":
        found = tables.kvs.get(key)
        if found is None:
            raise ApplyError(f"key {quoted} doesn't exist")
        return [("KV", render.kv_entry(found))]
    elif verb == "get-tree":
        return [("KV", render.kv_entry(tables.kvs[k])) for k in sorted(tables.kvs) if k.startswith(key)]
    elif verb == "check-session":
        found = tables.kvs.get(key)
        if found is None:
            raise ApplyError(f"failed to check session, key {quoted} doesn't exist")
        if found["Session"] != data["Session"]:
            raise ApplyError(
                f"failed session check for key {quoted}, current session {go_quote(found['Session'])} "
                f"!= {go_quote(data['Session'])}"
            )
        written = found
    elif verb == "check-index":
        found = tables.kvs.get(key)
        if found is None:
            raise ApplyError(f"failed to check index, key {quoted} doesn't exist")
        if found["ModifyIndex"] != data["ModifyIndex"]:
            raise ApplyError(
                f"failed index check for key {quoted}, "
                f"current modify index {found['ModifyIndex']} != {data['ModifyIndex']}"
            )
        written = found
    elif verb == "check-not-exists":
        if key in tables.kvs:
            raise ApplyError(f"key {quoted} exists")
    else:
        raise ApplyError(f"unknown KV verb {go_quote(verb)}")
    if written is None:
        return []
    return [("KV", render.kv_entry(written, with_value=False))]


def _node_op(api: Api, txn: WriteTxn, op: Op) -> list[Result]:
    tables, data, verb = txn.tables, op.data, op.verb
    name = data["Node"]

    def current() -> Record | None:
        if data["ID"]:
            return next((n for n in tables.nodes.values() if n["ID"].lower() == data["ID"].lower()), None)
        return tables.nodes.get(name.lower())

    node = {k: v for k, v in data.items() if k != "ModifyIndex"}
    if verb == "get":
        found = current()
        if found is None:
            raise ApplyError(f"node {go_quote(name)} doesn't exist")
        return [("Node", render.node(found))]
    if verb == "set":
        api.catalog.ensure_node(txn, node)
    elif verb == "cas":
        if not cas_allows(tables.nodes.get(name.lower()), data["ModifyIndex"]):
            raise ApplyError(f"failed to set node {go_quote(name)}, index is stale")
        api.catalog.ensure_node(txn, node)
    elif verb == "delete":
        api.catalog.delete_node(txn, name)
        return []
    else:
        if not index_matches(tables.nodes.get(name.lower()), data["ModifyIndex"]):
            raise ApplyError(f"failed to delete node {go_quote(name)}, index is stale")
        api.catalog.delete_node(txn, name)
        return []
    found = current()
    return [("Node", render.node(found))] if found is not None else []


def _service_op(api: Api, txn: WriteTxn, op: Op) -> list[Result]:
    tables, data, verb, node = txn.tables, op.data, op.verb, op.node
    key = (node.lower(), data["ID"].lower())
    quoted_id, quoted_node = go_quote(data["ID"]), go_quote(node)
    if verb == "get":
        found = tables.services.get(key)
        if found is None:
            raise ApplyError(f"service {quoted_id} on node {quoted_node} doesn't exist")
        return [("Service", render.node_service(found, tags_never_null=False))]
    if verb in ("set", "cas"):
        if verb == "cas" and not cas_allows(tables.services.get(key), data["ModifyIndex"]):
            raise ApplyError(f"failed to set service {quoted_id} on node {quoted_node}, index is stale")
        api.catalog.ensure_service(txn, node, service_from_node_service(data))
        return [("Service", render.node_service(tables.services[key], tags_never_null=False))]
    if verb == "delete":
        api.catalog.delete_service(txn, node, data["ID"])
        return []
    if not index_matches(tables.services.get(key), data["ModifyIndex"]):
        raise ApplyError(f"failed to delete service {quoted_id} on node {quoted_node}, index is stale")
    api.catalog.delete_service(txn, node, data["ID"])
    return []


def _check_op(api: Api, txn: WriteTxn, op: Op) -> list[Result]:
    tables, data, verb = txn.tables, op.data, op.verb
    key = (data["Node"].lower(), data["CheckID"].lower())
    quoted_id, quoted_node = go_quote(data["CheckID"]), go_quote(data["Node"])
    check = {k: v for k, v in data.items() if k != "ModifyIndex"}
    if verb == "get":
        found = tables.checks.get(key)
        if found is None:
            raise ApplyError(f"check {quoted_id} on node {quoted_node} doesn't exist")
        return [("Check", render.health_check(found, tags_never_null=False))]
    if verb in ("set", "cas"):
        if verb == "cas" and not cas_allows(tables.checks.get(key), data["ModifyIndex"]):
            raise ApplyError(f"failed to set check {quoted_id} on node {quoted_node}, index is stale")
        api.catalog.ensure_check(txn, check)
        return [("Check", render.health_check(tables.checks[key], tags_never_null=False))]
    if verb == "delete":
        api.catalog.delete_check(txn, data["Node"], data["CheckID"])
        return []
    if not index_matches(tables.checks.get(key), data["ModifyIndex"]):
        raise ApplyError(f"failed to delete check {quoted_id} on node {quoted_node}, index is stale")
    api.catalog.delete_check(txn, data["Node"], data["CheckID"])
    return []


def _visible(authz: Authorizer, result: Result) -> bool:
    """`FilterTxnResults`: drop results the token may not read."""
    kind, body = result
    if kind == "KV":
        return authz.allowed("key", body["Key"], "read")
    if kind == "Node":
        return authz.allowed("node", body["Node"], "read")
    if kind == "Service":
        return authz.allowed("service", body["Service"], "read")
    if body["ServiceID"]:
        return authz.allowed("service", body["ServiceName"], "read")
    return authz.allowed("node", body["Node"], "read")


def _results_json(results: list[Result]) -> list[Record]:
    return [{kind: body} for kind, body in results]


@route("/v1/txn", "PUT")
def txn_endpoint(api: Api, req: Request) -> Response:
    # convertOps: the body's size is checked before it is decoded.
    max_len = max(api.config.txn_max_req_len, KV_MAX_VALUE_SIZE)
    if len(req.body) > max_len:
        raise HTTPError(413, f"Request body too large, max size: {max_len} bytes")
    try:
        decoded = decode_list(parse_json(req.body), TXN_OP, "api.TxnOps")
    except DecodeError as exc:
        raise bad_request(f"Failed to parse body: {exc}") from None
    if len(decoded) > api.config.max_txn_ops:
        raise HTTPError(413, f"Transaction contains too many operations ({len(decoded)} > {api.config.max_txn_ops})")
    ops = _convert(api, decoded)
    if not any(op.is_write for op in ops):
        return _read_only(api, req, ops)
    token, _ = request_token(req)
    require_datacenter(api, req.get("dc"))
    authz = api.acl.resolve(token)
    with api.store.lock:
        errors = _precheck(api, api.store.tables, authz, ops)
    if errors:
        return json_response(req, {"Results": None, "Errors": errors}, status=409)
    try:
        with api.store.write() as txn:
            results, errors = _dispatch(api, txn, ops)
            if errors:
                raise _TxnFailed(errors)
    except _TxnFailed as failed:
        return json_response(req, {"Results": None, "Errors": failed.errors}, status=409)
    visible = [r for r in results if _visible(authz, r)]
    return json_response(req, {"Results": _results_json(visible), "Errors": None})


def _read_only(api: Api, req: Request, ops: list[Op]) -> Response:
    """Txn.Read: same pre-checks, no raft; the body embeds QueryMeta's fields."""
    opts = parse_options(req, api)
    authz = resolve(api, opts)
    meta: dict[str, Any] = {
        "Index": 0,
        "LastContact": api.faults.last_contact_ms * 1_000_000,
        "KnownLeader": api.faults.known_leader,
        "ConsistencyLevel": "",
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }
    with api.store.lock:
        errors = _precheck(api, api.store.tables, authz, ops)
        results: list[Result] = []
        if not errors:
            probe = WriteTxn(idx=0, tables=api.store.tables.copy(), now=api.store.clock.now())
            results, errors = _dispatch(api, probe, ops)
    if errors:
        response = json_response(req, {"Results": None, "Errors": errors, **meta}, status=409)
    else:
        visible = [r for r in results if _visible(authz, r)]
        meta["ResultsFilteredByACLs"] = len(visible) != len(results) and authz.supplied
        response = json_response(req, {"Results": _results_json(visible), "Errors": None, **meta})
    set_leader_meta(api, response)
    return response


ROUTES: list[Route] = [txn_endpoint]
