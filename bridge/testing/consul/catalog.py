"""Catalog state: registering and removing nodes, services and checks, and the read queries.

This is a port of the parts of Consul's `agent/consul/state/catalog.go` that decide
what is stored and which index entries move. Those index moves are what blocking
queries observe, so they follow Consul precisely:

* a service write bumps `services`, `service.<name>`, `nodes` and `node.<node>`;
* a service check write bumps `service.<name>`; a node check write bumps every
  `service.<name>` on that node;
* removing the last instance of a name deletes `service.<name>` and moves
  `service_last_extinction`, which is what a query for a missing service reports;
* an identical re-registration writes nothing and moves no index.

Lookups are case-insensitive on node names, service IDs, service names and check IDs,
as Consul's memdb indexes are.

The functions here that write `services` and `checks` (`_put_service`, `_drop_service`,
`_put_check`, `_drop_check`, through which every catalog write goes) are the only
maintainers of the tables' secondary indexes (state.KeyIndex), and the read helpers
answer from those indexes: a write or a per-service/per-node read costs what it touches,
as with memdb's radix trees, not a scan of the catalog. Reads keep memdb's orders (by
the primary key, i.e. node then ID), sorting only the few keys they select.
"""

from __future__ import annotations

from typing import Any

from bridge.testing.consul.errors import ApplyError
from bridge.testing.consul.sessions import (
    SERF_CHECK_ID,
    delete_session,
    sessions_for_check,
    sessions_for_node,
)
from bridge.testing.consul.state import PairKey, Record, Tables, WriteTxn
from bridge.testing.consul.validation import service_meta_error, weights_error
from bridge.testing.consul.wire import format_duration, go_quote

EXTINCTION = "service_last_extinction"
NODE_EXTINCTION = "node_last_extinction"
HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL = "passing", "warning", "critical"



