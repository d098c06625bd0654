"""The Consul source's reader: blocking queries as tasks on one event loop thread.

`BlockingQuery` keeps `BlockingLoop`'s rules (index, rate limit, backoff) with an injected
sleep and clock, so no test waits in real time. The source runs against a scripted Consul
(the `Reads` it is given) that blocks a query until its index moves, as Consul does.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import pytest

from bridge.consul.blocking import BlockingQuery, TokenBucket
from bridge.consul.source import ConsulSource
from bridge.errors import Denied, Transient
from tests.conftest import eventually

# --- BlockingQuery ------------------------------------------------------------------------


class Time:
    """A clock and an async sleep that only moves it: what the query waited, in order."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Script:
    """fetch(index) answers from a list: an (index, value) pair or an exception per call."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.asked: list[int | None] = []

    async def __call__(self, index: int | None):
        self.asked.append(index)
        if not self.answers:
            raise AssertionError("fetch called after the script ran out")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def run_query(answers: list, until: int, time: Time | None = None,
              errors: list | None = None) -> tuple[Script, list, Time]:
    """Runs a BlockingQuery over `answers` until `until` values were delivered."""
    time = time or Time()
    fetch = Script(answers)
    got: list = []

    def deliver(value) -> bool:
        got.append(value)
        return len(got) < until

    query = BlockingQuery("t", fetch, deliver, sleep=time.sleep, clock=time.clock,
                          on_error=errors.append if errors is not None else None)
    asyncio.run(query.run())
    return fetch, got, time


def test_follows_the_returned_index_and_delivers_every_answer():
    fetch, got, _ = run_query([(10, "a"), (10, "a"), (12, "b")], until=3)
    assert fetch.asked == [None, 10, 10], fetch.asked
    assert got == ["a", "a", "b"], "deliver gets every answer, changed or not"


def test_an_index_going_backwards_starts_over_and_zero_is_sent_as_one():
    fetch, got, _ = run_query([(10, "a"), (3, "b"), (0, "c"), (0, "d")], until=4)
    assert fetch.asked == [None, 10, None, 1], f"a backwards index restarts, 0 is sent as 1: {fetch.asked}"
    assert got == ["a", "b", "c", "d"]


def test_errors_back_off_with_jitter_keep_the_index_and_honour_retry_after():
    errors: list = []
    fetch, got, time = run_query(
        [(7, "a"), Transient("500 No cluster leader"), Transient("500 again"),
         Transient("429", retry_after=2.5), (8, "b")], until=2, errors=errors)
    assert fetch.asked == [None, 7, 7, 7, 7], f"an error must neither reset nor skip the index: {fetch.asked}"
    assert [str(e) for e in errors] == ["500 No cluster leader", "500 again", "429"]
    first, second, third = time.slept
    assert 0.025 <= first <= 0.05, f"first retry: half fixed, half random of 0.05 s: {time.slept}"
    assert 0.05 <= second <= 0.1, f"second retry: doubled: {time.slept}"
    assert third == 2.5, f"a server's Retry-After is the floor: {time.slept}"
    assert got == ["a", "b"]


def test_a_denial_backs_off_like_any_error_and_the_query_goes_on():
    errors: list = []
    _, got, time = run_query([Denied("health service web: Permission denied"), (3, "a")],
                             until=1, errors=errors)
    assert len(errors) == 1 and isinstance(errors[0], Denied), errors
    assert len(time.slept) == 1 and 0.025 <= time.slept[0] <= 0.05, time.slept
    assert got == ["a"]


def test_a_query_answered_at_once_is_rate_limited_on_the_injected_clock():
    # Consul answers at once while the index is unchanged after a restore, say: the
    # query must not spin. Two at once (the bucket's burst), then one per 50 ms.
    time = Time()
    _, got, time = run_query([(5, i) for i in range(6)], until=6, time=time)
    assert got == list(range(6))
    assert time.slept == pytest.approx([0.05, 0.05, 0.05, 0.05]), time.slept
    assert time.now == pytest.approx(1000.2)


def test_the_rate_limit_refills_while_a_query_blocks():
    time = Time()
    bucket = TokenBucket(clock=time.clock)
    assert [bucket.delay(), bucket.delay()] == [0.0, 0.0]
    time.now += 300.0  # a whole blocking wait
    assert bucket.delay() == 0.0, "after a long block the next query goes at once"


def test_cancelling_the_task_ends_a_query_in_its_backoff():
    time = Time()
    entered = []

    async def sleep(seconds: float) -> None:
        entered.append(seconds)
        await asyncio.Event().wait()  # never set: only cancelling ends it

    async def main() -> list:
        fetch = Script([Transient("down"), (1, "never")])
        query = BlockingQuery("t", fetch, lambda v: True, sleep=sleep, clock=time.clock)
        task = asyncio.create_task(query.run())
        while not entered:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return fetch.asked

    assert asyncio.run(main()) == [None], "no fetch after the task was cancelled in its backoff"


# --- the source on a scripted Consul ------------------------------------------------------


def entry(name: str, address: str, status: str = "passing") -> dict[str, Any]:
    return {"Node": {"Node": "vm-1", "Address": address},
            "Service": {"ID": f"{name}-1", "Service": name, "Address": address, "Port": 80, "Meta": {}},
            "Checks": [{"Status": status}]}


class ScriptedConsul:
    """The source's `Reads`: a catalog the test changes from its thread, with blocking
    queries that wait until their index moves (Consul's rule), counted."""

    def __init__(self, catalog: dict[str, list[dict[str, Any]]]) -> None:
        self._lock = threading.Lock()
        self.catalog = catalog
        self.list_index = 1
        self.indexes: dict[str, int] = dict.fromkeys(catalog, 1)
        self.index_override: dict[str, int] = {}
        self.calls: list[tuple[str, int | None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False

    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self.closed = True

    async def _block(self, current, index: int | None) -> None:
        assert self.loop is not None
        while index and current() <= index:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter

    async def services(self, index: int | None, *, not_on_node: str = ""):
        self.calls.append(("", index))
        await self._block(lambda: self.list_index, index)
        with self._lock:
            return self.list_index, {name: [] for name in self.catalog}

    async def health_service(self, name: str, index: int | None):
        self.calls.append((name, index))
        await self._block(lambda: self.indexes.get(name, self.list_index), index)
        with self._lock:
            returned = self.index_override.pop(name, self.indexes.get(name, self.list_index))
            return returned, list(self.catalog.get(name, []))

    def change(self, name: str, entries: list[dict[str, Any]] | None) -> None:
        """From the test's thread: sets (None: deregisters) one service and wakes the queries."""
        with self._lock:
            self.list_index += 1
            if entries is None:
                self.catalog.pop(name, None)
                self.indexes.pop(name, None)
            else:
                self.catalog[name] = entries
                self.indexes[name] = self.list_index
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def addresses(source: ConsulSource, name: str) -> set[str]:
    """The ready addresses the source holds for Consul service `name`."""
    return {i.address for svc in source.snapshot().services.values() if svc.key.name == name
            for i in svc.instances if i.ready}


@pytest.fixture
def scripted():
    made: list[ConsulSource] = []

    def start(consul: ScriptedConsul) -> ConsulSource:
        source = ConsulSource(cast(Any, None), our_node="k8s-sync-test", cluster_id="test",
                              default_namespace="consul", on_change=lambda: None,
                              stop=threading.Event(), reads=lambda: consul)
        made.append(source)
        source.start()
        return source

    yield start
    for source in made:
        source.close()


def test_thousands_of_services_are_followed_by_one_thread(scripted):
    n = 2000
    consul = ScriptedConsul({f"svc-{i}": [entry(f"svc-{i}", f"10.1.{i // 250}.{i % 250 + 1}")]
                             for i in range(n)})
    before = threading.active_count()
    source = scripted(consul)
    eventually(lambda: source.synced, what="every service read once")
    assert len(source.watched) == n
    assert threading.active_count() <= before + 1, (
        f"{threading.active_count() - before} threads for {n} services: "
        f"{sorted(t.name for t in threading.enumerate())[:20]}")
    assert source.thread is not None and source.thread.name == "consul-reader"
    assert addresses(source, "svc-1234") == {"10.1.4.235"}


def test_at_rest_each_query_is_one_blocking_request(scripted):
    consul = ScriptedConsul({f"svc-{i}": [entry(f"svc-{i}", f"10.2.0.{i + 1}")] for i in range(50)})
    source = scripted(consul)
    eventually(lambda: source.synced)
    eventually(lambda: len(consul.calls) == 2 * 51, what="every query blocked once")
    blocking = [c for c in consul.calls if c[1] is not None]
    assert len(blocking) == 51 and all(index == 1 for _, index in blocking), (
        f"at rest every query waits on the index it was given: {blocking[:5]}")


def test_a_service_added_changed_and_removed_reaches_the_snapshot(scripted):
    consul = ScriptedConsul({"web": [entry("web", "10.3.0.1")]})
    source = scripted(consul)
    eventually(lambda: source.synced)
    consul.change("db", [entry("db", "10.3.0.9")])
    eventually(lambda: addresses(source, "db") == {"10.3.0.9"}, what="a new service answered")
    consul.change("web", [entry("web", "10.3.0.2")])
    eventually(lambda: addresses(source, "web") == {"10.3.0.2"}, what="a changed service answered")
    consul.change("web", [entry("web", "10.3.0.2", status="critical")])
    eventually(lambda: addresses(source, "web") == set(), what="a failing instance no longer ready")
    consul.change("db", None)
    eventually(lambda: "db" not in source.watched and addresses(source, "db") == set(),
               what="a deregistered service gone, and its query ended")


def test_an_index_going_backwards_reads_the_service_again_without_an_index(scripted):
    consul = ScriptedConsul({"web": [entry("web", "10.4.0.1")]})
    source = scripted(consul)
    eventually(lambda: source.synced)
    consul.index_override["web"] = 0  # the next answer comes from a restored snapshot
    consul.change("web", [entry("web", "10.4.0.2")])
    eventually(lambda: consul.calls.count(("web", None)) == 2, what="a request without an index after the reset")
    eventually(lambda: addresses(source, "web") == {"10.4.0.2"})


def test_close_ends_the_thread_and_closes_the_reads(scripted):
    consul = ScriptedConsul({"web": [entry("web", "10.5.0.1")]})
    source = scripted(consul)
    eventually(lambda: source.synced)
    thread = source.thread
    source.close()
    assert thread is not None and not thread.is_alive(), "close() must end the reader's thread"
    assert consul.closed, "close() must close the HTTP session"
