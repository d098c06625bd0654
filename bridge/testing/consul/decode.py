"""Request-body decoding with Go `encoding/json` semantics, driven by small struct schemas.

Consul decodes bodies into Go structs. That means: keys match field names exactly or,
failing that, case-insensitively (both Python clients send lowercase keys); unknown keys
such as py-consul's `WriteRequest` are ignored; `null` leaves a field at its zero value;
a value of the wrong JSON type fails the whole request with Go's error text; and only the
first JSON value in the body is read. This module reproduces that so the fake accepts and
rejects exactly what a real agent does. Decoded structs come back as plain dicts keyed by
the canonical Go field name, holding only the fields that were present.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.testing.consul.errors import bad_request
from bridge.testing.consul.wire import GoParseError, parse_duration


class DecodeError(ValueError):
    """The body does not decode; the message is what Go's decoder would say."""


@dataclass(frozen=True)
class Field:
    """One struct field: its Go name, JSON kind, nested schema and snake_case aliases.

    Aliases model Consul's hand-written `UnmarshalJSON` methods that also accept
    snake_case keys; they only apply when the CamelCase field is absent or zero.
    """

    name: str
    kind: str
    schema: Schema | None = None
    aliases: tuple[str, ...] = ()
    go_type: str = ""


@dataclass(frozen=True)
class Schema:
    """A Go struct: the type name used in error messages and its fields."""

    go_name: str
    fields: tuple[Field, ...] = field(default=())

    @property
    def short_name(self) -> str:
        return self.go_name.rsplit(".", 1)[-1]


class _Obj(list):
    """A JSON object as its ordered (key, value) pairs, so duplicate keys stay visible."""


_GO_TYPES = {
    "str": "string",
    "int": "int",
    "uint": "uint64",
    "bool": "bool",
    "strmap": "map[string]string",
    "strlist": "[]string",
    "anymap": "map[string]interface {}",
    "bytes": "[]uint8",
    "duration": "time.Duration",
}


def parse_json(raw: bytes) -> Any:
    """Read the first JSON value like `json.Decoder.Decode`; trailing bytes are ignored."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise DecodeError("EOF")
    decoder = json.JSONDecoder(object_pairs_hook=_Obj, parse_constant=_reject_constant)
    try:
        value, _ = decoder.raw_decode(stripped)
    except json.JSONDecodeError as exc:
        raise DecodeError(_go_syntax_error(stripped, exc)) from None
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    return value


def _go_syntax_error(doc: str, exc: json.JSONDecodeError) -> str:
    """Translate Python's JSON syntax error into the text Go's scanner produces."""
    if exc.pos >= len(doc) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _go_char(doc[exc.pos])
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if exc.msg.startswith("Expecting ','"):
        context = "object key:value pair" if _innermost_open(doc, exc.pos) == "{" else "array element"
        return f"invalid character {char} after {context}"
    if exc.msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if exc.msg.startswith("Invalid \\escape"):
        return f"invalid character {char} in string escape code"
    return f"invalid character {char} looking for beginning of value"


def _innermost_open(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for char in doc[:pos]:
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {_go_char(name[0])} looking for beginning of value")


def _go_char(char: str) -> str:
    """Go's `quoteChar`: single-quoted, with Go escapes for control characters."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    quoted = json.dumps(char)[1:-1]
    return f"'{quoted}'"


def decode_body(raw: bytes, schema: Schema) -> dict[str, Any]:
    """Decode a request body into `schema`, raising DecodeError with Go's message."""
    return decode_value(parse_json(raw), schema)


def decode_request(raw: bytes, schema: Schema) -> dict[str, Any]:
    """`decodeBody` in Consul's HTTP handlers: a body that does not decode is a 400."""
    try:
        return decode_body(raw, schema)
    except DecodeError as exc:
        raise bad_request(f"Request decode failed: {exc}") from None


def decode_value(value: Any, schema: Schema) -> dict[str, Any]:
    """Decode an already-parsed JSON value (from parse_json) into `schema`."""
    if value is None:
        return {}
    if not isinstance(value, _Obj):
        raise DecodeError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type {schema.go_name}")
    return _decode_struct(value, schema, schema.short_name, "")