class Catalog:
    """Catalog writes within a transaction; owns the lock-delay map for session invalidation."""

    def __init__(self, lock_delays: dict[str, float]) -> None:
        self.lock_delays = lock_delays

    # -- nodes -------------------------------------------------------------------

    def ensure_node(self, txn: WriteTxn, node: Record) -> None:
        """`ensureNodeTxn`: upsert a node; a node renamed via its ID replaces the old name."""
        tables = txn.tables
        previous: Record | None = None
        if node["ID"]:
            by_id = find_node_by_id(tables, node["ID"])
            if by_id is not None:
                previous = by_id
                if by_id["Node"].lower() != node["Node"].lower():
                    _check_name_free(tables, node, allow_clash_without_id=False, rename_of=node["ID"])
                    self.delete_node(txn, by_id["Node"])
            else:
                _check_name_free(tables, node, allow_clash_without_id=True, rename_of=node["ID"])
        if previous is None:
            previous = tables.nodes.get(node["Node"].lower())
        entry = dict(node)
        if previous is not None:
            entry["CreateIndex"], entry["ModifyIndex"] = previous["CreateIndex"], previous["ModifyIndex"]
            if same_node(previous, entry) and node["Node"].lower() in tables.nodes:
                return
            entry["ModifyIndex"] = txn.idx
        else:
            entry["CreateIndex"] = entry["ModifyIndex"] = txn.idx
        tables.nodes[entry["Node"].lower()] = entry
        tables.bump("nodes", txn.idx)
        tables.bump(f"node.{entry['Node']}", txn.idx)
        _bump_node_services(tables, entry["Node"], txn.idx)

    def delete_node(self, txn: WriteTxn, name: str) -> None:
        """`deleteNodeTxn`: a node takes its services, checks and sessions with it."""
        tables = txn.tables
        node = tables.nodes.get(name.lower())
        if node is None:
            return
        on_node = services_on_node(tables, name)
        for svc in on_node:
            tables.bump(f"service.{svc['ServiceName']}", txn.idx)
            tables.bump(_kind_index(svc), txn.idx)
        for svc in on_node:
            self.delete_service(txn, name, svc["ServiceID"])
        for key in check_keys_on_node(tables, name):
            self.delete_check(txn, name, tables.checks[key]["CheckID"])
        del tables.nodes[name.lower()]
        tables.bump("nodes", txn.idx)
        tables.index.pop(f"node.{node['Node']}", None)
        tables.bump(NODE_EXTINCTION, txn.idx)
        for session_id in sessions_for_node(tables, name):
            delete_session(txn, session_id, self.lock_delays)

    # -- services ----------------------------------------------------------------

    def ensure_service(self, txn: WriteTxn, node: str, service: Record) -> None:
        """`ensureServiceTxn`: upsert one service instance; identical writes are no-ops.
        Refuses meta that `structs.ValidateServiceMetadata` refuses."""
        tables = txn.tables
        key = (node.lower(), service["ServiceID"].lower())
        existing = tables.services.get(key)
        # Before the node check, as in Consul: meta is vetted on every write path.
        meta_error = service_meta_error(service.get("ServiceKind", ""), service.get("ServiceMeta"))
        if meta_error is not None:
            raise ApplyError(f"Invalid Service Meta for node {node} and serviceID {service['ServiceID']}: {meta_error}")
        if node.lower() not in tables.nodes:
            raise ApplyError("Missing node registration")
        entry = {**service, "Node": node}
        if existing is not None:
            entry["CreateIndex"], entry["ModifyIndex"] = existing["CreateIndex"], existing["ModifyIndex"]
            if same_record(existing, entry):
                return
            entry["ModifyIndex"] = txn.idx
        else:
            entry["CreateIndex"] = entry["ModifyIndex"] = txn.idx
        _put_service(tables, key, entry, existing)
        tables.bump("services", txn.idx)
        tables.bump(f"service.{entry['ServiceName']}", txn.idx)
        tables.bump(_kind_index(entry), txn.idx)
        tables.bump("nodes", txn.idx)
        tables.bump(f"node.{node}", txn.idx)

    def delete_service(self, txn: WriteTxn, node: str, service_id: str) -> bool:
        """`deleteServiceTxn`: remove an instance and its checks; track extinction."""
        tables = txn.tables
        key = (node.lower(), service_id.lower())
        service = tables.services.get(key)
        if service is None:
            return False
        for check_key in sorted(tables.checks_by_instance.get(key)):
            self.delete_check(txn, node, tables.checks[check_key]["CheckID"])
        tables.bump("checks", txn.idx)
        _drop_service(tables, key, service)
        tables.bump("services", txn.idx)
        tables.bump(_kind_index(service), txn.idx)
        tables.bump("nodes", txn.idx)
        tables.bump(f"node.{node}", txn.idx)
        name = service["ServiceName"]
        if tables.services_by_name.get(name.lower()):
            tables.bump(f"service.{name}", txn.idx)
        else:
            tables.index.pop(f"service.{name}", None)
            tables.bump(EXTINCTION, txn.idx)
        return True

    # -- checks --------------------------------------------------------------------

    def ensure_check(self, txn: WriteTxn, check: Record) -> None:
        """`ensureCheckTxn`: upsert a check; critical checks invalidate their sessions."""
        tables = txn.tables
        key = (check["Node"].lower(), check["CheckID"].lower())
        existing = tables.checks.get(key)
        entry = dict(check)
        if existing is not None:
            entry["CreateIndex"], entry["ModifyIndex"] = existing["CreateIndex"], existing["ModifyIndex"]
        else:
            entry["CreateIndex"] = txn.idx
        if not entry["Status"]:
            entry["Status"] = HEALTH_CRITICAL
        if check["Node"].lower() not in tables.nodes:
            raise ApplyError("Missing node registration")
        modified = True
        if entry["ServiceID"]:
            service = tables.services.get((key[0], entry["ServiceID"].lower()))
            if service is None:
                raise ApplyError("Missing service registration")
            entry["ServiceName"] = service["ServiceName"]
            entry["ServiceTags"] = service["ServiceTags"]
            if existing is not None and same_record(existing, entry):
                modified = False
            else:
                tables.bump(f"service.{service['ServiceName']}", txn.idx)
                tables.bump(_kind_index(service), txn.idx)
        elif existing is not None and same_record(existing, entry):
            modified = False
        else:
            _bump_node_services(tables, entry["Node"], txn.idx)
        if entry["Status"] == HEALTH_CRITICAL:
            for session_id in sessions_for_check(tables, entry["Node"], entry["CheckID"]):
                delete_session(txn, session_id, self.lock_delays)
        if not modified:
            return
        entry["ModifyIndex"] = txn.idx
        _put_check(tables, key, entry, existing)
        tables.bump("checks", txn.idx)

    def delete_check(self, txn: WriteTxn, node: str, check_id: str) -> bool:
        tables = txn.tables
        key = (node.lower(), check_id.lower())
        check = tables.checks.get(key)
        if check is None:
            return False
        if check["ServiceID"]:
            tables.bump(f"service.{check['ServiceName']}", txn.idx)
            service = tables.services.get((key[0], check["ServiceID"].lower()))
            if service is not None:
                tables.bump(_kind_index(service), txn.idx)
        else:
            _bump_node_services(tables, check["Node"], txn.idx)
            tables.bump("services", txn.idx)
        _drop_check(tables, key, check)
        tables.bump("checks", txn.idx)
        for session_id in sessions_for_check(tables, check["Node"], check["CheckID"]):
            delete_session(txn, session_id, self.lock_delays)
        return True

    # -- registration requests -------------------------------------------------------

    def ensure_registration(self, txn: WriteTxn, req: Record) -> None:
        """`ensureRegistrationTxn`: node (only if it changes), then service, then checks."""
        tables = txn.tables
        node = node_from_request(req)
        existing = tables.nodes.get(node["Node"].lower())
        if existing is None or changes_node(req, existing):
            try:
                self.ensure_node(txn, node)
            except ApplyError as exc:
                raise ApplyError(f"failed inserting node: {exc}") from None
        service = req.get("Service")
        if service is not None:
            current = tables.services.get((req["Node"].lower(), service["ServiceID"].lower()))
            if current is None or not same_record(current, {**service, "Node": current["Node"]}):
                try:
                    self.ensure_service(txn, req["Node"], service)
                except ApplyError as exc:
                    raise ApplyError(f"failed inserting service: {exc}") from None
        for check in req.get("Checks") or []:
            if check["Node"].lower() != req["Node"].lower():
                raise ApplyError(f"check node {go_quote(check['Node'])} does not match node {go_quote(req['Node'])}")
            try:
                self.ensure_check(txn, check)
            except ApplyError as exc:
                raise ApplyError(f"failed inserting check on node {go_quote(check['Node'])}: {exc}") from None


