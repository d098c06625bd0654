"""Consul blocking queries: ?index/&wait semantics and the query-meta headers.

Runs against the in-process fake, or a real agent via BRIDGE_TEST_CONSUL_ADDR. The fake runs
on a manual clock: a query's wait ends only when the test runs it out (`run_out_wait`), so
"woken by a change" and "ran into its wait" are told apart by what ended the query, not by
how long it took. Against a real agent the same waits are short (1s) and run out by themselves.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import assert_pending
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget, RawResponse

consul = conftest_consul.consul_on_manual_clock()
pool = conftest_consul.pool

# Requests that must not block get this long (a real deadline): far below the 10m wait they
# name, so an answer within it was not held for the wait; far above any loaded machine's latency.
PROMPT = 30.0


def register(consul: ConsulTarget, name: str, port: int = 80) -> None:
    consul.register({"Node": f"node-{name}", "Address": "10.3.0.1", "Service": {"Service": name, "Port": port}})


def test_no_index_answers_immediately_even_with_wait(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/services?wait=10m", timeout=PROMPT)
    assert response.status == 200


def test_index_zero_does_not_block(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/services?index=0&wait=10m", timeout=PROMPT)
    assert response.status == 200


def test_query_meta_headers_are_always_present(consul: ConsulTarget) -> None:
    response = consul.http("GET", "/v1/catalog/services")
    assert response.index >= 1
    assert response.header("X-Consul-KnownLeader") == "true"
    assert response.header("X-Consul-LastContact") == "0"
    assert response.header("X-Consul-Effective-Consistency") == "leader"
    assert response.header("X-Consul-Default-ACL-Policy") in ("allow", "deny")
    stale = consul.http("GET", "/v1/catalog/services?stale")
    assert stale.header("X-Consul-Effective-Consistency") == "stale"
    consistent = consul.http("GET", "/v1/catalog/services?consistent")
    assert consistent.header("X-Consul-Effective-Consistency") == "consistent"


def test_relevant_change_wakes_the_query(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    name = consul.unique("web")
    register(consul, name)
    start = consul.http("GET", f"/v1/health/service/{name}")
    query = pool.submit(lambda: consul.http("GET", f"/v1/health/service/{name}?index={start.index}&wait=10m"))
    assert_pending(query)
    register(consul, name, port=81)
    response = query.result(timeout=PROMPT)  # woken: the 10m wait has not run out
    assert response.index > start.index
    assert response.json()[0]["Service"]["Port"] == 81


def test_change_to_another_service_does_not_end_the_query(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    watched, other = consul.unique("watched"), consul.unique("other")
    register(consul, watched)
    start = consul.http("GET", f"/v1/catalog/service/{watched}")
    query = pool.submit(lambda: consul.http("GET", f"/v1/catalog/service/{watched}?index={start.index}&wait=1s"))
    assert_pending(query)
    register(consul, other)
    consul.run_out_wait(1.0)  # on the fake: still blocked with its whole wait to go
    response = query.result(timeout=5)
    assert response.index == start.index


def test_timeout_returns_the_current_result_and_index(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    name = consul.unique("web")
    register(consul, name)
    start = consul.client().catalog.service(name)
    query = pool.submit(lambda: consul.client().catalog.service(name, index=start[0], wait="1s"))
    consul.run_out_wait(1.0)
    index, data = query.result(timeout=5)
    assert index == start[0]
    assert data == start[1]


def test_index_from_the_future_blocks_for_the_full_wait_then_returns_the_lower_index(
    consul: ConsulTarget, pool: ThreadPoolExecutor
) -> None:
    current = consul.http("GET", "/v1/catalog/services").index
    future_index = current + 1000
    query = pool.submit(lambda: consul.http("GET", f"/v1/catalog/services?index={future_index}&wait=1s"))
    consul.run_out_wait(1.0)
    response = query.result(timeout=5)
    assert response.index == current < future_index


def test_service_appearing_wakes_a_query_for_a_missing_service(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    name = consul.unique("later")
    start = consul.http("GET", f"/v1/health/service/{name}")
    assert start.json() == []
    query = pool.submit(lambda: consul.http("GET", f"/v1/health/service/{name}?index={start.index}&wait=10m"))
    assert_pending(query)
    register(consul, name)
    response: RawResponse = query.result(timeout=PROMPT)
    assert [e["Service"]["Service"] for e in response.json()] == [name]


def test_kv_watch_on_one_key_ignores_other_keys(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    base = consul.unique("watch")
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{base}?recurse"))
    consul.http("PUT", f"/v1/kv/{base}/a", "1")
    start = consul.http("GET", f"/v1/kv/{base}/a")
    query = pool.submit(lambda: consul.http("GET", f"/v1/kv/{base}/a?index={start.index}&wait=1s"))
    assert_pending(query)
    consul.http("PUT", f"/v1/kv/{base}/b", "2")
    consul.run_out_wait(1.0)  # on the fake: still blocked with its whole wait to go
    response = query.result(timeout=5)
    assert response.index == start.index


def test_kv_watch_wakes_on_its_key(consul: ConsulTarget, pool: ThreadPoolExecutor) -> None:
    key = consul.unique("watch")
    consul.cleanups.append(lambda: consul.http("DELETE", f"/v1/kv/{key}"))
    missing = consul.http("GET", f"/v1/kv/{key}")
    assert missing.status == 404
    query = pool.submit(lambda: consul.client().kv.get(key, index=missing.index, wait="10m"))
    assert_pending(query)
    consul.http("PUT", f"/v1/kv/{key}", "now")
    _, entry = query.result(timeout=PROMPT)
    assert entry["Value"] == b"now"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("wait=10", "Invalid wait time"),
        ("wait=soon", "Invalid wait time"),
        ("index=-1", "Invalid index"),
        ("index=abc", "Invalid index"),
        ("stale&consistent", "Cannot specify ?stale with ?consistent, conflicting semantics."),
    ],
)
def test_invalid_query_options_are_400(consul: ConsulTarget, query: str, message: str) -> None:
    response = consul.http("GET", f"/v1/catalog/services?{query}")
    assert (response.status, response.text) == (400, message)


def test_go_duration_syntax_is_accepted(consul: ConsulTarget) -> None:
    for wait in ("1m30s", "250ms", "0"):
        assert consul.http("GET", f"/v1/catalog/services?wait={wait}").status == 200
