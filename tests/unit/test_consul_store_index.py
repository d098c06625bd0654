"""The Consul test server's secondary indexes (state.KeyIndex) and its cheap blocking wake-ups.

The indexes must always equal what a scan of the tables gives, every indexed read must
answer exactly what the former whole-table scan answered (same records, same order), a
write must never change what readers of the committed tables (or a snapshot) see, and a
rolled-back txn must leave the indexes untouched. Requests go through the server's router
in this thread (no sockets, no threads), so every run is deterministic.

The blocking tests replace the store's Condition wait with a script of commits, which
makes "a write elsewhere woke the query" a plain function call.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.testing.consul import ConsulServer, render
from bridge.testing.consul.catalog import (
    checks_of_service_name,
    checks_on_node,
    instance_checks,
    service_names_like,
    services_named,
    services_on_node,
)
from bridge.testing.consul.errors import ApplyError
from bridge.testing.consul.protocol import Request, Response
from bridge.testing.consul.state import KeyIndex, Record, Tables
from bridge.testing.timers import ManualClock

NODES = ["n1", "N1", "n2", "n3"]
SERVICE_IDS = ["s1", "S1", "s2", "s3", "s4"]
NAMES = ["web", "Web", "db", "cache"]
CHECK_IDS = ["c1", "C1", "c2", "c3"]
STATUSES = ["passing", "warning", "critical"]


# -- driving the server in-process ------------------------------------------------------------


def call(server: ConsulServer, method: str, path: str, body: Any = None, query: str = "") -> Response:
    req = Request(
        method=method,
        path=path,
        raw_query=query,
        query=parse_qs(query, keep_blank_values=True),
        headers={},
        body=b"" if body is None else json.dumps(body).encode(),
    )
    return server.router.dispatch(req)


@pytest.fixture
def server() -> Iterator[ConsulServer]:
    srv = ConsulServer(jitter=False)
    yield srv
    srv.stop()


def fresh_server() -> ConsulServer:
    # Hypothesis runs many examples per test: each gets its own server (no fixture reuse).
    return ConsulServer(jitter=False)


# -- oracles: the scans the indexed reads replaced ---------------------------------------------


def scan_indexes(tables: Tables) -> dict[str, dict[Any, set[Any]]]:
    expected: dict[str, dict[Any, set[Any]]] = {
        name: defaultdict(set)
        for name in (
            "services_by_node",
            "services_by_name",
            "checks_by_instance",
            "checks_by_service_name",
        )
    }
    for key, service in tables.services.items():
        expected["services_by_node"][key[0]].add(key)
        expected["services_by_name"][service["ServiceName"].lower()].add(key)
    for key, check in tables.checks.items():
        expected["checks_by_instance"][(key[0], check["ServiceID"].lower())].add(key)
        expected["checks_by_service_name"][check["ServiceName"].lower()].add(key)
    return {name: dict(buckets) for name, buckets in expected.items()}


def indexes_of(tables: Tables) -> dict[str, dict[Any, frozenset[Any]]]:
    indexes: dict[str, KeyIndex[Any]] = {
        "services_by_node": tables.services_by_node,
        "services_by_name": tables.services_by_name,
        "checks_by_instance": tables.checks_by_instance,
        "checks_by_service_name": tables.checks_by_service_name,
    }
    return {name: {b: frozenset(keys) for b, keys in index.buckets().items()} for name, index in indexes.items()}


def scan_services_named(tables: Tables, name: str) -> list[Record]:
    keys = sorted(k for k, s in tables.services.items() if s["ServiceName"].lower() == name.lower())
    return [tables.services[k] for k in keys]


def scan_services_on_node(tables: Tables, node: str) -> list[Record]:
    return [tables.services[k] for k in sorted(k for k in tables.services if k[0] == node.lower())]


def scan_instance_checks(tables: Tables, node: str, service_id: str) -> list[Record]:
    node_checks = [tables.checks[k] for k in sorted(k for k in tables.checks if k[0] == node.lower())]
    own = [c for c in node_checks if c["ServiceID"].lower() == service_id.lower()]
    return [c for c in node_checks if not c["ServiceID"]] + own


def scan_checks_of_service_name(tables: Tables, name: str) -> list[Record]:
    keys = sorted(k for k, c in tables.checks.items() if c["ServiceName"].lower() == name.lower())
    return [tables.checks[k] for k in keys]


def scan_checks_on_node(tables: Tables, node: str) -> list[Record]:
    return [tables.checks[k] for k in sorted(k for k in tables.checks if k[0] == node.lower())]


def assert_indexed_reads_match_scans(tables: Tables) -> None:
    assert indexes_of(tables) == scan_indexes(tables)
    nodes = {*NODES, *(k[0] for k in tables.nodes)}
    names = {*NAMES, *(s["ServiceName"] for s in tables.services.values())}
    for name in names:
        assert services_named(tables, name) == scan_services_named(tables, name)
        assert service_names_like(tables, name) == {s["ServiceName"] for s in scan_services_named(tables, name)}
        assert checks_of_service_name(tables, name) == scan_checks_of_service_name(tables, name)
    for node in nodes:
        assert services_on_node(tables, node) == scan_services_on_node(tables, node)
        assert checks_on_node(tables, node) == scan_checks_on_node(tables, node)
        for service_id in {*SERVICE_IDS, *(k[1] for k in tables.services if k[0] == node.lower())}:
            assert instance_checks(tables, node, service_id) == scan_instance_checks(tables, node, service_id)


def fingerprint(tables: Tables) -> tuple[Any, ...]:
    """Everything a reader of `tables` can see (records are never mutated in place)."""
    return dict(tables.nodes), dict(tables.services), dict(tables.checks), dict(tables.index), indexes_of(tables)


# -- random operations ------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of `choices`, each picked in proportion to its weight (st.one_of picks evenly)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


node_names = st.sampled_from(NODES)
service_ids = st.sampled_from(SERVICE_IDS)
service_names = st.sampled_from(NAMES)
check_ids = st.sampled_from(CHECK_IDS)
statuses = st.sampled_from(STATUSES)
# A node-level check ("" ServiceID) may still carry a ServiceName of its own.
check_service_ids = weighted((1, st.just("")), (2, service_ids))
tag_lists = st.lists(st.sampled_from(["a", "b"]), max_size=2)
services = st.tuples(service_ids, service_names, tag_lists)


def _check_body(node: str, check_id: str, service_id: str, status: str, name: str) -> Record:
    return {"Node": node, "CheckID": check_id, "Name": "check", "Status": status, "ServiceID": service_id,
            "ServiceName": name}  # fmt: skip


def _register(node: str, svc: tuple[str, str, list[str]] | None, checks: list[tuple[str, str, str, str]]) -> Any:
    body: Record = {"Node": node, "Address": "10.0.0.1"}
    if svc is not None:
        body["Service"] = {"ID": svc[0], "Service": svc[1], "Tags": svc[2]}
    # "same" files the check under the service registered with it (else most requests fail).
    own = svc[0] if svc is not None else ""
    body["Checks"] = [
        _check_body(node, cid, own if sid == "same" else sid, status, name) for cid, sid, status, name in checks
    ]
    return "PUT", "/v1/catalog/register", body


registers = st.builds(
    _register,
    node_names,
    weighted((1, st.none()), (3, services)),
    st.lists(st.tuples(check_ids, weighted((2, st.just("same")), (1, check_service_ids)), statuses, service_names),
             max_size=3),
)  # fmt: skip
deregisters = st.builds(
    lambda node, what: ("PUT", "/v1/catalog/deregister", {"Node": node, **what}),
    node_names,
    weighted(
        (1, st.just({})),  # the whole node
        (3, service_ids.map(lambda sid: {"ServiceID": sid})),
        (2, check_ids.map(lambda cid: {"CheckID": cid})),
    ),
)
txn_ops = weighted(
    # Sets outnumber deletes, so that the catalog grows enough to have something to index.
    (4, st.builds(
        lambda n, svc: {"Service": {"Verb": "set", "Node": n, "Service": {"ID": svc[0], "Service": svc[1],
                                                                          "Tags": svc[2]}}},
        node_names, services)),
    (4, st.builds(
        lambda n, cid, sid, status, name: {"Check": {"Verb": "set", "Check": _check_body(n, cid, sid, status, name)}},
        node_names, check_ids, check_service_ids, statuses, service_names)),
    (1, st.builds(lambda n: {"Node": {"Verb": "set", "Node": {"Node": n, "Address": "10.0.0.2"}}}, node_names)),
    (1, st.builds(lambda n: {"Node": {"Verb": "delete", "Node": {"Node": n}}}, node_names)),
    (2, st.builds(
        lambda n, sid, name: {"Service": {"Verb": "delete", "Node": n, "Service": {"ID": sid, "Service": name}}},
        node_names, service_ids, service_names)),
    (2, st.builds(lambda n, cid: {"Check": {"Verb": "delete", "Check": {"Node": n, "CheckID": cid}}},
                  node_names, check_ids)),
)  # fmt: skip
# Most txns first (re)register every node, so that more of them apply than fail; those
# that fail still do so after earlier ops changed the working copy (a rollback to check).
all_nodes = [{"Node": {"Verb": "set", "Node": {"Node": n, "Address": "10.0.0.2"}}} for n in ("n1", "n2", "n3")]
txns = st.builds(
    lambda prefix, ops: ("PUT", "/v1/txn", prefix + ops),
    weighted((2, st.just(all_nodes)), (1, st.just([]))),
    # Every op of a txn must apply for any to: long txns mostly roll back, short ones apply.
    weighted((2, st.lists(txn_ops, min_size=1, max_size=2)), (1, st.lists(txn_ops, min_size=1, max_size=10))),
)
restores = st.sampled_from([("snapshot",), ("restore",), ("reset_index",)])
operations = weighted((4, registers), (2, deregisters), (4, txns), (1, restores))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, min_size=10, max_size=40))
def test_indexes_equal_scans_after_any_sequence_of_writes(ops: list[tuple[Any, ...]]) -> None:
    srv = fresh_server()
    store = srv.state
    try:
        snapshot = store.snapshot()
        snapshot_seen = fingerprint(snapshot.tables)
        # Every committed tables value seen so far, with what it showed when it was current.
        committed: list[tuple[Tables, tuple[Any, ...]]] = []
        for op in ops:
            before = store.tables
            committed.append((before, fingerprint(before)))
            if op[0] == "snapshot":
                snapshot = store.snapshot()
                snapshot_seen = fingerprint(snapshot.tables)
                continue
            if op[0] == "restore":
                store.restore(snapshot)
            elif op[0] == "reset_index":
                store.reset_index(max(store.index - 3, 0))
            else:
                method, path, body = op
                response = call(srv, method, path, body)
                if response.status != 200:
                    # Rejected or rolled back: the committed tables are still the same value.
                    assert store.tables is before, response.body
            assert_indexed_reads_match_scans(store.tables)
            # No write reached into a tables value that readers (or a snapshot) may hold.
            for tables, seen in committed:
                assert fingerprint(tables) == seen
            assert fingerprint(snapshot.tables) == snapshot_seen
    finally:
        srv.stop()


# -- rollback ------------------------------------------------------------------------------------


def register(srv: ConsulServer, node: str, sid: str, name: str) -> None:
    """An instance with one check of its own, `chk-<sid>`."""
    check = {"CheckID": f"chk-{sid}", "Name": "ready", "Status": "passing", "ServiceID": sid}
    body = {"Node": node, "Address": "10.0.0.1", "Service": {"ID": sid, "Service": name}, "Checks": [check]}
    assert call(srv, "PUT", "/v1/catalog/register", body).status == 200


def test_failed_txn_rolls_back_the_indexes(server: ConsulServer) -> None:
    for i in range(4):
        register(server, "n1", f"s{i}", "web" if i < 2 else "db")
    before = server.state.tables
    seen = fingerprint(before)
    ops = [
        {"Service": {"Verb": "delete", "Node": "n1", "Service": {"ID": "s0", "Service": "web"}}},
        {"Service": {"Verb": "delete", "Node": "n1", "Service": {"ID": "s1", "Service": "web"}}},
        {"Service": {"Verb": "set", "Node": "n1", "Service": {"ID": "s9", "Service": "cache"}}},
        {"Check": {"Verb": "set", "Check": _check_body("n1", "node-check", "", "critical", "")}},
        # Fails at apply time (no such node), after the writes above changed the working copy.
        {"Service": {"Verb": "set", "Node": "missing", "Service": {"ID": "x", "Service": "x"}}},
    ]
    response = call(server, "PUT", "/v1/txn", ops)
    assert response.status == 409
    assert server.state.tables is before
    assert fingerprint(before) == seen
    assert [s["ServiceID"] for s in services_named(before, "web")] == ["s0", "s1"]
    assert services_named(before, "cache") == []
    assert [c["CheckID"] for c in instance_checks(before, "n1", "s0")] == ["chk-s0"]
    assert_indexed_reads_match_scans(before)


def test_apply_error_in_a_store_write_leaves_the_committed_indexes_alone(server: ConsulServer) -> None:
    register(server, "n1", "s1", "web")
    before = server.state.tables
    seen = fingerprint(before)
    with pytest.raises(ApplyError), server.state.write() as txn:
        server.api.catalog.delete_node(txn, "n1")
        assert txn.tables.services_by_node.get("n1") == set()
        raise ApplyError("boom")
    assert server.state.tables is before
    assert fingerprint(before) == seen
    assert [s["ServiceID"] for s in services_on_node(before, "n1")] == ["s1"]


def test_key_index_forks_share_nothing_they_write() -> None:
    base: KeyIndex[str] = KeyIndex()
    base.add("a", 1)
    base.add("a", 2)
    fork = base.fork()
    fork.add("a", 3)
    fork.discard("a", 1)
    fork.add("b", 4)
    assert dict(base.buckets()) == {"a": {1, 2}}
    assert dict(fork.buckets()) == {"a": {2, 3}, "b": {4}}
    # After a fork neither side owns the shared containers, the original included.
    again = fork.fork()
    fork.discard("a", 2)
    fork.discard("a", 3)
    assert dict(again.buckets()) == {"a": {2, 3}, "b": {4}}
    assert dict(fork.buckets()) == {"b": {4}}
    assert fork.get("a") == set()


# -- blocking queries: woken by an unrelated commit, they do not re-render ---------------------


class ScriptedWait:
    """Stands in for the store's Condition: each wait() runs the next scripted step."""

    def __init__(self, srv: ConsulServer, steps: list[Callable[[], None]]) -> None:
        self.cond = srv.state.cond
        self.steps = steps

    def __enter__(self) -> bool:
        return self.cond.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.cond.__exit__(*exc)

    def notify_all(self) -> None:
        self.cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        # A query still waiting after its script means the wake-up logic is wrong.
        assert self.steps, "the blocked query did not return after the last scripted write"
        self.steps.pop(0)()
        return True