# ---------------------------------------------------------------------------
# The only writers of `services` / `checks`: each keeps the secondary indexes in step.
# ---------------------------------------------------------------------------


def _put_service(tables: Tables, key: PairKey, entry: Record, existing: Record | None) -> None:
    tables.services[key] = entry
    name = entry["ServiceName"].lower()
    if existing is None:
        tables.services_by_node.add(key[0], key)
    elif existing["ServiceName"].lower() != name:
        # A rename under the same ID; an unchanged name leaves the (maybe large) buckets alone.
        tables.services_by_name.discard(existing["ServiceName"].lower(), key)
    else:
        return
    tables.services_by_name.add(name, key)


def _drop_service(tables: Tables, key: PairKey, service: Record) -> None:
    del tables.services[key]
    tables.services_by_node.discard(key[0], key)
    tables.services_by_name.discard(service["ServiceName"].lower(), key)


def _put_check(tables: Tables, key: PairKey, entry: Record, existing: Record | None) -> None:
    tables.checks[key] = entry
    if existing is not None:
        if _check_filing(existing) == _check_filing(entry):
            # The usual update (a status change): the buckets stay as they are, and are not copied.
            return
        # The check moved to another service (same CheckID).
        _unfile_check(tables, key, existing)
    tables.checks_by_instance.add((key[0], entry["ServiceID"].lower()), key)
    tables.checks_by_service_name.add(entry["ServiceName"].lower(), key)