def decode_list(value: Any, schema: Schema, go_type: str) -> list[dict[str, Any]]:
    """Decode a top-level JSON array of `schema` structs (e.g. the /v1/txn body)."""
    if value is None:
        return []
    if not isinstance(value, list) or isinstance(value, _Obj):
        raise DecodeError(f"json: cannot unmarshal {_json_kind(value)} into Go value of type {go_type}")
    out: list[Any] = []
    for item in value:
        if item is None:
            out.append({})
            continue
        if not isinstance(item, _Obj):
            raise DecodeError(f"json: cannot unmarshal {_json_kind(item)} into Go value of type {schema.go_name}")
        out.append(_decode_struct(item, schema, schema.short_name, ""))
    return out


def _json_kind(value: Any) -> str:
    if isinstance(value, _Obj):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _lookup(schema: Schema, key: str) -> tuple[Field, bool] | None:
    """Find the field for a JSON key: exact name first, then case-insensitive, then aliases."""
    for fld in schema.fields:
        if fld.name == key:
            return fld, False
    folded = key.casefold()
    for fld in schema.fields:
        if fld.name.casefold() == folded:
            return fld, False
    for fld in schema.fields:
        if any(alias.casefold() == folded for alias in fld.aliases):
            return fld, True
    return None


def _decode_struct(pairs: _Obj, schema: Schema, struct_name: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    via_alias: dict[str, Any] = {}
    for key, raw in pairs:
        found = _lookup(schema, key)
        if found is None:
            continue  # Go ignores unknown fields (e.g. py-consul's "WriteRequest").
        fld, is_alias = found
        field_path = f"{path}.{fld.name}" if path else fld.name
        value = _decode_field(raw, fld, struct_name, field_path)
        if raw is None and fld.kind not in ("strmap", "strlist", "anymap", "structlist", "structmap", "any"):
            continue  # null leaves a scalar or struct at its zero value
        if is_alias:
            via_alias[fld.name] = value
        else:
            out[fld.name] = value
    for name, value in via_alias.items():
        if _is_zero(out.get(name)):
            out[name] = value
    return out


def _is_zero(value: Any) -> bool:
    return value is None or value in ("", 0, False) or value == {} or value == []


def _decode_field(raw: Any, fld: Field, struct_name: str, path: str) -> Any:
    kind = fld.kind
    if raw is None:
        return None
    go_type = fld.go_type or _GO_TYPES.get(kind) or (fld.schema.go_name if fld.schema else kind)

    def mismatch(described: str | None = None) -> DecodeError:
        what = described or _json_kind(raw)
        return DecodeError(f"json: cannot unmarshal {what} into Go struct field {struct_name}.{path} of type {go_type}")

    if kind == "any":
        return to_plain(raw)
    if kind == "str":
        if not isinstance(raw, str):
            raise mismatch()
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise mismatch()
        return raw
    if kind in ("int", "uint"):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise mismatch()
        if isinstance(raw, float) and not raw.is_integer():
            raise mismatch(f"number {raw!r}")
        number = int(raw)
        low, high = (0, (1 << 64) - 1) if kind == "uint" else (-(1 << 63), (1 << 63) - 1)
        if not low <= number <= high:
            raise mismatch(f"number {raw!r}")
        return number
    if kind == "duration":
        if isinstance(raw, str):
            try:
                return parse_duration(raw)
            except GoParseError as exc:
                raise DecodeError(str(exc)) from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise mismatch()
        return int(raw)
    if kind == "bytes":
        if not isinstance(raw, str):
            raise mismatch()
        return decode_base64(raw)
    if kind == "strlist":
        if not isinstance(raw, list) or isinstance(raw, _Obj):
            raise mismatch()
        items = []
        for item in raw:
            if item is None:
                items.append("")
            elif not isinstance(item, str):
                raise DecodeError(
                    f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                    f"{struct_name}.{path} of type string"
                )
            else:
                items.append(item)
        return items
    if kind == "strmap":
        if not isinstance(raw, _Obj):
            raise mismatch()
        result: dict[str, str] = {}
        for key, item in raw:
            if item is None:
                result[key] = ""
            elif not isinstance(item, str):
                raise DecodeError(
                    f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                    f"{struct_name}.{path} of type string"
                )
            else:
                result[key] = item
        return result
    if kind == "anymap":
        if not isinstance(raw, _Obj):
            raise mismatch()
        return to_plain(raw)
    assert fld.schema is not None, fld
    if kind == "struct":
        if not isinstance(raw, _Obj):
            raise mismatch()
        return _decode_struct(raw, fld.schema, struct_name, path)
    if kind == "structlist":
        if not isinstance(raw, list) or isinstance(raw, _Obj):
            raise mismatch()
        out: list[Any] = []
        for item in raw:
            if item is None:
                out.append({})
            elif not isinstance(item, _Obj):
                raise DecodeError(
                    f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                    f"{struct_name}.{path} of type {fld.schema.go_name}"
                )
            else:
                out.append(_decode_struct(item, fld.schema, struct_name, path))
        return out
    if kind == "structmap":
        if not isinstance(raw, _Obj):
            raise mismatch()
        mapping: dict[str, dict[str, Any]] = {}
        for key, item in raw:
            if item is None:
                mapping[key] = {}
            elif not isinstance(item, _Obj):
                raise DecodeError(
                    f"json: cannot unmarshal {_json_kind(item)} into Go struct field "
                    f"{struct_name}.{path} of type {fld.schema.go_name}"
                )
            else:
                mapping[key] = _decode_struct(item, fld.schema, struct_name, path)
        return mapping
    raise AssertionError(f"unknown field kind {kind}")


def decode_base64(text: str) -> bytes:
    """`encoding/base64.StdEncoding.DecodeString`, with Go's error text."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        position = _first_bad_base64_byte(text)
        raise DecodeError(f"illegal base64 data at input byte {position}") from None


def _first_bad_base64_byte(text: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for position, char in enumerate(text):
        if char not in alphabet and char != "=":
            return position
    return max(len(text) - len(text) % 4, 0)


def to_plain(value: Any) -> Any:
    """Turn parsed JSON (with _Obj pairs) into ordinary dicts and lists."""
    if isinstance(value, _Obj):
        return {key: to_plain(item) for key, item in value}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value


def from_plain(value: Any) -> Any:
    """The inverse of to_plain, so Python-built dicts (e.g. --load files) decode the same way."""
    if isinstance(value, Mapping):
        return _Obj((str(key), from_plain(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return [from_plain(item) for item in value]
    return value


# ---------------------------------------------------------------------------
# Schemas: the subset of Consul's structs that the served endpoints decode.
# ---------------------------------------------------------------------------

WEIGHTS = Schema("structs.Weights", (Field("Passing", "int"), Field("Warning", "int")))
SERVICE_ADDRESS = Schema("structs.ServiceAddress", (Field("Address", "str"), Field("Port", "int")))

HEALTH_CHECK_DEFINITION = Schema(
    "structs.HealthCheckDefinition",
    (
        Field("HTTP", "str"),
        Field("TLSServerName", "str"),
        Field("TLSSkipVerify", "bool"),
        Field("Header", "anymap"),
        Field("Method", "str"),
        Field("Body", "str"),
        Field("DisableRedirects", "bool"),
        Field("TCP", "str"),
        Field("TCPUseTLS", "bool"),
        Field("UDP", "str"),
        Field("H2PING", "str"),
        Field("H2PingUseTLS", "bool"),
        Field("OSService", "str"),
        Field("Interval", "duration"),
        Field("OutputMaxSize", "int"),
        Field("Timeout", "duration"),
        Field("DeregisterCriticalServiceAfter", "duration"),
        Field("ScriptArgs", "strlist"),
        Field("DockerContainerID", "str"),
        Field("Shell", "str"),
        Field("GRPC", "str"),
        Field("GRPCUseTLS", "bool"),
        Field("AliasNode", "str"),
        Field("AliasService", "str"),
    ),
)

HEALTH_CHECK = Schema(
    "structs.HealthCheck",
    (
        Field("Node", "str"),
        Field("CheckID", "str"),
        Field("Name", "str"),
        Field("Status", "str"),
        Field("Notes", "str"),
        Field("Output", "str"),
        Field("ServiceID", "str"),
        Field("ServiceName", "str"),
        Field("ServiceTags", "strlist"),
        Field("Type", "str"),
        Field("Interval", "str"),
        Field("Timeout", "str"),
        Field("ExposedPort", "int"),
        Field("Definition", "struct", HEALTH_CHECK_DEFINITION),
        Field("PeerName", "str"),
    ),
)

NODE_SERVICE = Schema(
    "structs.NodeService",
    (
        Field("Kind", "str"),
        Field("ID", "str"),
        Field("Service", "str"),
        Field("Tags", "strlist"),
        Field("Address", "str"),
        Field("TaggedAddresses", "structmap", SERVICE_ADDRESS),
        Field("Meta", "strmap"),
        Field("Port", "int"),
        Field("SocketPath", "str"),
        Field("Weights", "struct", WEIGHTS),
        Field("EnableTagOverride", "bool"),
        Field("Locality", "anymap"),
        Field("Proxy", "anymap"),
        Field("Connect", "anymap"),
        Field("PeerName", "str"),
    ),
)

REGISTER_REQUEST = Schema(
    "structs.RegisterRequest",
    (
        Field("Datacenter", "str"),
        Field("ID", "str"),
        Field("Node", "str"),
        Field("Address", "str"),
        Field("TaggedAddresses", "strmap"),
        Field("NodeMeta", "strmap"),
        Field("Service", "struct", NODE_SERVICE),
        Field("Check", "struct", HEALTH_CHECK),
        Field("Checks", "structlist", HEALTH_CHECK),
        Field("Locality", "anymap"),
        Field("SkipNodeUpdate", "bool"),
        Field("PeerName", "str"),
        Field("Token", "str"),
    ),
)

DEREGISTER_REQUEST = Schema(
    "structs.DeregisterRequest",
    (
        Field("Datacenter", "str"),
        Field("Node", "str"),
        Field("ServiceID", "str"),
        Field("CheckID", "str"),
        Field("PeerName", "str"),
        Field("Address", "str"),
        Field("Token", "str"),
    ),
)

CHECK_TYPE = Schema(
    "structs.CheckType",
    (
        Field("CheckID", "str"),
        Field("Name", "str"),
        Field("Status", "str"),
        Field("Notes", "str"),
        Field("ScriptArgs", "strlist", aliases=("args", "script_args")),
        Field("HTTP", "str"),
        Field("H2PING", "str"),
        Field("H2PingUseTLS", "bool", aliases=("h2ping_use_tls",)),
        Field("Header", "anymap"),
        Field("Method", "str"),
        Field("Body", "str"),
        Field("DisableRedirects", "bool", aliases=("disable_redirects",)),
        Field("TCP", "str"),
        Field("TCPUseTLS", "bool", aliases=("tcp_use_tls",)),
        Field("UDP", "str"),
        Field("Interval", "duration"),
        Field("AliasNode", "str", aliases=("alias_node",)),
        Field("AliasService", "str", aliases=("alias_service",)),
        Field("DockerContainerID", "str", aliases=("docker_container_id",)),
        Field("Shell", "str"),
        Field("GRPC", "str"),
        Field("GRPCUseTLS", "bool", aliases=("grpc_use_tls",)),
        Field("OSService", "str", aliases=("os_service",)),
        Field("TLSServerName", "str", aliases=("tls_server_name",)),
        Field("TLSSkipVerify", "bool", aliases=("tls_skip_verify",)),
        Field("Timeout", "duration"),
        Field("TTL", "duration"),
        Field("SuccessBeforePassing", "int", aliases=("success_before_passing",)),
        Field("FailuresBeforeWarning", "int", aliases=("failures_before_warning",)),
        Field("FailuresBeforeCritical", "int", aliases=("failures_before_critical",)),
        Field("DeregisterCriticalServiceAfter", "duration", aliases=("deregister_critical_service_after",)),
        Field("OutputMaxSize", "int", aliases=("output_max_size",)),
    ),
)

SERVICE_DEFINITION = Schema(
    "structs.ServiceDefinition",
    (
        Field("Kind", "str"),
        Field("ID", "str"),
        Field("Name", "str"),
        Field("Tags", "strlist"),
        Field("Address", "str"),
        Field("TaggedAddresses", "structmap", SERVICE_ADDRESS, aliases=("tagged_addresses",)),
        Field("Meta", "strmap"),
        Field("Port", "int"),
        Field("SocketPath", "str", aliases=("socket_path",)),
        Field("Check", "struct", CHECK_TYPE),
        Field("Checks", "structlist", CHECK_TYPE),
        Field("Weights", "struct", WEIGHTS),
        Field("Token", "str"),
        Field("EnableTagOverride", "bool", aliases=("enable_tag_override",)),
        Field("Proxy", "anymap"),
        Field("Connect", "anymap"),
        Field("Locality", "anymap"),
    ),
)

SESSION = Schema(
    "structs.Session",
    (
        Field("ID", "str"),
        Field("Name", "str"),
        Field("Node", "str"),
        Field("LockDelay", "any"),
        Field("Behavior", "str"),
        Field("TTL", "str"),
        Field("NodeChecks", "strlist"),
        Field(
            "ServiceChecks",
            "structlist",
            Schema("structs.ServiceCheck", (Field("ID", "str"), Field("Namespace", "str"))),
        ),
        Field("Checks", "strlist"),
    ),
)

CHECK_UPDATE = Schema("agent.checkUpdate", (Field("Status", "str"), Field("Output", "str")))

API_NODE = Schema(
    "api.Node",
    (
        Field("ID", "str"),
        Field("Node", "str"),
        Field("Address", "str"),
        Field("Datacenter", "str"),
        Field("TaggedAddresses", "strmap"),
        Field("Meta", "strmap"),
        Field("CreateIndex", "uint"),
        Field("ModifyIndex", "uint"),
        Field("Partition", "str"),
        Field("PeerName", "str"),
        Field("Locality", "anymap"),
    ),
)

API_AGENT_SERVICE = Schema(
    "api.AgentService",
    (
        Field("Kind", "str"),
        Field("ID", "str"),
        Field("Service", "str"),
        Field("Tags", "strlist"),
        Field("Meta", "strmap"),
        Field("Port", "int"),
        Field("Address", "str"),
        Field("SocketPath", "str"),
        Field("TaggedAddresses", "structmap", SERVICE_ADDRESS),
        Field("Weights", "struct", Schema("api.AgentWeights", WEIGHTS.fields)),
        Field("EnableTagOverride", "bool"),
        Field("CreateIndex", "uint"),
        Field("ModifyIndex", "uint"),
        Field("ContentHash", "str"),
        Field("Proxy", "anymap"),
        Field("Connect", "anymap"),
        Field("PeerName", "str"),
        Field("Namespace", "str"),
        Field("Partition", "str"),
        Field("Datacenter", "str"),
        Field("Locality", "anymap"),
    ),
)

API_HEALTH_CHECK_DEFINITION = Schema(
    "api.HealthCheckDefinition",
    (
        Field("HTTP", "str"),
        Field("Header", "anymap"),
        Field("Method", "str"),
        Field("Body", "str"),
        Field("TLSServerName", "str"),
        Field("TLSSkipVerify", "bool"),
        Field("TCP", "str"),
        Field("TCPUseTLS", "bool"),
        Field("UDP", "str"),
        Field("GRPC", "str"),
        Field("OSService", "str"),
        Field("GRPCUseTLS", "bool"),
        Field("Interval", "duration", go_type="api.ReadableDuration"),
        Field("Timeout", "duration", go_type="api.ReadableDuration"),
        Field("DeregisterCriticalServiceAfter", "duration", go_type="api.ReadableDuration"),
    ),
)

API_HEALTH_CHECK = Schema(
    "api.HealthCheck",
    (
        Field("Node", "str"),
        Field("CheckID", "str"),
        Field("Name", "str"),
        Field("Status", "str"),
        Field("Notes", "str"),
        Field("Output", "str"),
        Field("ServiceID", "str"),
        Field("ServiceName", "str"),
        Field("ServiceTags", "strlist"),
        Field("Type", "str"),
        Field("Namespace", "str"),
        Field("Partition", "str"),
        Field("ExposedPort", "int"),
        Field("PeerName", "str"),
        Field("Definition", "struct", API_HEALTH_CHECK_DEFINITION),
        Field("CreateIndex", "uint"),
        Field("ModifyIndex", "uint"),
    ),
)

TXN_OP = Schema(
    "api.TxnOp",
    (
        Field(
            "KV",
            "struct",
            Schema(
                "api.KVTxnOp",
                (
                    Field("Verb", "str", go_type="api.KVOp"),
                    Field("Key", "str"),
                    Field("Value", "bytes"),
                    Field("Flags", "uint"),
                    Field("Index", "uint"),
                    Field("Session", "str"),
                    Field("Namespace", "str"),
                    Field("Partition", "str"),
                ),
            ),
        ),
        Field(
            "Node",
            "struct",
            Schema("api.NodeTxnOp", (Field("Verb", "str", go_type="api.NodeOp"), Field("Node", "struct", API_NODE))),
        ),
        Field(
            "Service",
            "struct",
            Schema(
                "api.ServiceTxnOp",
                (
                    Field("Verb", "str", go_type="api.ServiceOp"),
                    Field("Node", "str"),
                    Field("Service", "struct", API_AGENT_SERVICE),
                ),
            ),
        ),
        Field(
            "Check",
            "struct",
            Schema(
                "api.CheckTxnOp",
                (Field("Verb", "str", go_type="api.CheckOp"), Field("Check", "struct", API_HEALTH_CHECK)),
            ),
        ),
    ),
)
