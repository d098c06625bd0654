"""Watch semantics of the fake kube-apiserver as the official client's `Watch` sees them."""

import http.client
import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import watch
from kubernetes.client.rest import ApiException

from bridge.testing.kube import KubeAPIServer
from tests.conftest import assert_pending, eventually
from tests.integration import kube_fixtures

kube = kube_fixtures.server(seed=5)
api = kube_fixtures.api
core = kube_fixtures.core
clock = kube_fixtures.clock
timed_kube = kube_fixtures.timed_kube


class Collector:
    """Runs a Watch stream in a thread and hands events over through a queue."""

    def __init__(self, func, *args, **kwargs):
        self.watch = watch.Watch()
        self.events: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, func, args, kwargs):
        try:
            for event in self.watch.stream(func, *args, **kwargs):
                self.events.put(event)
        except BaseException as exc:  # surfaced to the test through .error
            self.error = exc
        finally:
            self.done.set()

    def next(self, timeout=5.0):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch event within {timeout}s (error: {self.error!r})") from None

    def stop(self):
        self.watch.stop()
        self.thread.join(5)


def replay(kube, func, *args, **kwargs):
    """The events a watch is sent at subscription time, without waiting for a timeout.

    The store queues the initial ADDED events or the history replay atomically when the watch
    subscribes; dropping the watch then ends the stream cleanly once that queue is drained.
    `timeout_seconds` only stops the client from reconnecting.
    """
    before = kube.store.watcher_count()
    collector = Collector(func, *args, timeout_seconds=60, **kwargs)
    eventually(lambda: kube.store.watcher_count() > before or collector.done.is_set(), what="the watch to subscribe")
    kube.drop_watches()
    assert collector.done.wait(5), "the stream should end after drop_watches()"
    if collector.error is not None:
        raise collector.error
    return [collector.events.get_nowait() for _ in range(collector.events.qsize())], collector.watch


def pod_body(name, labels=None, ready=True):
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
        "status": {"podIP": "10.1.0.1", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_watch_without_resource_version_starts_with_added_events(kube, core):
    core.create_namespaced_pod("default", pod_body("a"))
    core.create_namespaced_pod("default", pod_body("b"))
    events, _ = replay(kube, core.list_namespaced_pod, "default")
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_from_resource_version_replays_only_later_events(kube, core):
    core.create_namespaced_pod("default", pod_body("before"))
    listed = core.list_namespaced_pod("default")
    core.create_namespaced_pod("default", pod_body("after"))
    core.patch_namespaced_pod("before", "default", {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("after", "default")
    events, w = replay(kube, core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
        ("DELETED", "after"),
    ]
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3, "each event carries its own, newer revision"
    assert w.resource_version == str(rvs[-1])


def test_live_events_reach_a_running_watch(kube, core):
    listed = core.list_namespaced_pod("default")
    collector = Collector(core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version)
    try:
        eventually(lambda: kube.store.watcher_count() == 1, what="the watch to subscribe")
        core.create_namespaced_pod("default", pod_body("live"))
        event = collector.next()
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "live")
    finally:
        collector.stop()


def test_too_old_resource_version_gives_410_then_relist_recovers(kube, core):
    core.create_namespaced_pod("default", pod_body("a"))
    old = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod_body("b"))
    compacted = kube.compact()

    # Without timeout_seconds the client retries a 410 once, then raises.
    w = watch.Watch()
    with pytest.raises(ApiException) as info:
        for _ in w.stream(core.list_namespaced_pod, "default", resource_version=old):
            pass
    assert info.value.status == 410
    assert info.value.reason == f"Expired: too old resource version: {old} ({compacted})"
    watch_requests = [r for r in kube.requests if r.watch]
    assert len(watch_requests) == 2, "one silent retry with the same resourceVersion"
    assert all(r.status == 200 for r in watch_requests), "410 arrives as an ERROR event on a 200"

    relisted = core.list_namespaced_pod("default")
    assert [p.metadata.name for p in relisted.items] == ["a", "b"]
    events, _ = replay(kube, core.list_namespaced_pod, "default", resource_version=relisted.metadata.resource_version)
    assert events == [], "watching from the fresh list position works and replays nothing"


def test_error_event_wire_format(kube, core):
    old = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod_body("a"))
    kube.compact()
    conn = http.client.HTTPConnection(*kube.address, timeout=5)
    conn.request("GET", f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={old}")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    lines = response.read().decode().splitlines()
    conn.close()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {old} ({kube.store.compacted_resource_version})",
            "reason": "Expired",
            "code": 410,
        },
    }


def test_headers_are_flushed_before_any_event(kube):
    conn = http.client.HTTPConnection(*kube.address, timeout=2)
    conn.request("GET", "/api/v1/namespaces/default/services?watch=1")
    response = conn.getresponse()  # would time out if headers waited for the first event
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    conn.close()


def test_bookmarks_on_demand_and_before_timeout(kube, core):
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = watch.Watch()
    seen = []
    stream = w.stream(
        core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=1
    )
    wait_for_subscription = threading.Thread(
        target=lambda: (eventually(lambda: kube.store.watcher_count() == 1), kube.emit_bookmark()), daemon=True
    )
    wait_for_subscription.start()
    for event in stream:
        seen.append((event["type"], event["raw_object"]["metadata"]["resourceVersion"]))
    wait_for_subscription.join(5)
    assert seen == [("BOOKMARK", rv), ("BOOKMARK", rv)], "hook bookmark, then one before the close"
    assert w.resource_version == rv


