"""The bundle of collaborators every endpoint receives.

Endpoints take one `Api` argument instead of reaching for globals, which keeps them
plain functions over (api, request) and lets several fake agents run in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.testing.consul.acl import AclRegistry
from bridge.testing.consul.agent import Agent
from bridge.testing.consul.catalog import Catalog
from bridge.testing.consul.config import AgentConfig
from bridge.testing.consul.faults import Faults, RequestLog
from bridge.testing.consul.session_timers import SessionTimers
from bridge.testing.consul.state import Store


@dataclass
class Api:
    """Everything an endpoint handler may use."""

    config: AgentConfig
    store: Store
    catalog: Catalog
    agent: Agent
    acl: AclRegistry
    faults: Faults
    requests: RequestLog
    session_timers: SessionTimers
