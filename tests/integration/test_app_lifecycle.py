"""Start and stop in order: ports bound by start(), reads cut and writes let finish on stop,
and a loop thread that dies fails /healthz."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge import config
from bridge.app import App
from bridge.config import ConsulSettings
from bridge.consul.client import ConsulClient
from bridge.errors import Transient
from bridge.http import HealthServer
from tests.conftest import eventually
from tests.integration.harness import World, converged

# A call that is not cut would wait for its blocking query (60 s here) or its read
# timeout; ending at all within this generous bound is what the tests check.
ENDS_WITHIN = 10.0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Hanging:
    """A TCP server that reads one HTTP request per connection and answers only when told,
    so a test knows a request is in flight."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received = threading.Event()
        self.request_lines: list[str] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            self.request_lines.append(head.split(b"\r\n", 1)[0].decode())
            self._conns.append(conn)
            self.received.set()

    def answer(self, body: bytes) -> None:
        """Answer every request held, 200 with `body`."""
        for conn in self._conns:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"X-Consul-Index: 7\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)

    def close(self) -> None:
        # Closing alone does not wake a thread blocked in accept(); shutting it down does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()


@pytest.fixture()
def hanging() -> Iterator[Hanging]:
    server = Hanging()
    yield server
    server.close()


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_consul_client_close_cuts_a_blocking_query_in_flight(hanging):
    client = ConsulClient(ConsulSettings(address=hanging.url, wait=60))
    thread, outcome = in_thread(lambda: client.services(5))
    assert hanging.received.wait(ENDS_WITHIN), "the blocking query never arrived"
    assert "index=5" in hanging.request_lines[0], hanging.request_lines
    client.close()
    thread.join(ENDS_WITHIN)
    assert not thread.is_alive(), "close() did not cut the blocking query in flight"
    assert isinstance(outcome.get("error"), Transient), outcome


def test_consul_client_close_lets_a_transaction_in_flight_complete(hanging):
    client = ConsulClient(ConsulSettings(address=hanging.url))
    thread, outcome = in_thread(lambda: client.txn([{"KV": {"Verb": "get", "Key": "x"}}]))
    assert hanging.received.wait(ENDS_WITHIN), "the transaction never arrived"
    client.close()
    hanging.answer(b'{"Results": [{"KV": null}], "Errors": null}')
    thread.join(ENDS_WITHIN)
    assert outcome == {"value": [{"KV": None}]}, \
        f"a transaction sent before close() must get its answer, got {outcome}"


def test_health_server_binds_in_start_and_names_dead_threads():
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        HealthServer("127.0.0.1", port, lambda: [])  # a constructor binds nothing
    finally:
        taken.close()
    dead: dict[str, str] = {}
    server = HealthServer("127.0.0.1", 0, lambda: [], lambda: dead)
    server.start()
    try:
        host, port = server.address
        base = f"http://{host}:{port}"
        assert get(base + "/healthz") == (200, "ok\n")
        dead["reconciler"] = "RuntimeError: boom"
        status, body = get(base + "/healthz")
        assert status == 500 and "reconciler" in body and "boom" in body, (status, body)
    finally:
        server.stop()


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def test_a_loop_thread_that_dies_makes_healthz_fail_naming_it(world):
    app = world.start_bridge()
    converged(app)
    host, port = app.http.address
    health = f"http://{host}:{port}/healthz"
    assert get(health)[0] == 200

    def broken(timeout: float) -> float | None:
        raise RuntimeError("a bug outside the pass's own error handling")

    app.trigger.wait = broken  # the reconciler's next wait raises
    app.trigger.poke()
    def failing() -> str | None:
        status, body = get(health)
        return body if status == 500 else None

    body = eventually(failing, what="/healthz failing")
    assert "reconciler" in body and "RuntimeError" in body, body
    assert app.threads.dead().keys() == {"reconciler"}


def test_a_failed_start_stops_what_it_had_started(world):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        settings = config.build(environ={}, flags={
            "kubernetes.kubeconfig": str(world.kubeconfig), "consul.address": world.consul.url,
            "cluster_id": "test", "dns.listen": "127.0.0.1:0",
            "http.listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        app = App(settings)  # binds nothing yet: no error here
        with pytest.raises(OSError):
            app.start()
        assert app.dns.addresses == [], "DNS, started before HTTP failed, must be stopped"
        assert getattr(app.dns, "pids", []) == [], "DNS worker processes must be gone"
    finally:
        taken.close()