def _drop_check(tables: Tables, key: PairKey, check: Record) -> None:
    del tables.checks[key]
    _unfile_check(tables, key, check)


def _check_filing(check: Record) -> tuple[str, str]:
    return check["ServiceID"].lower(), check["ServiceName"].lower()


def _unfile_check(tables: Tables, key: PairKey, check: Record) -> None:
    tables.checks_by_instance.discard((key[0], check["ServiceID"].lower()), key)
    tables.checks_by_service_name.discard(check["ServiceName"].lower(), key)


# ---------------------------------------------------------------------------
# Building records from decoded requests (the RPC layer's defaulting).
# ---------------------------------------------------------------------------


def node_from_request(req: Record) -> Record:
    return {
        "ID": req.get("ID", ""),
        "Node": req["Node"],
        "Address": req.get("Address", ""),
        "Datacenter": req.get("Datacenter", ""),
        "TaggedAddresses": req.get("TaggedAddresses"),
        "Meta": req.get("NodeMeta"),
    }


def changes_node(req: Record, node: Record) -> bool:
    """`RegisterRequest.ChangesNode`: SkipNodeUpdate means "leave an existing node alone"."""
    if req.get("SkipNodeUpdate"):
        return False
    return not same_node(node, node_from_request(req))


def same_node(a: Record, b: Record) -> bool:
    return (
        a["ID"] == b["ID"]
        and a["Node"].lower() == b["Node"].lower()
        and a["Address"] == b["Address"]
        and a["Datacenter"] == b["Datacenter"]
        and a["TaggedAddresses"] == b["TaggedAddresses"]
        and a["Meta"] == b["Meta"]
    )


def same_record(a: Record, b: Record) -> bool:
    """Deep equality ignoring raft indexes; None and {} / [] differ, as in reflect.DeepEqual."""
    skip = {"CreateIndex", "ModifyIndex"}
    keys = (set(a) | set(b)) - skip
    return all(_deep_equal(a.get(key), b.get(key)) for key in keys)


def _deep_equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(type(a) is type(b) and a == b)


def service_from_node_service(ns: Record) -> Record:
    """`NodeService.ToServiceNode`: default the ID, default or repair the weights."""
    weights = ns.get("Weights")
    if weights is None or weights_error(weights) is not None:
        weights = {"Passing": 1, "Warning": 1}
    else:
        weights = {"Passing": weights.get("Passing", 0), "Warning": weights.get("Warning", 0)}
    return {
        "ServiceKind": ns.get("Kind", ""),
        "ServiceID": ns.get("ID") or ns.get("Service", ""),
        "ServiceName": ns.get("Service", ""),
        "ServiceTags": ns.get("Tags"),
        "ServiceAddress": ns.get("Address", ""),
        "ServiceTaggedAddresses": ns.get("TaggedAddresses") or None,
        "ServiceWeights": weights,
        "ServiceMeta": ns.get("Meta"),
        "ServicePort": ns.get("Port", 0),
        "ServiceSocketPath": ns.get("SocketPath", ""),
        "ServiceEnableTagOverride": ns.get("EnableTagOverride", False),
        "ServiceProxy": ns.get("Proxy") or {},
        "ServiceConnect": ns.get("Connect") or {},
        "ServiceLocality": ns.get("Locality"),
    }


_DEFINITION_DURATIONS = ("Interval", "Timeout", "DeregisterCriticalServiceAfter")