def count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    original = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def blocking_get(srv: ConsulServer, path: str, index: int, query: str = "") -> Response:
    return call(srv, "GET", path, query=f"index={index}&wait=1m" + (f"&{query}" if query else ""))


@pytest.mark.parametrize(
    ("path", "renderer"),
    [
        ("/v1/health/service/web", "service_entry"),
        ("/v1/catalog/service/web", "catalog_service"),
    ],
)
def test_blocked_service_query_renders_only_once_its_index_moves(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch, path: str, renderer: str
) -> None:
    register(server, "n1", "web-1", "web")
    register(server, "n1", "db-1", "db")
    index = int(call(server, "GET", path).header("X-Consul-Index"))
    rendered = count_calls(monkeypatch, render, renderer)
    steps = [
        lambda: register(server, "n1", f"db-{len(server.state.tables.services)}", "db"),
        lambda: call(server, "PUT", "/v1/kv/some/key", "x"),
        server.state.notify,  # a wake-up without any commit
        lambda: register(server, "n2", "web-2", "web"),
    ]
    monkeypatch.setattr(server.state, "cond", ScriptedWait(server, steps))
    response = blocking_get(server, path, index)
    assert steps == []
    assert int(response.header("X-Consul-Index")) > index
    assert [e.get("ServiceID") or e["Service"]["ID"] for e in json.loads(response.body)] == ["web-1", "web-2"]
    # One evaluation before blocking (one instance) and one after the write to "web" (two).
    assert rendered[0] == 1 + 2


def test_blocked_catalog_services_skips_writes_that_do_not_move_services(
    server: ConsulServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(server, "n1", "web-1", "web")
    index = int(call(server, "GET", "/v1/catalog/services").header("X-Consul-Index"))
    summaries = count_calls(monkeypatch, render, "services_summary")
    steps = [
        lambda: call(server, "PUT", "/v1/kv/a", "1"),
        lambda: call(server, "PUT", "/v1/kv/b", "2"),
        lambda: register(server, "n1", "db-1", "db"),
    ]
    monkeypatch.setattr(server.state, "cond", ScriptedWait(server, steps))
    response = blocking_get(server, "/v1/catalog/services", index)
    assert steps == []
    assert sorted(json.loads(response.body)) == ["consul", "db", "web"]
    assert summaries[0] == 2


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server_on_clock(clock: ManualClock) -> Iterator[ConsulServer]:
    srv = ConsulServer(jitter=False, clock=clock)
    yield srv
    srv.stop()


def test_blocked_query_answers_from_current_tables_at_its_deadline(
    server_on_clock: ConsulServer, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_on_clock
    register(server, "n1", "web-1", "web")
    index = int(call(server, "GET", "/v1/health/service/web").header("X-Consul-Index"))

    def late_unrelated_write() -> None:
        call(server, "PUT", "/v1/kv/a", "1")
        clock.advance(3600.0)  # past the 1m wait

    monkeypatch.setattr(server.state, "cond", ScriptedWait(server, [late_unrelated_write]))
    blocked = blocking_get(server, "/v1/health/service/web", index)
    monkeypatch.undo()
    fresh = call(server, "GET", "/v1/health/service/web")
    assert blocked.header("X-Consul-Index") == fresh.header("X-Consul-Index") == str(index)
    assert blocked.body == fresh.body
