"""An in-process fake of Consul's HTTP API, strict enough to stand in for a real agent in tests.

See server.py for the entry point. Other modules: transport (HTTP/1.1), router and the
api_* endpoint modules (HTTP surface), decode/render/wire (Go-compatible wire formats),
state/catalog/sessions/agent (the state store), query (blocking queries), acl with
acl_rules, api_acl, acl_login and acl_kubernetes (Consul's ACL system), tls (HTTPS with a
CA made at start), faults and admin (test hooks), loader (--load files).
"""

from bridge.testing.consul.acl import AclRegistry, Token
from bridge.testing.consul.faults import Faults, RequestLog, RequestRecord
from bridge.testing.consul.server import ConsulServer
from bridge.testing.consul.state import Snapshot, Store

__all__ = [
    "AclRegistry",
    "ConsulServer",
    "Faults",
    "RequestLog",
    "RequestRecord",
    "Snapshot",
    "Store",
    "Token",
]
