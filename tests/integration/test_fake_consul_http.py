"""Consul's general HTTP conventions: routing errors, methods, encodings, tokens, keep-alive.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR.
"""

from __future__ import annotations

import http.client

from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget

consul = conftest_consul.consul


def test_unknown_v1_path_is_404_with_consul_text(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/nonsense")
    assert response.status == 404
    assert response.text == "Invalid URL path: not a recognized HTTP API endpoint\n"


def test_wrong_method_is_405_with_allow_header(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/register")
    assert (response.status, response.text) == (405, "method GET not allowed")
    assert response.header("Allow") == "OPTIONS,PUT"
    post = consul.http("POST", "/v1/catalog/services")
    assert (post.status, post.text) == (405, "method POST not allowed")
    assert post.header("Allow") == "OPTIONS,GET"


def test_options_answers_with_allow_only(consul: ConsulTarget) -> None:
    response = consul.http("OPTIONS", "/v1/kv/anything")
    assert response.status == 200
    assert response.header("Allow") == "OPTIONS,GET,PUT,DELETE"
    assert response.body == b""


def test_errors_are_plain_text_and_successes_json(consul: ConsulTarget) -> None:
    error = consul.http("GET", "/v1/catalog/services?index=x")
    assert error.header("Content-Type") == "text/plain; charset=utf-8"
    ok = consul.http("GET", "/v1/catalog/services")
    assert ok.header("Content-Type") == "application/json"
    if consul.fake is not None:
        assert b"\n" not in ok.body  # compact unless ?pretty (a -dev agent always indents)
    pretty = consul.http("GET", "/v1/catalog/services?pretty")
    assert pretty.body.endswith(b"\n") and b"\n    " in pretty.body


def test_keys_are_matched_case_insensitively(consul: ConsulTarget) -> None:
    name = consul.unique("case")
    consul.register({"NODE": consul.unique("n"), "aDdReSs": "10.0.0.1", "service": {"SERVICE": name, "port": 7}})
    [entry] = consul.http("GET", f"/v1/catalog/service/{name}").json()
    assert entry["ServicePort"] == 7


def test_keep_alive_serves_several_requests_on_one_connection(consul: ConsulTarget) -> None:
    conn = http.client.HTTPConnection(consul.host, consul.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/v1/status/leader")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
        sock = conn.sock
        conn.request("GET", "/v1/status/peers")
        conn.getresponse().read()
        assert conn.sock is sock  # same TCP connection reused
    finally:
        conn.close()


def test_status_leader_and_peers(consul: ConsulTarget) -> None:
    client = consul.client()
    leader = client.status.leader()
    assert leader and ":" in leader
    assert leader in client.status.peers()


def test_default_acl_policy_header_on_every_api_response(consul: ConsulTarget) -> None:
    for method, path in (("GET", "/v1/catalog/nodes"), ("PUT", "/v1/catalog/register"), ("GET", "/v1/kv/x")):
        assert consul.http(method, path).header("X-Consul-Default-ACL-Policy") in ("allow", "deny")


def test_dc_defaults_to_the_agents_datacenter(consul: ConsulTarget) -> None:
    dc = consul.client().agent.self()["Config"]["Datacenter"]
    assert consul.http("GET", f"/v1/catalog/services?dc={dc}").status == 200
