"""What Consul refuses in a registration, with its error texts: one place for every rule.

Each function mirrors one upstream rule (hashicorp/consul, named in its docstring) and
returns or raises Consul's own message; the endpoints decide the status and any prefix
("Invalid Service Meta: ...", "Invalid check: ...") as Consul's handlers do.

Where Consul applies each rule (and so where the fake does):

- service meta: the state store's `ensureServiceTxn`, so every write path (catalog
  register, `/v1/txn`, agent anti-entropy), and `/v1/agent/service/register` up front;
- node meta: only an agent's own `node_meta` configuration. The catalog and `/v1/txn`
  store any node meta, so the fake does too;
- weights: refused by the agent endpoint, silently replaced by {1, 1} in the catalog
  (`NodeService.ToServiceNode`);
- service names and tags: never refused (the agent only warns that DNS cannot serve
  them); check status: refused by the agent endpoints, stored as given by the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bridge.testing.consul.state import Record

META_MAX_PAIRS = 64
META_KEY_MAX_LENGTH = 128
META_VALUE_MAX_LENGTH = 512
META_RESERVED_PREFIX = "consul-"
# The one reserved key a mesh gateway may carry (structs.MetaWANFederationKey).
_MESH_GATEWAY_CONSUL_KEYS = frozenset({"consul-wan-federation"})
_META_KEY = re.compile(r"[a-zA-Z0-9_-]+")  # `^...$` in Go: the whole key, no trailing newline
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ANY_ADDRESSES = {"0.0.0.0", "::", "[::]"}
_INTERVAL_KEYS = ("ScriptArgs", "HTTP", "TCP", "UDP", "GRPC", "H2PING", "OSService")
VALID_STATUSES = ("passing", "warning", "critical")


def meta_pair_error(key: str, value: str, allowed_consul_keys: frozenset[str] = frozenset()) -> str | None:
    """`structs.validateMetaPair` (allowConsulPrefix false): the first rule a pair breaks.

    Lengths are Go's `len`, in bytes of UTF-8."""
    if key == "":
        return "Key cannot be blank"
    if not _META_KEY.fullmatch(key):
        return "Key contains invalid characters"
    if len(key.encode()) > META_KEY_MAX_LENGTH:
        return f"Key is too long (limit: {META_KEY_MAX_LENGTH} characters)"
    if key.startswith(META_RESERVED_PREFIX) and key not in allowed_consul_keys:
        return f"Key prefix '{META_RESERVED_PREFIX}' is reserved for internal use"
    if len(value.encode()) > META_VALUE_MAX_LENGTH:
        return f"Value is too long (limit: {META_VALUE_MAX_LENGTH} characters)"
    return None


def meta_error(meta: Mapping[str, str] | None, allowed_consul_keys: frozenset[str] = frozenset()) -> str | None:
    """`structs.validateMetadata`: the pair count first (its text says "Node" for service
    meta too), then each pair. Go ranges over the map in random order, so with several bad
    pairs Consul names any one of them; the fake names the first in key order."""
    if not meta:
        return None
    if len(meta) > META_MAX_PAIRS:
        return f"Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
    for key in sorted(meta):
        error = meta_pair_error(key, meta[key], allowed_consul_keys)
        if error is not None:
            return f"Couldn't load metadata pair ('{key}', '{meta[key]}'): {error}"
    return None


def service_meta_error(kind: str, meta: Mapping[str, str] | None) -> str | None:
    """`structs.ValidateServiceMetadata(kind, meta, false)`."""
    return meta_error(meta, _MESH_GATEWAY_CONSUL_KEYS if kind == "mesh-gateway" else frozenset())


def weights_error(weights: Record) -> str | None:
    """`structs.ValidateWeights`: the message for invalid DNS weights, or None."""
    passing, warning = weights.get("Passing", 0), weights.get("Warning", 0)
    if passing < 1:
        return "Passing must be greater than 0"
    if warning < 0:
        return "Warning must be greater or equal than 0"
    if passing > 65535 or warning > 65535:
        return "DNS Weight must be between 0 and 65535"
    return None


def validate_node_id(node_id: str) -> None:
    """`nodePreApply`'s UUID check, with go-uuid's error text."""
    if not node_id:
        return
    if len(node_id) != 36:
        raise ValueError("Bad node ID: uuid string is wrong length")
    if not _UUID.match(node_id):
        raise ValueError("Bad node ID: uuid is improperly formatted")


def is_any_address(address: str) -> bool:
    """`ipaddr.IsAny`: the addresses `servicePreApply` refuses ("Invalid service address")."""
    return address in _ANY_ADDRESSES


def validate_check_type(check: Record) -> None:
    """`CheckType.Validate`, with Consul's messages (reported as "Invalid check: ...")."""
    interval_check = any(check.get(key) for key in _INTERVAL_KEYS)
    alias = bool(check.get("AliasNode") or check.get("AliasService"))
    interval, ttl = check.get("Interval", 0), check.get("TTL", 0)
    if interval > 0 and ttl > 0:
        raise ValueError("Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise ValueError("Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if interval_check and alias:
        raise ValueError("Interval cannot be set for Alias checks")
    if alias and ttl > 0:
        raise ValueError("TTL must be not be set for Alias checks")
    if not interval_check and not alias and ttl <= 0:
        raise ValueError("TTL must be > 0 for TTL checks")
    if check.get("OutputMaxSize", 0) < 0:
        raise ValueError("MaxOutputMaxSize must be positive")