def check_from_request(check: Record, node: str) -> Record:
    """A catalog check with `checkPreApply` defaults (Node, CheckID from Name, Type)."""
    definition = dict(check.get("Definition") or {})
    return {
        "Node": check.get("Node") or node,
        "CheckID": check.get("CheckID") or check.get("Name", ""),
        "Name": check.get("Name", ""),
        "Status": check.get("Status", ""),
        "Notes": check.get("Notes", ""),
        "Output": check.get("Output", ""),
        "ServiceID": check.get("ServiceID", ""),
        "ServiceName": check.get("ServiceName", ""),
        "ServiceTags": check.get("ServiceTags"),
        "Type": check.get("Type") or check_type_of(definition),
        "Interval": check.get("Interval", ""),
        "Timeout": check.get("Timeout", ""),
        "ExposedPort": check.get("ExposedPort", 0),
        "Definition": definition,
    }


def check_type_of(definition: Record) -> str:
    """`CheckType.Type()`: most kinds only count when an Interval is set."""
    interval = definition.get("Interval", 0) > 0
    script = bool(definition.get("ScriptArgs")) and interval
    for kind, matches in (
        ("grpc", bool(definition.get("GRPC")) and interval),
        ("http", bool(definition.get("HTTP")) and interval),
        ("h2ping", bool(definition.get("H2PING")) and interval),
        ("ttl", definition.get("TTL", 0) > 0),
        ("tcp", bool(definition.get("TCP")) and interval),
        ("udp", bool(definition.get("UDP")) and interval),
        ("alias", bool(definition.get("AliasNode") or definition.get("AliasService"))),
        ("docker", script and bool(definition.get("DockerContainerID"))),
        ("script", script),
        ("os_service", bool(definition.get("OSService")) and interval),
    ):
        if matches:
            return kind
    return ""


def render_definition(definition: Record) -> Record:
    """HealthCheckDefinition JSON: every field is omitempty, durations print as strings."""
    order = (
        "HTTP",
        "TLSServerName",
        "TLSSkipVerify",
        "Header",
        "Method",
        "Body",
        "DisableRedirects",
        "TCP",
        "TCPUseTLS",
        "UDP",
        "H2PING",
        "OSService",
        "H2PingUseTLS",
        "Interval",
        "OutputMaxSize",
        "Timeout",
        "DeregisterCriticalServiceAfter",
        "ScriptArgs",
        "DockerContainerID",
        "Shell",
        "GRPC",
        "GRPCUseTLS",
        "AliasNode",
        "AliasService",
    )
    out: Record = {}
    for key in order:
        value = definition.get(key)
        if not value:
            continue
        out[key] = format_duration(value) if key in _DEFINITION_DURATIONS else value
    return out


# ---------------------------------------------------------------------------
# Read helpers (callers hold the store lock).
# ---------------------------------------------------------------------------


def find_node_by_id(tables: Tables, node_id: str) -> Record | None:
    wanted = node_id.lower()
    for node in tables.nodes.values():
        if node["ID"] and node["ID"].lower() == wanted:
            return node
    return None


