"""The operator's HTTP pages: GET /explain?name= (JSON), /status and /status/explain (HTML).

Each handler takes the query string's values and returns (status, content type, body); the
HTTP server (`bridge.http`) serves them beside /healthz, /readyz and /metrics. A page costs
what it shows: the catalog is searched and sorted once per catalog state and query (the
sorted keys are kept for the catalog last seen), and only one page of rows is built.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from bridge.catalog.model import Catalog, ServiceKey
from bridge.explain.model import World, explain, summary_rows
from bridge.explain.page import PAGE_SIZE, explain_page, status_page

Reply = tuple[int, str, bytes]
Query = Mapping[str, list[str]]
Handler = Callable[[Query], Reply]
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"


def _one(query: Query, name: str, default: str = "") -> str:
    values = query.get(name) or [default]
    return values[0]


class View(Protocol):
    """What the pages read (`state.OperatorState` of a running bridge)."""

    def world(self) -> World: ...

    def status(self) -> dict[str, Any]: ...


class Routes:
    def __init__(self, state: View) -> None:
        self._state = state
        self._lock = threading.Lock()  # the sorted keys below; taken by HTTP threads only
        self._sorted: tuple[Catalog | None, list[ServiceKey]] = (None, [])

    def handlers(self) -> dict[str, Handler]:
        return {"/explain": self.explain_json, "/status": self.status,
                "/status/explain": self.explain_html}

    def explain_json(self, query: Query) -> Reply:
        name = _one(query, "name").strip()
        if not name:
            return 400, "text/plain; charset=utf-8", \
                b"missing ?name=NAME (a DNS name, a Consul name or NAMESPACE/SERVICE)\n"
        body = json.dumps(explain(self._state.world(), name), indent=2, sort_keys=True)
        return 200, JSON_TYPE, body.encode() + b"\n"

    def explain_html(self, query: Query) -> Reply:
        name = _one(query, "name").strip()
        world = self._state.world()
        explanation = explain(world, name) if name else {"query": "", "reading": "", "ready": True}
        return 200, HTML_TYPE, explain_page(explanation, self._state.status()["now"])

    def _keys(self, catalog: Catalog) -> list[ServiceKey]:
        with self._lock:
            seen, keys = self._sorted
            if seen is not catalog:
                keys = sorted(catalog.services)
                self._sorted = (catalog, keys)
            return keys

    def status(self, query: Query) -> Reply:
        world = self._state.world()
        text = _one(query, "q").strip().lower()
        try:
            page = max(1, int(_one(query, "page", "1")))
        except ValueError:
            page = 1
        keys = self._keys(world.catalog)
        matched = [k for k in keys if text in k.name or text in k.namespace or text in f"{k.namespace}/{k.name}"] \
            if text else keys
        pages = max(1, -(-len(matched) // PAGE_SIZE))
        page = min(page, pages)
        shown = matched[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
        sources = [dataclasses.asdict(s) for s in world.sources]
        body = status_page(self._state.status(), sources, summary_rows(world, shown), len(keys),
                           len(matched), text, page)
        return 200, HTML_TYPE, body