def test_bookmark_moves_the_clients_resource_version(kube, core):
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_service("default", {"metadata": {"name": "other"}, "spec": {"ports": [{"port": 80}]}})
    before = kube.store.watcher_count()
    collector = Collector(
        core.list_namespaced_pod, "default", resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=60
    )
    eventually(lambda: kube.store.watcher_count() > before, what="the watch to subscribe")
    assert kube.emit_bookmark() == 1
    event = collector.next()
    collector.stop()
    w = collector.watch
    assert event["type"] == "BOOKMARK"
    assert int(w.resource_version) > int(rv), "the bookmark carries the newer global revision"


def test_timeout_seconds_closes_the_stream(timed_kube, clock):
    server, core = timed_kube
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: list(watch.Watch().stream(core.list_namespaced_service, "default",
                                                               timeout_seconds=1)))
        # The deadline is taken before the watch registers, so from here on it is fixed.
        eventually(lambda: server.store.watcher_count() == 1, 5, "the watch to subscribe")
        clock.advance(0.99)
        assert_pending(stream, "a watch 0.01s before its timeoutSeconds")
        clock.advance(0.02)  # past the deadline whatever the float sum
        assert stream.result(timeout=10) == [], "closed cleanly, with no events"


def test_selector_watch_sends_deleted_when_an_object_stops_matching(kube, core):
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod_body("p", {"app": "web"}))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "db"}}})
    core.create_namespaced_pod("default", pod_body("other", {"app": "db"}))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    events, _ = replay(kube, core.list_namespaced_pod, "default", label_selector="app=web", resource_version=rv)
    assert [(e["type"], e["object"].metadata.labels["app"]) for e in events] == [
        ("ADDED", "web"),
        ("DELETED", "db"),
        ("ADDED", "web"),
    ]
    events, _ = replay(kube, core.list_pod_for_all_namespaces, field_selector="metadata.name=other")
    assert [e["object"].metadata.name for e in events] == ["other"]


def test_dropped_watch_is_resumed_by_the_client_from_its_last_resource_version(kube, core):
    listed = core.list_namespaced_pod("default")
    collector = Collector(core.list_namespaced_pod, "default", resource_version=listed.metadata.resource_version)
    try:
        eventually(lambda: kube.store.watcher_count() == 1, what="first watch")
        core.create_namespaced_pod("default", pod_body("one"))
        first = collector.next()
        assert kube.drop_watches() == 1
        eventually(lambda: len([r for r in kube.requests if r.watch]) == 2, what="re-watch")
        core.create_namespaced_pod("default", pod_body("two"))
        second = collector.next()
        assert (second["type"], second["object"].metadata.name) == ("ADDED", "two")
        rewatch = [r for r in kube.requests if r.watch][-1]
        assert rewatch.query["resourceVersion"] == first["object"].metadata.resource_version
    finally:
        collector.stop()


def test_long_watches_do_not_block_other_requests(kube, core):
    connections = []
    for _ in range(20):
        conn = http.client.HTTPConnection(*kube.address, timeout=5)
        conn.request("GET", "/api/v1/pods?watch=true")
        assert conn.getresponse().status == 200
        connections.append(conn)
    try:
        eventually(lambda: kube.store.watcher_count() == 20, what="20 watchers")
        # A server whose watches held up other requests would never answer these: the timeout
        # only bounds that hang, generously for a loaded machine.
        core.create_namespaced_pod("default", pod_body("p"), _request_timeout=10)
        assert [p.metadata.name for p in core.list_pod_for_all_namespaces(_request_timeout=10).items] == ["p"]
    finally:
        for conn in connections:
            conn.close()
    eventually(lambda: kube.store.watcher_count() == 0, what="closed watches to be noticed")


def test_stop_ends_open_watches_quickly(tmp_path):
    server = KubeAPIServer()
    server.start()
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("GET", "/api/v1/pods?watch=true")
    response = conn.getresponse()
    eventually(lambda: server.store.watcher_count() == 1, 5, "the watch to subscribe")
    threads = [t for t in threading.enumerate() if t.name.startswith("fake-kube-")]
    server.stop()
    # stop() gives up joining after its 2 s timeout: a thread still alive is one it could not end.
    assert [t.name for t in threads if t.is_alive()] == []
    assert response.read() == b"", "the stream ends cleanly with a terminating chunk"
    conn.close()


def test_table_watch_for_kubectl(kube, core):
    core.create_namespaced_pod("default", pod_body("a"))
    conn = http.client.HTTPConnection(*kube.address, timeout=5)
    conn.request(
        "GET",
        "/api/v1/namespaces/default/pods?watch=true",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    event = json.loads(conn.getresponse().readline())
    conn.close()
    assert event["type"] == "ADDED"
    table = event["object"]
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Ready", "Status"]
    assert table["rows"][0]["cells"][:3] == ["a", "1/1", "Running"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
