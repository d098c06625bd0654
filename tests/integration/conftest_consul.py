"""Shared helpers for the Consul conformance tests (tests/integration/test_fake_consul_*.py).

The tests are written as a specification of Consul's HTTP behaviour. By default they run
against the in-process fake; set BRIDGE_TEST_CONSUL_ADDR=host:port to run the portable
ones against a real agent (e.g. `consul agent -dev`) unchanged. Tests that need fault
hooks or ACL tokens always use the fake and live in the *_faults / *_acl files.

Every name a test creates gets a random suffix so that runs against a shared real agent
do not collide, and what a test registers is removed afterwards.

A test module binds the fixtures it uses to their names, e.g. `consul = conftest_consul.consul`
(importing a fixture by name instead would make every test argument of that name a
redefinition of the import, which ruff reports as F811).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import consul as pyconsul
import pytest

from bridge.testing.consul import ConsulServer
from bridge.testing.timers import ManualClock
from tests.conftest import eventually

ENV_ADDR = "BRIDGE_TEST_CONSUL_ADDR"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def index(self) -> int:
        return int(self.header("X-Consul-Index") or 0)


@dataclass
class ConsulTarget:
    """The Consul under test: address, clients, and the fake behind it (None if real)."""

    host: str
    port: int
    fake: ConsulServer | None
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def clock(self) -> ManualClock | None:
        """The fake's clock when a test moves it by hand (None for a real agent)."""
        clock = self.fake.clock if self.fake is not None else None
        return clock if isinstance(clock, ManualClock) else None

    def run_out_wait(self, seconds: float) -> None:
        """Let a blocked query's `wait` of `seconds` run out.

        On a fake with a manual clock: once a query is blocked with exactly `seconds` to go
        (which also shows that nothing has ended or shortened its wait), the clock moves by
        that much. A real agent's clock moves by itself, so there is nothing to do.
        """
        clock = self.clock
        if clock is None:
            return
        eventually(lambda: any(abs(left - seconds) < 1e-6 for left in clock.waiting()), 5,
                   f"a query blocked with {seconds}s to go (waiting: {clock.waiting()})")
        clock.advance(seconds)

    def client(self, **kwargs: Any) -> pyconsul.Consul:
        return pyconsul.Consul(host=self.host, port=self.port, **kwargs)

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> RawResponse:
        """One raw HTTP exchange; dicts/lists are sent as JSON, str/bytes as-is."""
        if body is not None and not isinstance(body, str | bytes):
            body = json.dumps(body)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return RawResponse(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    @property
    def agent_node(self) -> str:
        return self.http("GET", "/v1/agent/self").json()["Config"]["NodeName"]

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def register(self, body: dict[str, Any]) -> None:
        """PUT /v1/catalog/register, asserting success, and deregister the node afterwards."""
        response = self.http("PUT", "/v1/catalog/register", body)
        assert response.status == 200, response.text
        node = body.get("Node") or body.get("node")
        if node:
            self.cleanups.append(lambda: self.http("PUT", "/v1/catalog/deregister", {"Node": node}))

    def run_cleanups(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(OSError):
                cleanup()
        self.cleanups.clear()


def _parse_addr(raw: str) -> tuple[str, int]:
    raw = raw.removeprefix("http://").rstrip("/")
    host, _, port = raw.rpartition(":")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def consul_under_test(**fake_kwargs: Any) -> Iterator[ConsulTarget]:
    """A real Consul if BRIDGE_TEST_CONSUL_ADDR is set, otherwise a fresh fake built with `fake_kwargs`."""
    addr = os.environ.get(ENV_ADDR)
    if addr:
        host, port = _parse_addr(addr)
        target = ConsulTarget(host, port, fake=None)
        try:
            yield target
        finally:
            target.run_cleanups()
        return
    with fake_consul(**fake_kwargs) as server:
        yield fake_target(server)


@contextlib.contextmanager
def fake_consul(**kwargs: Any) -> Iterator[ConsulServer]:
    """A started fake with jitter off (deterministic blocking times), stopped afterwards."""
    kwargs.setdefault("jitter", False)
    server = ConsulServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def fake_target(server: ConsulServer) -> ConsulTarget:
    host, port = server.address
    return ConsulTarget(host, port, fake=server)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def consul() -> Iterator[ConsulTarget]:
    """The Consul under test (see consul_under_test)."""
    with consul_under_test() as target:
        yield target


def consul_on_manual_clock() -> Any:
    """A `consul` fixture whose fake runs on a ManualClock: waits end by `run_out_wait` only."""

    @pytest.fixture
    def consul() -> Iterator[ConsulTarget]:
        with consul_under_test(clock=ManualClock()) as target:
            yield target

    return consul


def fake_server(**kwargs: Any) -> Any:
    """A `server` fixture: a started fake built with `kwargs` (see fake_consul)."""

    @pytest.fixture
    def server() -> Iterator[ConsulServer]:
        with fake_consul(**kwargs) as fake:
            yield fake

    return server


@pytest.fixture
def target(server: ConsulServer) -> ConsulTarget:
    """A client-side view of the `server` fixture."""
    return fake_target(server)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor
