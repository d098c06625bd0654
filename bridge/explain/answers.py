"""What DNS answers now, for the operator's view: the DNS answer logic itself, never a copy.

With `dns.workers` at 0 the DNS server's own table answers. With worker processes the
tables live in the workers, so this process keeps an `Answerer` of its own for the last
catalog it was asked about: built on the first question, then derived from the services
that changed (`Answerer.derive`, as the tables are), only when someone asks. The DNS
publisher never waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bridge.catalog.model import Catalog
from bridge.config import DnsSettings
from bridge.dns.answer import Answerer
from bridge.dns.records import NotOurs, Response
from bridge.dns.table import changed_keys

Answer = Callable[[str, int], "Response | NotOurs"]


class CurrentAnswers:
    """`answer_for(catalog)`: a function answering (name, qtype) as DNS does for `catalog`."""

    def __init__(self, settings: DnsSettings, table: Callable[[], object] | None = None) -> None:
        """`table`: the DNS server's current table, when this process serves DNS itself."""
        self._settings = settings
        self._table = table
        self._lock = threading.Lock()  # one build at a time; only HTTP requests take it
        self._catalog: Catalog | None = None
        self._answerer: Answerer | None = None

    def answer_for(self, catalog: Catalog) -> Answer:
        if self._table is not None:
            table = self._table()
            if getattr(table, "catalog", None) is catalog:
                return table.answer  # type: ignore[attr-defined]
        with self._lock:
            if self._catalog is not catalog or self._answerer is None:
                self._answerer = self._derive(catalog)
                self._catalog = catalog
            return self._answerer.answer

    def _derive(self, catalog: Catalog) -> Answerer:
        previous, answerer = self._catalog, self._answerer
        if previous is not None and answerer is not None and previous.ready == catalog.ready:
            derived = answerer.derive(catalog, previous,
                                      changed_keys(previous.services, catalog.services))
            if derived is not None:
                return derived[0]
        dns = self._settings
        return Answerer(catalog, dns.zone, dns.ttl, pods=dns.pods,
                        ignore_empty_service=dns.ignore_empty_service)
