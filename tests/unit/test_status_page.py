"""The /status page and /explain routes over a made-up world: search, pages, links, escaping,
and the cost of a page over 10,000 services (printed, not asserted: see bench/)."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from types import MappingProxyType
from typing import Any

from bridge.catalog.model import Catalog, Instance, Origin, OriginKind, Port, Service, ServiceKey, ServiceType, Snapshot
from bridge.dns.answer import Answerer
from bridge.explain.model import SourceTimes, World
from bridge.explain.page import PAGE_SIZE
from bridge.explain.routes import Routes
from bridge.reconcile.publish import changed_at

HERE = Origin(OriginKind.KUBERNETES, "here")


def services(count: int) -> list[Service]:
    return [Service(key=ServiceKey(f"ns-{i % 50}", f"svc-{i:05d}"), type=ServiceType.HEADLESS,
                    ports=(Port("http", 80),),
                    instances=(Instance(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", (Port("http", 80),), HERE),))
            for i in range(count)]


class View:
    def __init__(self, found: list[Service]) -> None:
        catalog = Catalog(MappingProxyType({s.key: s for s in found}), ready=True, generation=1)
        snap = Snapshot.of(found, True)
        self._world = World(catalog=catalog, kube=snap, consul=Snapshot(synced=True), merged=catalog.services,
                            changed_at=MappingProxyType({k: 1000.0 for k in catalog.services}),
                            answer=Answerer(catalog, "cluster.local", 30).answer,
                            sources=(SourceTimes("kubernetes/services", True, 1000.0, 990.0, len(found)),))

    def world(self) -> World:
        return self._world

    def status(self) -> dict[str, Any]:
        return {"now": 1010.0, "cluster_id": "c<1>", "waiting_for": [], "warnings": ["w <b>"],
                "ha": {"writer": True, "leading": True, "identity": "pod-a", "lease_holder": "pod-a",
                       "election": True, "claim": "held", "problems": []},
                "clusters": [], "sinks": [{"sink": "consul", "in_sync": True}],
                "counters": {"planned consul create": 3.0}, "lag": {"writes": 3.0, "mean_seconds": 0.05},
                "rejected": [{"sink": "consul", "item": "registration x", "reason": "Invalid",
                              "message": "<script>alert(1)</script>"}]}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.explain: list[str] = []
        self.ids: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("class") == "explain":
            self.explain.append(found["href"] or "")
        if found.get("id"):
            self.ids[found["id"] or ""] = tag


def get(routes: Routes, path: str, **query: str) -> tuple[int, str, str]:
    code, content_type, body = routes.handlers()[path]({k: [v] for k, v in query.items()})
    return code, content_type, body.decode()


def test_the_page_lists_one_page_of_rows_each_linking_to_its_explanation():
    routes = Routes(View(services(450)))
    code, content_type, body = get(routes, "/status")
    assert code == 200 and content_type.startswith("text/html")
    links = Links()
    links.feed(body)
    assert len(links.explain) == PAGE_SIZE, f"{len(links.explain)} rows on page 1"
    assert links.explain[0] == "/status/explain?name=ns-0%2Fsvc-00000", links.explain[0]
    assert {"readiness", "leader", "sources", "sync", "rejected", "catalog", "search", "next"} <= links.ids.keys()
    assert "450 matching, page 1 of 3" in body
    _, _, last = get(routes, "/status", page="3")
    assert "450 matching, page 3 of 3" in last and last.count("class=explain") == 50


def test_search_narrows_the_table_and_everything_shown_is_escaped():
    routes = Routes(View(services(450)))
    _, _, body = get(routes, "/status", q="svc-00123")
    assert "1 matching" in body and body.count("class=explain") == 1, body[-2000:]
    _, _, body = get(routes, "/status", q="ns-7/")
    assert "9 matching" in body, "ns-7 holds every 50th service of 450"
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;" in body
    assert "w <b>" not in body and "c<1>" not in body


def test_the_explanation_routes_answer_json_and_html():
    routes = Routes(View(services(3)))
    code, content_type, body = get(routes, "/explain", name="svc-00001.ns-1.svc.cluster.local")
    assert code == 200 and content_type == "application/json"
    data = json.loads(body)
    assert data["known"] and [i["address"] for i in data["instances"]] == ["10.0.0.1"], data
    code, _, page = get(routes, "/status/explain", name="ns-1/svc-00001")
    assert code == 200 and "10.0.0.1" in page and "id=explanation" in page
    code, _, _ = get(routes, "/explain")
    assert code == 400, "a missing name is the caller's mistake"


def test_ten_thousand_services_render_a_page_quickly():
    routes = Routes(View(services(10_000)))
    timings = []
    for query in ({}, {"page": "25"}, {"q": "svc-09"}):
        started = time.perf_counter()
        code, _, body = get(routes, "/status", **query)
        timings.append(time.perf_counter() - started)
        assert code == 200 and body.count("class=explain") == PAGE_SIZE, query
    # Printed for people (the figure is meaningful on a quiet machine only): no bound here.
    print(f"/status over 10,000 services: first page {timings[0] * 1000:.1f} ms, "
          f"page 25 {timings[1] * 1000:.1f} ms, search {timings[2] * 1000:.1f} ms")
    assert re.search(r"10000 matching, page 25 of 50", get(routes, "/status", page="25")[2])


def test_changed_at_moves_only_for_services_that_changed():
    before = {s.key: s for s in services(3)}
    times = changed_at({}, before, {}, 1.0)
    assert set(times.values()) == {1.0} and len(times) == 3
    assert changed_at(before, dict(before), times, 2.0) is times, "nothing changed: the same map"
    after = dict(before)
    gone, changed = sorted(before)[:2]
    del after[gone]
    after[changed] = Service(key=changed, type=ServiceType.HEADLESS)
    moved = changed_at(before, after, times, 3.0)
    assert gone not in moved and moved[changed] == 3.0 and sorted(moved.values()) == [1.0, 3.0]
