"""The agent's configuration: what a real agent reads from its configuration file."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from bridge.testing.consul.wire import MINUTE, SECOND


@dataclass
class AgentConfig:
    """Settings a real agent takes from its configuration file (tests may change them live)."""

    node_name: str = "consul-agent"
    datacenter: str = "dc1"
    node_address: str = "127.0.0.1"
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    version: str = "1.22.0"
    # Blocking queries: Consul's DefaultQueryTime, MaxQueryTime and wait/16 jitter.
    default_query_time_ns: int = 5 * MINUTE
    max_query_time_ns: int = 10 * MINUTE
    jitter: bool = True
    # /v1/txn operation limit: 128 in current releases, 64 in older ones.
    max_txn_ops: int = 128
    # /v1/txn body limit: txn_max_req_len (kv_max_value_size if larger), 512 KiB by default.
    txn_max_req_len: int = 512 * 1024
    # Server option session_ttl_min (Consul's default is 10s); tests may lower it.
    session_ttl_min_ns: int = 10 * SECOND
    session_ttl_max_ns: int = 24 * 60 * MINUTE
