"""The Consul test server's `limits.http_max_conns_per_client` (default 200, as Consul's).

Consul counts the open connections of each client IP; one over the limit gets a 429 with
go-connlimit's text and is closed (agent/agent.go: HTTPConnStateFuncWithDefault429Handler).
"""

from __future__ import annotations

import http.client
import socket

from bridge.testing.consul import ConsulServer
from tests.conftest import eventually


def open_connection(server: ConsulServer) -> http.client.HTTPConnection:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/v1/status/leader")
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    return conn


def admitted(server: ConsulServer) -> bool:
    try:
        open_connection(server).close()
    except (OSError, http.client.HTTPException):
        return False  # closed before the answer was read: refused
    return True


def test_a_connection_over_the_limit_gets_429_and_is_closed_until_one_closes():
    with ConsulServer(jitter=False, http_max_conns_per_client=3) as server:
        held = [open_connection(server) for _ in range(3)]
        try:
            host, port = server.address
            with socket.create_connection((host, port), timeout=10) as extra:
                extra.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := extra.recv(4096):  # read until the server closes
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), answer
            assert answer.endswith(b"Your IP is issuing too many concurrent connections, please rate limit your "
                                   b"calls\n"), answer
            held.pop().close()
            eventually(lambda: admitted(server), what="a slot freed by a closed connection")
        finally:
            for conn in held:
                conn.close()


def test_the_default_limit_is_consuls_200():
    with ConsulServer(jitter=False) as server:
        assert server.http_max_conns_per_client == 200
