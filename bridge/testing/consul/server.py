"""ConsulServer: the in-process fake Consul agent+server, its lifecycle and its test hooks.

Composition root of the package: builds the store, catalog, agent, ACLs and faults,
puts the router behind the HTTP transport, and exposes the small API the rest of the
project (tests, the `bridge fake-consul` CLI) uses:

    server = ConsulServer(host="127.0.0.1", port=0).start()
    server.url, server.address
    server.load("catalog.yaml")          # or a list of catalog register bodies
    server.state.index                   # the store (snapshot/restore/reset_index)
    server.faults.no_leader(count=1)     # fault injection
    server.requests.records()            # what clients sent (tokens redacted)
    server.acl.create_token({...})       # with acl_master_token set (or /v1/acl/policy, /v1/acl/token)
    ConsulServer(tls=True, verify_incoming=True).start().tls.write(directory)   # HTTPS (tls.py)
    server.config.max_txn_ops = 64       # AgentConfig fields may be changed while running
    ConsulServer(clock=ManualClock())    # time-driven behaviour on a clock the test moves
    server.stop()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from bridge.testing.consul import (
    acl_login,
    api_acl,
    api_agent,
    api_catalog,
    api_health,
    api_kv,
    api_misc,
    api_session,
    api_txn,
)
from bridge.testing.consul.acl import AclRegistry
from bridge.testing.consul.admin import PREFIX as ADMIN_PREFIX
from bridge.testing.consul.admin import handle_admin
from bridge.testing.consul.agent import Agent
from bridge.testing.consul.catalog import Catalog
from bridge.testing.consul.config import AgentConfig
from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import Abort
from bridge.testing.consul.faults import Faults, RequestLog, RequestRecord, redact_body, redact_query
from bridge.testing.consul.loader import Source, load_registrations
from bridge.testing.consul.protocol import Request, Response, text_response
from bridge.testing.consul.query import request_token
from bridge.testing.consul.router import Router
from bridge.testing.consul.session_timers import SessionTimers
from bridge.testing.consul.state import Store
from bridge.testing.consul.tls import ConsulTLS, default_names
from bridge.testing.consul.transport import Transport
from bridge.testing.consul.wire import SECOND
from bridge.testing.timers import SYSTEM, Clock

_UNSPECIFIED_HOSTS = {"", "0.0.0.0", "::", "[::]"}


class ConsulServer:
    """A fake Consul agent (also acting as the cluster's only server) on a real HTTP port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        node_name: str = "consul-agent",
        datacenter: str = "dc1",
        jitter: bool = True,
        acl_master_token: str | None = None,
        *,
        acl_default_policy: str = "deny",
        max_txn_ops: int = 128,
        http_max_conns_per_client: int = 200,
        session_ttl_min: float = 10.0,
        version: str = "1.22.0",
        clock: Clock = SYSTEM,
        tls: bool = False,
        verify_incoming: bool = False,
        tls_names: Sequence[str] = (),
    ) -> None:
        if (verify_incoming or tls_names) and not tls:
            raise ValueError("verify_incoming and tls_names need tls=True")
        self.host = host
        node_address = "127.0.0.1" if host in _UNSPECIFIED_HOSTS else host.strip("[]")
        self.config = AgentConfig(
            node_name=node_name,
            datacenter=datacenter,
            node_address=node_address,
            version=version,
            jitter=jitter,
            max_txn_ops=max_txn_ops,
            session_ttl_min_ns=int(session_ttl_min * SECOND),
        )
        self.clock = clock
        self.state = Store(clock=clock)
        self.faults = Faults(self.state, clock)
        self.requests = RequestLog()
        self.acl = AclRegistry(acl_master_token, default_policy=acl_default_policy, clock=clock)
        catalog = Catalog(self.state.lock_delays)
        self.api = Api(
            config=self.config,
            store=self.state,
            catalog=catalog,
            agent=Agent(self.config, self.state, catalog, clock),
            acl=self.acl,
            faults=self.faults,
            requests=self.requests,
            session_timers=SessionTimers(self._expire_session, clock),
        )
        routes = [
            *api_catalog.ROUTES,
            *api_health.ROUTES,
            *api_agent.ROUTES,
            *api_kv.ROUTES,
            *api_session.ROUTES,
            *api_txn.ROUTES,
            *api_misc.ROUTES,
            *api_acl.ROUTES,
            *acl_login.ROUTES,
        ]
        self.router = Router(self.api, routes)
        self.tls = ConsulTLS(tls_names or default_names(host, datacenter), datacenter=datacenter,
                             verify_incoming=verify_incoming) if tls else None
        # Consul's default limits.http_max_conns_per_client; 0 lifts it.
        self.http_max_conns_per_client = http_max_conns_per_client
        self._transport = Transport(host, port, self._handle, self.tls.server_context() if self.tls else None,
                                    max_conns_per_client=http_max_conns_per_client)
        self.faults.attach_outage_hooks(self._transport.close_listener, self._transport.reopen)
        self._stopping = threading.Event()
        self._started = False
        self.api.agent.bootstrap()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve in background threads; returns once the port accepts connects."""
        if self._started:
            raise RuntimeError("already started")
        self._transport.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Close the listener and every connection, end blocking queries, join threads."""
        self._stopping.set()
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        self.faults.cancel_timers()
        self._transport.stop()
        self.api.session_timers.stop()
        self.api.agent.stop()

    def __enter__(self) -> Self:
        return self.start() if not self._started else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self._transport.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self._transport.port}"

    # -- test hooks ---------------------------------------------------------------------

    @property
    def refused_connections(self) -> int:
        """Connections refused so far for `http_max_conns_per_client`."""
        return self._transport.refused_connections

    def load(self, source: Source) -> int:
        """Preload catalog registrations from a YAML/JSON file or a list of register bodies."""
        return load_registrations(self.api, source)

    def anti_entropy(self) -> None:
        """Run one agent anti-entropy pass (deletes unknown entries on the agent's node)."""
        self.api.agent.anti_entropy()

    # -- request handling ------------------------------------------------------------------

    def _expire_session(self, session_id: str) -> None:
        if not self.state.closing:
            api_session.expire_session(self.api, session_id)

    def _handle(self, req: Request) -> Response:
        if req.path.startswith(ADMIN_PREFIX):
            return handle_admin(self.api, req)
        delay = self.faults.delay_for(req.path)
        if delay:
            self.clock.sleep(delay, self._stopping)
        began = time.perf_counter()  # after any injected delay: `took` is the handling alone
        rule = self.faults.take_error(req.method, req.path)
        if rule is not None:
            response = text_response(rule.status, rule.body, rule.headers)
            response.set_header("X-Consul-Default-ACL-Policy", self.acl.default_policy)
        else:
            try:
                response = self.router.dispatch(req)
            except Abort:
                # status 0: the connection was dropped without a reply
                self._log(req, 0, time.perf_counter() - began)
                raise
            except Exception as exc:  # a bug in the fake must not look like a network failure
                response = text_response(500, f"fake consul internal error: {exc!r}")
        self._log(req, response.status, time.perf_counter() - began)
        return response

    def _log(self, req: Request, status: int, took: float) -> None:
        _, source = request_token(req)
        self.requests.append(
            RequestRecord(
                method=req.method,
                path=req.path,
                query=redact_query(req.raw_query),
                status=status,
                token_source=source,
                body=redact_body(req.body),
                at=time.time(),
                took=took,
            )
        )
