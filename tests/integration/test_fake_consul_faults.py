"""Fault injection and test hooks of the fake Consul (always the fake: a real agent has none).

These tests pin down what clients will meet when the bridge's own tests inject
failures: outages on the same port, leaderless 500s, 429s, slow answers, connections cut
mid-blocking-query, KnownLeader false, backwards indexes, and the request log.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import consul as pyconsul
import pytest
import requests
from consul.exceptions import ClientError

from bridge.testing.consul import ConsulServer
from bridge.testing.timers import ManualClock
from tests.conftest import assert_pending, eventually
from tests.integration import conftest_consul
from tests.integration.conftest_consul import ConsulTarget, fake_consul, fake_target

server = conftest_consul.fake_server()
target = conftest_consul.target
pool = conftest_consul.pool


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def timed(clock: ManualClock) -> Iterator[ConsulServer]:
    """A fake on `clock`: its waits, delays and timers end only when the test moves the clock."""
    with fake_consul(clock=clock) as fake:
        yield fake


def waiting_for(clock: ManualClock, seconds: float) -> None:
    """Until something on `clock` waits with exactly `seconds` to go (and nothing else waits)."""
    eventually(lambda: clock.waiting() == [pytest.approx(seconds)], 5, f"one wait of {seconds}s ({clock.waiting()})")


def connect_refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # e.g. accepted then reset while the listener was closing
    return False


def held_blocking_query(target: ConsulTarget, pool: ThreadPoolExecutor, wait: str = "30s") -> Future[Any]:
    """A /v1/catalog/services blocking query, asserted to be still waiting for a change."""
    index = target.http("GET", "/v1/catalog/services").index
    query = pool.submit(lambda: target.client().catalog.services(index=index, wait=wait))
    assert_pending(query)
    return query


def test_start_reports_a_real_port_and_url(server: ConsulServer) -> None:
    host, port = server.address
    assert port > 0
    assert server.url == f"http://{host}:{port}"


def test_outage_refuses_connections_then_recovers_on_the_same_port(server: ConsulServer, target: ConsulTarget) -> None:
    address = server.address
    server.faults.outage()
    assert connect_refused(address)
    with pytest.raises(requests.exceptions.ConnectionError):
        target.client().status.leader()
    server.faults.recover()
    assert server.address == address
    assert target.http("GET", "/v1/status/leader").status == 200


def test_timed_outage_recovers_by_itself(timed: ConsulServer, clock: ManualClock) -> None:
    timed.faults.outage(duration=0.3)
    assert connect_refused(timed.address)
    waiting_for(clock, 0.3)
    clock.advance(0.29)
    waiting_for(clock, 0.01)
    assert connect_refused(timed.address), "not before its duration"
    clock.advance(0.02)  # past the deadline whatever the float sum
    eventually(lambda: not connect_refused(timed.address), 5, "listening again")
    assert fake_target(timed).http("GET", "/v1/status/peers").status == 200


def test_outage_cuts_a_held_blocking_query(
    server: ConsulServer, target: ConsulTarget, pool: ThreadPoolExecutor
) -> None:
    query = held_blocking_query(target, pool)
    server.faults.outage()
    with pytest.raises(requests.exceptions.ConnectionError):
        query.result(timeout=5)
    server.faults.recover()


def test_no_cluster_leader_500(server: ConsulServer, target: ConsulTarget) -> None:
    server.faults.no_leader(count=1)
    response = target.http("GET", "/v1/catalog/services")
    assert (response.status, response.text) == (500, "No cluster leader")
    assert target.http("GET", "/v1/catalog/services").status == 200  # count=1 used up
    server.faults.no_leader(count=1)
    with pytest.raises(pyconsul.ConsulException, match="No cluster leader"):
        target.client().catalog.services()


def test_rate_limit_429(server: ConsulServer, target: ConsulTarget) -> None:
    server.faults.rate_limit(count=2, retry_after=1)
    first = target.http("PUT", "/v1/catalog/register", {"Node": "n", "Address": "a"})
    assert first.status == 429
    assert first.header("Retry-After") == "1"
    with pytest.raises(ClientError, match="429"):
        target.client().catalog.nodes()
    assert target.http("GET", "/v1/catalog/nodes").status == 200


def test_errors_can_target_a_path_prefix(server: ConsulServer, target: ConsulTarget) -> None:
    server.faults.fail_requests(503, "unavailable", path_prefix="/v1/health/")
    assert target.http("GET", "/v1/health/service/x").status == 503
    assert target.http("GET", "/v1/catalog/services").status == 200
    server.faults.clear()
    assert target.http("GET", "/v1/health/service/x").status == 200


def test_slow_responses(timed: ConsulServer, clock: ManualClock, pool: ThreadPoolExecutor) -> None:
    target = fake_target(timed)
    timed.faults.slow(0.4)
    slow = pool.submit(lambda: target.http("GET", "/v1/status/leader"))
    waiting_for(clock, 0.4)
    clock.advance(0.3)
    assert_pending(slow)
    clock.advance(0.15)  # past the deadline whatever the float sum
    assert slow.result(timeout=5).status == 200
    timed.faults.slow(0)
    assert target.http("GET", "/v1/status/leader").status == 200, "answered without the clock moving"


def test_drop_cuts_blocking_queries_without_a_response(
    server: ConsulServer, target: ConsulTarget, pool: ThreadPoolExecutor
) -> None:
    query = held_blocking_query(target, pool)
    server.faults.drop_blocking_queries()
    with pytest.raises(requests.exceptions.ConnectionError):
        query.result(timeout=5)
    # Non-blocking requests are unaffected and the server keeps serving.
    assert target.http("GET", "/v1/catalog/services").status == 200
    dropped = [r for r in server.requests.records() if r.status == 0]
    assert [r.path for r in dropped] == ["/v1/catalog/services"]


def test_drop_after_a_delay(timed: ConsulServer, clock: ManualClock, pool: ThreadPoolExecutor) -> None:
    target = fake_target(timed)
    timed.faults.drop_blocking_queries_after(0.2)
    index = target.http("GET", "/v1/catalog/services").index
    query = pool.submit(lambda: target.client().catalog.services(index=index, wait="30s"))
    waiting_for(clock, 0.2)  # the drop comes before the 30s wait
    clock.advance(0.2)
    with pytest.raises(requests.exceptions.ConnectionError):
        query.result(timeout=5)


def test_known_leader_false_header(server: ConsulServer, target: ConsulTarget) -> None:
    server.faults.set_known_leader(False, last_contact_ms=1500)
    response = target.http("GET", "/v1/catalog/services?stale")
    assert response.header("X-Consul-KnownLeader") == "false"
    assert response.header("X-Consul-LastContact") == "1500"
    assert target.http("GET", "/v1/status/leader").json() == ""


def test_reset_index_moves_the_index_backwards(
    timed: ConsulServer, clock: ManualClock, pool: ThreadPoolExecutor
) -> None:
    target = fake_target(timed)
    for i in range(5):
        target.register({"Node": f"n{i}", "Address": "10.0.0.1", "Service": {"Service": f"s{i}"}})
    high = target.http("GET", "/v1/catalog/services").index
    timed.faults.reset_index(2)
    assert timed.state.index == 2
    after = target.http("GET", "/v1/catalog/services")
    assert after.index <= 2 < high
    # A client still holding the old index blocks for its whole wait and gets the lower one.
    blocked = pool.submit(lambda: target.http("GET", f"/v1/catalog/services?index={high}&wait=1s"))
    waiting_for(clock, 1.0)
    clock.advance(1.0)
    assert blocked.result(timeout=5).index == after.index
    # New writes continue from the reset index.
    target.register({"Node": "fresh", "Address": "10.0.0.2"})
    assert target.http("GET", "/v1/catalog/nodes").index == 3


def test_snapshot_restore_brings_back_old_state_and_index(server: ConsulServer, target: ConsulTarget) -> None:
    target.register({"Node": "before", "Address": "10.0.0.1"})
    snap = server.state.snapshot()
    target.register({"Node": "after", "Address": "10.0.0.1"})
    high = target.http("GET", "/v1/catalog/nodes").index
    server.state.restore(snap)
    response = target.http("GET", "/v1/catalog/nodes")
    names = {n["Node"] for n in response.json()}
    assert "before" in names and "after" not in names
    assert response.index < high


def test_request_log_records_requests_with_tokens_redacted(server: ConsulServer, target: ConsulTarget) -> None:
    client = target.client(token="s3cr3t")
    client.catalog.register("n1", "10.0.0.1")
    [record] = server.requests.find(path="/v1/catalog/register")
    assert record.method == "PUT"
    assert record.status == 200
    assert record.query["token"] == ["<hidden>"]
    assert record.token_source == "query"
    assert "s3cr3t" not in record.body
    assert '"node":"n1"' in record.body


def test_admin_http_api(server: ConsulServer, target: ConsulTarget) -> None:
    assert (
        target.http("PUT", "/_admin/faults/error", {"status": 500, "body": "No cluster leader", "count": 1}).status
        == 200
    )
    assert target.http("GET", "/v1/catalog/nodes").text == "No cluster leader"
    assert target.http("PUT", "/_admin/faults/known-leader", {"known": False}).status == 200
    assert target.http("GET", "/v1/catalog/nodes").header("X-Consul-KnownLeader") == "false"
    assert target.http("PUT", "/_admin/faults/clear").status == 200
    log = target.http("GET", "/_admin/requests").json()
    assert [entry["path"] for entry in log] == ["/v1/catalog/nodes", "/v1/catalog/nodes"]
    target.register({"Node": "n", "Address": "10.0.0.1"})
    assert target.http("GET", "/_admin/state/index").json()["Index"] > 1
    assert target.http("PUT", "/_admin/state/reset-index", {"index": 1}).status == 200
    assert target.http("GET", "/_admin/state/index").json() == {"Index": 1}
    assert target.http("PUT", "/_admin/faults/outage", {}).status == 400  # needs "seconds"


def test_admin_request_log_has_handling_times_and_reads_from_a_position(
    server: ConsulServer, target: ConsulTarget
) -> None:
    target.register({"Node": "n", "Address": "10.0.0.1", "Service": {"ID": "a", "Service": "a"}})
    target.http("GET", "/v1/catalog/node/n")
    log = target.http("GET", "/_admin/requests").json()
    assert [entry["path"] for entry in log] == ["/v1/catalog/register", "/v1/catalog/node/n"]
    assert all(isinstance(entry["took"], float) and entry["took"] >= 0 for entry in log)
    assert all(record.took >= 0 for record in server.requests.records())
    tail = target.http("GET", "/_admin/requests?since=1").json()
    assert [entry["path"] for entry in tail] == ["/v1/catalog/node/n"]
    assert target.http("GET", "/_admin/requests?since=5").json() == []
    assert target.http("GET", "/_admin/requests?since=-1").status == 400
    counted = target.http("GET", "/_admin/state/node/N").json()
    assert counted == {"Index": server.state.index, "Services": 1}
    assert target.http("GET", "/_admin/state/node/nobody").json()["Services"] == 0
    assert len(server.requests) == 2  # admin reads are not logged


def test_admin_outage_is_acknowledged_then_takes_effect(server: ConsulServer, target: ConsulTarget) -> None:
    response = target.http("PUT", "/_admin/faults/outage", {"seconds": 0.5})
    assert (response.status, response.json()) == (200, True)
    eventually(lambda: connect_refused(server.address))
    eventually(lambda: not connect_refused(server.address))
    assert target.http("GET", "/v1/status/leader").status == 200


def test_max_txn_ops_can_emulate_an_older_release() -> None:
    with fake_consul(max_txn_ops=64) as server:
        target = fake_target(server)
        ops = [{"KV": {"Verb": "get", "Key": f"k{i}"}} for i in range(65)]
        response = target.http("PUT", "/v1/txn", ops)
        assert (response.status, response.text) == (413, "Transaction contains too many operations (65 > 64)")


def test_session_ttl_expiry_releases_locks() -> None:
    clock = ManualClock()
    with fake_consul(session_ttl_min=0.1, clock=clock) as server:
        target = fake_target(server)
        client = target.client()
        # py-consul refuses TTLs under 10s client-side, so create the session directly.
        created = target.http("PUT", "/v1/session/create", {"TTL": "500ms", "LockDelay": "0s"})
        assert created.status == 200, created.text
        sid = created.json()["ID"]
        assert client.kv.put("leader", "me", acquire=sid)
        # Consul invalidates after TTL x 2 without renewal: not at the TTL itself.
        waiting_for(clock, 1.0)
        clock.advance(0.5)
        waiting_for(clock, 0.5)
        assert client.session.info(sid)[1] is not None, "still valid at the TTL"
        clock.advance(0.5)
        eventually(lambda: client.session.info(sid)[1] is None, 5, "the session to expire at TTL x 2")
        assert "Session" not in client.kv.get("leader")[1]


def test_anti_entropy_removes_catalog_entries_on_the_agent_node(server: ConsulServer, target: ConsulTarget) -> None:
    node = server.config.node_name
    target.register({"Node": node, "Address": "127.0.0.1", "Service": {"Service": "intruder"}})
    target.client().agent.service.register("owned")
    server.anti_entropy()
    services = target.http("GET", f"/v1/catalog/node/{node}").json()["Services"]
    assert set(services) == {"consul", "owned"}


def test_load_preloads_registrations_from_yaml(server: ConsulServer, target: ConsulTarget, tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "- node: k8s-sync\n"
        "  address: 127.0.0.1\n"
        "  service: {service: web, id: web-1, port: 80, tags: [k8s]}\n"
        "- Node: k8s-sync\n"
        "  SkipNodeUpdate: true\n"
        "  Service: {Service: db, Port: 5432}\n",
        encoding="utf-8",
    )
    assert server.load(path) == 2
    services = target.http("GET", "/v1/catalog/services").json()
    assert services["web"] == ["k8s"] and services["db"] == []
    assert server.load([{"Node": "other", "Address": "10.0.0.1"}]) == 1


def test_load_rejects_invalid_items_before_writing(server: ConsulServer, target: ConsulTarget) -> None:
    with pytest.raises(ValueError, match=r"registration #1: Must provide node"):
        server.load([{"Node": "ok", "Address": "10.0.0.1"}, {"Address": "10.0.0.2"}])
    assert "ok" not in {n["Node"] for n in target.http("GET", "/v1/catalog/nodes").json()}


def test_stop_ends_held_blocking_queries(pool: ThreadPoolExecutor) -> None:
    # On a clock that never moves only stop() can end the query; the guard in tests/conftest.py
    # fails the test if stop() left the query's connection thread behind.
    server = ConsulServer(jitter=False, clock=ManualClock()).start()
    target = fake_target(server)
    query = held_blocking_query(target, pool, wait="5m")
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        query.result(timeout=5)


@pytest.mark.parametrize(
    ("wait", "seconds"),
    [("&wait=20m", 600.0), ("&wait=10m", 600.0), ("", 300.0), ("&wait=0s", 300.0), ("&wait=90s", 90.0)],
)
def test_wait_is_capped_and_defaulted_like_consul(
    timed: ConsulServer, clock: ManualClock, pool: ThreadPoolExecutor, wait: str, seconds: float
) -> None:
    # Consul's MaxQueryTime (10m) caps a longer wait; no wait, or 0, means DefaultQueryTime (5m).
    target = fake_target(timed)
    index = target.http("GET", "/v1/catalog/services").index
    query = pool.submit(lambda: target.http("GET", f"/v1/catalog/services?index={index}{wait}"))
    waiting_for(clock, seconds)
    clock.advance(seconds)
    assert query.result(timeout=5).index == index


def test_jitter_adds_at_most_a_sixteenth_of_the_wait(pool: ThreadPoolExecutor) -> None:
    clock = ManualClock()
    with fake_consul(jitter=True, clock=clock) as server:
        target = fake_target(server)
        index = target.http("GET", "/v1/catalog/services").index
        waits = []
        for _ in range(8):
            query = pool.submit(lambda: target.http("GET", f"/v1/catalog/services?index={index}&wait=800ms"))
            [wait] = eventually(clock.waiting, 5, "the query to block")
            waits.append(wait)
            clock.advance(wait)
            assert query.result(timeout=5).index == index
    assert all(0.8 <= wait <= 0.8 * (1 + 1 / 16) for wait in waits), waits
    assert len(set(waits)) > 1, f"jitter is random: {waits}"
