"""The DNS publisher: merges the sources into a catalog and hands it to DNS, quickly.

It runs in its own thread with its own coalescing trigger, tighter than the sinks' (10 ms
quiet, 40 ms at most), so a new answer never waits behind a Consul transaction or a
Kubernetes write: the watch event -> DNS answer path is merge + publish only. The catalog
is immutable and swapped whole, so DNS readers see one state or the next, never a mix.
`visible` (high availability: the dead-cluster filter) has the last word on the merged
services, and is asked again on every pass, so what it hides or shows again is published
when its owner pokes the trigger.

With each catalog it keeps what it was made from (`Published`: the two snapshots, the
merged services before the filter, and when each service last changed), one reference
replaced whole, so /status and `bridge explain` read one consistent state without a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from prometheus_client import Gauge, Histogram

from bridge.catalog.merge import merge
from bridge.catalog.model import Catalog, Service, ServiceKey, Snapshot
from bridge.dns.table import changed_keys
from bridge.reconcile.loop import Source
from bridge.reconcile.trigger import Trigger
from bridge.threads import Threads

log = logging.getLogger(__name__)

QUIET = 0.01
MAX_DELAY = 0.04
IDLE_RECHECK = 60.0

SERVICES = Gauge("bridge_catalog_services", "Services in the merged catalog")
INSTANCES = Gauge("bridge_catalog_instances", "Instances in the merged catalog")
PUBLISH = Histogram("bridge_dns_publish_seconds", "Time to merge and publish one catalog",
                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30))


class Published(NamedTuple):
    """A published catalog and what it was made from."""

    catalog: Catalog
    kube: Snapshot  # DNS's view of Kubernetes
    consul: Snapshot
    merged: Mapping[ServiceKey, Service]  # before `visible` hid anything
    changed_at: Mapping[ServiceKey, float]  # wall-clock time each service last changed


def changed_at(before: Mapping[ServiceKey, Service], after: Mapping[ServiceKey, Service],
               times: Mapping[ServiceKey, float], now: float) -> Mapping[ServiceKey, float]:
    """`times` brought up to `after`: `now` for each service new or changed since `before`,
    gone ones dropped."""
    changed = changed_keys(before, after)
    if not changed:
        return times
    kept = dict(times)
    for key in changed:
        if key in after:
            kept[key] = now
        else:
            kept.pop(key, None)
    return MappingProxyType(kept)


class Publisher:
    def __init__(self, *, kube: Source, consul: Source | None, publish: Callable[[Catalog], None],
                 stop: threading.Event, local_wins: bool = False,
                 threads: Threads | None = None,
                 visible: Callable[[Mapping[ServiceKey, Service]], Mapping[ServiceKey, Service]]
                 | None = None) -> None:
        """`visible`: the services DNS answers, given the merged ones (None: all)."""
        self._kube = kube
        self._visible = visible
        self._consul = consul
        self._publish = publish
        self._stop = stop
        self._local_wins = local_wins
        self.trigger = Trigger(QUIET, MAX_DELAY)
        self.published: Catalog | None = None
        self.view: Published | None = None  # the last catalog published, and its inputs
        self._generation = 0
        self._threads = threads or Threads()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = self._threads.start("dns-publisher", self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.trigger.wait(IDLE_RECHECK)
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                # A bad pass must not stop DNS updates; the next change tries again.
                log.exception("publishing the catalog failed")

    def step(self) -> None:
        with PUBLISH.time():
            kube = self._kube.snapshot()
            consul = self._consul.snapshot() if self._consul else Snapshot(synced=True)
            catalog = merge(kube, consul, local_wins=self._local_wins, generation=self._generation + 1)
            merged = catalog.services
            if self._visible is not None:
                shown = self._visible(catalog.services)
                if shown is not catalog.services:
                    catalog = dataclasses.replace(catalog, services=shown)
            published = self.published
            if published is not None and published.services == catalog.services \
                    and published.ready == catalog.ready:
                return
            self._generation += 1
            self.published = catalog
            view = self.view
            self.view = Published(catalog, kube, consul, merged, changed_at(
                view.catalog.services if view else {}, catalog.services,
                view.changed_at if view else {}, time.time()))
            SERVICES.set(len(catalog.services))
            INSTANCES.set(sum(len(s.instances) for s in catalog.services.values()))
            self._publish(catalog)
