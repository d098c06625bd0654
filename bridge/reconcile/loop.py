"""The reconciler: merge the sources, publish the catalog, bring the sinks in line.

Level-triggered: each pass recomputes the full desired state from the current snapshots
and applies only the difference from what the sink holds. The sink's contents are read
once at start and on every periodic resync (which is how drift made by others is
repaired); in between, the reconciler keeps its own record, updated from each apply's
per-item results, and rereads after any failure. Nothing is deleted from Consul before
both sources have listed completely once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter, Gauge

from bridge.catalog.merge import merge
from bridge.catalog.model import Catalog, Snapshot
from bridge.catalog.plan import Plan, Registration, SyncOptions, desired, diff
from bridge.errors import BridgeError
from bridge.reconcile.trigger import Trigger
from bridge.retry import Backoff

log = logging.getLogger(__name__)

PASSES = Counter("bridge_reconcile_passes_total", "Reconcile passes", ["reason"])
PLANNED = Counter("bridge_reconcile_planned_total", "Planned Consul changes", ["op"])
SERVICES = Gauge("bridge_catalog_services", "Services in the merged catalog")
INSTANCES = Gauge("bridge_catalog_instances", "Instances in the merged catalog")


class Source(Protocol):
    @property
    def synced(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...


class Sink(Protocol):
    def actual(self) -> dict[str, Registration]: ...

    def apply(self, plan: Plan) -> object: ...


class Reconciler:
    def __init__(self, *, kube: Source, consul: Source | None, sink: Sink | None,
                 publish: Callable[[Catalog], None], options: SyncOptions, trigger: Trigger,
                 stop: threading.Event, resync_period: float, local_wins: bool = False) -> None:
        self._kube = kube
        self._consul = consul
        self._sink = sink
        self._publish = publish
        self._options = options
        self._trigger = trigger
        self._stop = stop
        self._resync = resync_period
        self._local_wins = local_wins
        self._generation = 0
        self._published: Catalog | None = None
        self._actual: dict[str, Registration] | None = None
        self.last_plan: Plan | None = None
        self._backoff = Backoff(base=0.5, cap=60.0)
        self.thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            poked = self._trigger.wait(self._resync)
            if self._stop.is_set():
                return
            try:
                self.step(resync=not poked)
            except Exception:
                # One bad pass must not end reconciling; the next poke or resync retries.
                log.exception("reconcile pass failed")
                self._actual = None

    def step(self, *, resync: bool = False) -> None:
        PASSES.labels("resync" if resync else "change").inc()
        kube = self._kube.snapshot()
        consul = self._consul.snapshot() if self._consul else Snapshot(synced=True)
        self._generation += 1
        catalog = merge(kube, consul, local_wins=self._local_wins, generation=self._generation)
        published = self._published
        if published is None or published.services != catalog.services \
                or published.ready != catalog.ready:
            self._published = catalog
            SERVICES.set(len(catalog.services))
            INSTANCES.set(sum(len(s.instances) for s in catalog.services.values()))
            self._publish(catalog)
        if self._sink is not None and kube.synced and consul.synced:
            self._sync_consul(kube, reread=resync)

    def _sync_consul(self, kube: Snapshot, *, reread: bool) -> None:
        assert self._sink is not None
        self._options.skipped.clear()
        wanted = desired(kube, self._options)
        for reason in self._options.skipped:
            log.warning("not registered: %s", reason)
        if reread or self._actual is None:
            try:
                self._actual = self._sink.actual()
            except BridgeError as exc:
                log.warning("reading our Consul registrations failed: %s", exc)
                self._actual = None
                return
        plan = diff(wanted, self._actual)
        self.last_plan = plan
        if plan.empty:
            return
        PLANNED.labels("create").inc(len(plan.create))
        PLANNED.labels("update").inc(len(plan.update))
        PLANNED.labels("delete").inc(len(plan.delete))
        log.info("consul: %d to create, %d to update, %d to delete", len(plan.create),
                 len(plan.update), len(plan.delete))
        result = self._sink.apply(plan)
        written = set(getattr(result, "written", ()))
        failed = getattr(result, "failed", {})
        actual = dict(self._actual)
        for reg in (*plan.create, *plan.update):
            if reg.service_id in written:
                actual[reg.service_id] = reg
        for reg in plan.delete:
            if reg.service_id in written:
                actual.pop(reg.service_id, None)
        # After a failure our record may be wrong: reread before the next plan.
        self._actual = None if failed else actual
        if failed:
            delay = self._backoff.next_delay()
            log.warning("%d registrations failed; retrying in %.1fs", len(failed), delay)
            timer = threading.Timer(delay, self._trigger.poke)
            timer.daemon = True
            timer.start()
        else:
            self._backoff.reset()
