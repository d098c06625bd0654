"""The reconciler: bring the sinks (Consul, and Kubernetes with `to_k8s`) in line.

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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Histogram

from bridge import memory_policy
from bridge.catalog.model import Snapshot
from bridge.catalog.plan import Plan, Registration, diff
from bridge.catalog.to_consul import Memo, SyncOptions, desired
from bridge.errors import BridgeError
from bridge.kube.sink import KubeSink
from bridge.reconcile.trigger import Trigger
from bridge.retry import Backoff

log = logging.getLogger(__name__)

PASSES = Counter("bridge_reconcile_passes_total", "Reconcile passes", ["reason"])
PLANNED = Counter("bridge_reconcile_planned_total", "Planned Consul changes", ["op"])
SKIPPED = Counter("bridge_sync_skipped_total", "Services or endpoints not registered, with a logged reason")
LAG = Histogram("bridge_sync_lag_seconds", "From a change arriving to its Consul write",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class Source(Protocol):
    @property
    def synced(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...


class ApplyResult(Protocol):
    written: list[str]
    failed: dict[str, str]


class Sink(Protocol):
    def actual(self) -> dict[str, Registration]: ...

    def apply(self, plan: Plan) -> ApplyResult: ...


@dataclass(frozen=True)
class Mode:
    """How writes are made: `upsert_only` never deletes; `dry_run` logs the plan only."""

    upsert_only: bool = False
    dry_run: bool = False


class Reconciler:
    def __init__(self, *, kube: Source, consul: Source | None, sink: Sink | None,
                 options: SyncOptions, trigger: Trigger, stop: threading.Event, resync_period: float,
                 mode: Mode | None = None, kube_sink: KubeSink | None = None) -> None:
        self._kube = kube
        self._consul = consul
        self._sink = sink
        self._options = options
        self._trigger = trigger
        self._stop = stop
        self._resync = resync_period
        self._actual: dict[str, Registration] | None = None
        self._memo = Memo()  # registrations of the Services unchanged since the last pass
        self._actual_is_last = False  # `_actual` holds exactly the last `desired()` result
        self._heap_settled = False
        self.last_plan: Plan | None = None
        self.in_sync = False  # the last pass left Consul as desired (nothing failed or pending)
        self._kube_sink = kube_sink
        self.kube_in_sync = kube_sink is None
        self._backoff = Backoff(base=0.5, cap=60.0)
        self._mode = mode or Mode()
        self._skips_logged: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first_poke = self._trigger.wait(self._resync)
            if self._stop.is_set():
                return
            try:
                self.step(resync=first_poke is None, since=first_poke)
            except Exception:
                # One bad pass must not end reconciling; the next poke or resync retries.
                log.exception("reconcile pass failed")
                self._actual = None
                self._retry_later()

    def step(self, *, resync: bool = False, since: float | None = None) -> None:
        """One pass. `since` is when the first change it handles arrived (for the lag)."""
        PASSES.labels("resync" if resync else "change").inc()
        kube = self._kube.snapshot()
        consul = self._consul.snapshot() if self._consul else Snapshot(synced=True)
        # Nothing is written, and so nothing deleted, before both sources listed completely.
        if self._sink is not None and kube.synced and consul.synced:
            self._sync_consul(kube, reread=resync, since=since)
        if self._kube_sink is not None and kube.synced and consul.synced:
            self._sync_kube(consul)

    def _sync_kube(self, consul: Snapshot) -> None:
        assert self._kube_sink is not None
        services, slices = self._kube.objects()  # type: ignore[attr-defined]
        if self._mode.dry_run:
            return
        result = self._kube_sink.sync(consul, services, slices)
        plan = self._kube_sink.last_plan
        self.kube_in_sync = not result.failed and (plan is None or plan.empty or bool(result.written))
        if result.failed:
            self._retry_later()

    def _report_skips(self) -> None:
        reasons = set(self._options.skipped)
        for reason in sorted(reasons - self._skips_logged):
            SKIPPED.inc()
            log.warning("not registered: %s", reason)
        self._skips_logged = reasons

    def _sync_consul(self, kube: Snapshot, *, reread: bool, since: float | None) -> None:
        assert self._sink is not None
        self._options.skipped.clear()
        wanted = desired(kube, self._options, self._memo)
        self._report_skips()
        self.in_sync = False
        if reread or self._actual is None:
            try:
                self._actual = self._sink.actual()
            except BridgeError as exc:
                log.warning("reading our Consul registrations failed: %s", exc)
                self._actual = None
                self._retry_later()
                return
        # Our record equals the last result (`_settled`): only what the memo touched since
        # can differ. Else (reread, first pass, upsert-only extras) compare everything.
        only = self._memo.touched if self._actual_is_last and not reread else None
        plan = diff(wanted, self._actual, only)
        self._actual_is_last = False
        if self._mode.upsert_only and plan.delete:
            log.info("upsert-only: keeping %d registrations Kubernetes no longer has", len(plan.delete))
            plan = Plan(plan.create, plan.update, (), plan.replaced)
        self.last_plan = plan
        self.in_sync = plan.empty
        if plan.empty:
            self._remember(wanted)
            self._backoff.reset()
            return
        PLANNED.labels("create").inc(len(plan.create))
        PLANNED.labels("update").inc(len(plan.update))
        PLANNED.labels("delete").inc(len(plan.delete))
        if self._mode.dry_run:
            for verb, regs in (("register", (*plan.create, *plan.update)), ("deregister", plan.delete)):
                for reg in regs:
                    log.info("dry-run: would %s %s (%s %s:%d)", verb, reg.service_id, reg.name,
                             reg.address, reg.port)
            return
        log.info("consul: %d to create, %d to update, %d to delete", len(plan.create),
                 len(plan.update), len(plan.delete))
        result = self._sink.apply(plan)
        if result.written and since is not None:
            LAG.observe(max(0.0, time.monotonic() - since))
        if result.failed:
            # Our record may be wrong now: reread before the next plan.
            self._actual = None
            log.warning("%d registrations failed", len(result.failed))
            self._retry_later()
        else:
            for reg in plan.delete:  # everything was written: creates and updates are in
                self._actual.pop(reg.service_id, None)  # `wanted`, the deletes are gone
            self._remember(wanted)
            self.in_sync = True
            self._backoff.reset()
            if not self._heap_settled:
                # The first full sync made what lives long (registrations, our record of
                # Consul), as the first catalog did for the app.
                self._heap_settled = True
                memory_policy.settle()

    def _remember(self, wanted: Mapping[str, Registration]) -> None:
        """Consul holds all of `wanted` now (see `_settled`)."""
        assert self._actual is not None
        self._actual = _settled(wanted, self._actual)
        self._actual_is_last = len(self._actual) == len(wanted)

    @property
    def converged(self) -> bool:
        """Consul is as desired and no change is waiting to be handled."""
        return self.in_sync and self.kube_in_sync and not self._trigger.pending

    def _retry_later(self) -> None:
        """Another pass after a backoff delay: the desired state is kept, not dropped."""
        delay = self._backoff.next_delay()
        log.info("retrying the sync in %.1fs", delay)
        timer = threading.Timer(delay, self._trigger.poke)
        timer.daemon = True
        timer.start()


def _settled(wanted: Mapping[str, Registration], actual: Mapping[str, Registration]
             ) -> dict[str, Registration]:
    """Our record of Consul once it holds all of `wanted`: `wanted`'s own objects, so that
    the next diff finds the unchanged ones by identity rather than field by field, plus
    what Consul holds beyond them (what upsert-only keeps)."""
    settled: dict[str, Registration] = wanted.copy()  # type: ignore[attr-defined]
    if len(actual) != len(wanted):
        settled.update((sid, reg) for sid, reg in actual.items() if sid not in wanted)
    return settled