def lookup_node(tables: Tables, name_or_id: str) -> Record | None:
    """Node by name, else by unique ID prefix (Consul allows both in /catalog/node/:node)."""
    node = tables.nodes.get(name_or_id.lower())
    if node is not None:
        return node
    if len(name_or_id) < 2:
        return None
    prefix = name_or_id.lower()
    if len(prefix) % 2:
        prefix = prefix[:-1]
    matches = [n for n in tables.nodes.values() if n["ID"] and n["ID"].lower().startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


def sorted_nodes(tables: Tables) -> list[Record]:
    return [tables.nodes[key] for key in sorted(tables.nodes)]


def services_named(tables: Tables, name: str) -> list[Record]:
    """Instances of a service name, in memdb order (node, then service ID)."""
    return [tables.services[key] for key in sorted(tables.services_by_name.get(name.lower()))]


def service_names_like(tables: Tables, name: str) -> set[str]:
    """The distinct spellings of `name` (case-insensitively) that have instances."""
    return {tables.services[key]["ServiceName"] for key in tables.services_by_name.get(name.lower())}


def services_on_node(tables: Tables, node: str) -> list[Record]:
    """A node's service instances, in service-ID order."""
    return [tables.services[key] for key in sorted(tables.services_by_node.get(node.lower()))]


def instance_checks(tables: Tables, node: str, service_id: str) -> list[Record]:
    """An instance's checks: the node-level ones first, then its own, each in check-ID
    order, as `parseCheckServiceNodes` orders them."""
    node_key = node.lower()
    node_level = sorted(tables.checks_by_instance.get((node_key, "")))
    own = sorted(tables.checks_by_instance.get((node_key, service_id.lower())))
    return [tables.checks[key] for key in node_level + own]


def check_keys_on_node(tables: Tables, node: str) -> list[PairKey]:
    """The keys of a node's checks, in check-ID order.

    Every service check belongs to an instance on its own node (ensure_check refuses any
    other, delete_service takes an instance's checks along), so a node's checks are its
    node checks plus its instances' checks; no per-node check index has to be kept (and
    copied on write: the bridge puts every instance on one node).
    """
    node_key = node.lower()
    keys = list(tables.checks_by_instance.get((node_key, "")))
    for service_key in tables.services_by_node.get(node_key):
        keys.extend(tables.checks_by_instance.get(service_key))
    return sorted(keys)


def checks_on_node(tables: Tables, node: str) -> list[Record]:
    """A node's checks, in check-ID order."""
    return [tables.checks[key] for key in check_keys_on_node(tables, node)]


def checks_of_service_name(tables: Tables, name: str) -> list[Record]:
    """Checks whose ServiceName is `name` (case-insensitively), in (node, check ID) order."""
    return [tables.checks[key] for key in sorted(tables.checks_by_service_name.get(name.lower()))]


def index_for_service(tables: Tables, name: str, exists: bool, *, checks: bool) -> int:
    """`maxIndexAndWatchChForService`: what a per-service query reports as its index."""
    if not exists and EXTINCTION in tables.index:
        return tables.index[EXTINCTION]
    key = f"service.{name}"
    if key in tables.index:
        return tables.index[key]
    names = ("checks", "services", "nodes") if checks else ("services", "nodes")
    return tables.max_index(*names)


def tag_filter_passes(service: Record, tags: list[str]) -> bool:
    """`serviceTagsFilter`: every requested tag must be present, case-insensitively."""
    have = {tag.lower() for tag in service.get("ServiceTags") or []}
    return all(tag.lower() in have for tag in tags)


def _bump_node_services(tables: Tables, node: str, idx: int) -> None:
    # Order does not matter here (bumps only move forward), so skip the sort.
    for key in tables.services_by_node.get(node.lower()):
        service = tables.services[key]
        tables.bump(f"service.{service['ServiceName']}", idx)
        tables.bump(_kind_index(service), idx)


def _kind_index(service: Record) -> str:
    return f"service_kind.{service.get('ServiceKind') or 'typical'}"


def _check_name_free(tables: Tables, node: Record, *, allow_clash_without_id: bool, rename_of: str) -> None:
    """`ensureNoNodeWithSimilarNameTxn`: a healthy node owns its name against other IDs."""
    for other in tables.nodes.values():
        if other["Node"].lower() != node["Node"].lower() or other["ID"] == node["ID"]:
            continue
        serf = tables.checks.get((other["Node"].lower(), SERF_CHECK_ID.lower()))
        healthy = serf is not None and serf["Status"] != HEALTH_CRITICAL
        if not (other["ID"] == "" and allow_clash_without_id) and healthy:
            raise ApplyError(
                f"Error while renaming Node ID: {go_quote(rename_of)}: Node name {node['Node']} is reserved "
                f"by node {other['ID']} with name {other['Node']} ({other['Address']})"
            )
