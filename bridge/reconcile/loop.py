"""The reconciler: bring the sinks (Consul, and Kubernetes with `to_k8s`) in line.

Level-triggered: each pass recomputes the full desired state from the current snapshots
and applies only the difference from what each sink holds. Every sink is one `Lane`: a
planner (`plans.py`, the only per-sink part) builds the plan, the sink applies it, and
the outcome of every item goes back to the planner; skipped items are logged once while
they last, and a pass with any failure is retried with backoff (`bridge.retry`), sooner
if a change arrives. Nothing is written, and so nothing deleted, before both sources
have listed completely once. A plan that is a first step (adoption: the bridge's own
registrations before consul-k8s's go) asks for a follow-up, planned in the same pass
once it has been applied in full.

With a write gate (high availability: `bridge/ha/`), a replica that is not the writer
plans nothing and reads nothing of the sinks: its passes end at the gate. The first pass
after it becomes the writer rereads what each sink holds, so a new writer starts from
what the sinks hold and, when nothing changed, writes nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol

from prometheus_client import Counter, Histogram
from tenacity import RetryCallState, retry_if_exception_type, retry_if_result

from bridge import memory_policy
from bridge.catalog.model import Snapshot
from bridge.catalog.sink import ApplyResult, Sink
from bridge.errors import BridgeError, Unavailable
from bridge.ha.gate import WriteGate
from bridge.outage import Outage
from bridge.reconcile.plans import P, Planner
from bridge.reconcile.trigger import Trigger
from bridge.retry import Backoff, Stopped, retrying
from bridge.threads import Threads

log = logging.getLogger(__name__)

PASSES = Counter("bridge_reconcile_passes_total", "Reconcile passes (those of a replica that is "
                 "not the writer end at the write gate)", ["reason"])
PLANNED = Counter("bridge_reconcile_planned_total", "Planned writes", ["sink", "op"])
SKIPPED = Counter("bridge_sync_skipped_total", "Services, endpoints or objects not written, "
                  "each with a logged reason")
LAG = Histogram("bridge_sync_lag_seconds", "From a change arriving to its write",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


class Source(Protocol):
    @property
    def synced(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...


@dataclass
class Lane(Generic[P]):
    """One sink and how its plans are made."""

    name: str
    planner: Planner[P]
    sink: Sink[object, P, Any]
    in_sync: bool = False  # the last pass left the sink as desired
    reported: frozenset[str] = frozenset()  # skip reasons logged, while they last
    # The sink's server: while it is down, its outage (bridge/outage.py) is what is logged.
    outage: Outage | None = None
    # Reading what the sink holds met a 429: not again before this (time.monotonic).
    throttled_until: float = 0.0

    @property
    def down(self) -> bool:
        return self.outage is not None and self.outage.failing

    @property
    def not_before(self) -> float:
        """When the sink's server asked us to come back (time.monotonic; 0 if it did not)."""
        return max(self.throttled_until, float(getattr(self.sink, "throttled_until", 0.0)))


class Reconciler:
    def __init__(self, *, kube: Source, consul: Source | None, lanes: Sequence[Lane[Any]],
                 trigger: Trigger, stop: threading.Event, resync_period: float,
                 dry_run: bool = False, threads: Threads | None = None,
                 gate: WriteGate | None = None) -> None:
        """`dry_run`: log the plans, write nothing. `gate`: passes run only while it is
        open (None: always)."""
        self._kube = kube
        self._gate = gate
        self._writer = False  # the last pass ran past the gate
        self._consul = consul
        self.lanes = tuple(lanes)
        self._trigger = trigger
        self._stop = stop
        self._resync = resync_period
        self._dry_run = dry_run
        self._threads = threads or Threads()
        self._heap_settled = False
        # A pass that leaves any sink unsettled is tried again with backoff; the wait ends
        # early when a change arrives (so one bad item never holds the others back for
        # long) or the bridge stops.
        self._retrying = retrying(
            stop, Backoff(base=0.5, cap=60.0), sleep=self._retry_wait,
            retry=retry_if_result(lambda settled: not settled) | retry_if_exception_type(Exception),
            before_sleep=self._unsettled)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = self._threads.start("reconciler", self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            first_poke = self._trigger.wait(self._resync)
            if self._stop.is_set():
                return
            try:
                self._retrying(self.step, resync=first_poke is None, since=first_poke)
            except Stopped:
                return

    def _retry_wait(self, seconds: float) -> None:
        """The wait before a pass is tried again. A server that said when to come back
        (429 Retry-After) gets exactly that, however many passes it refused and however
        many changes arrive meanwhile: sooner only earns another 429, and later leaves
        Consul wrong for longer once it accepts writes again. Otherwise the backoff, cut
        short by a change."""
        floor = max((lane.not_before for lane in self.lanes), default=0.0) - time.monotonic()
        if floor > 0:
            self._stop.wait(floor * (1 + random.random() / 10))
            return
        self._trigger.wait(seconds)

    def _unsettled(self, state: RetryCallState) -> None:
        if self._stop.is_set():
            return
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None and any(lane.down for lane in self.lanes):
            log.debug("retrying the sync in %.1fs (a server is down)", state.upcoming_sleep)
        elif exc is None and any(lane.not_before > time.monotonic() for lane in self.lanes):
            log.debug("retrying the sync once the server's Retry-After has passed")
        elif exc is not None:
            log.error("reconcile pass failed; retrying in %.1fs", state.upcoming_sleep,
                      exc_info=exc)
        else:
            log.info("retrying the sync in %.1fs", state.upcoming_sleep)

    def step(self, *, resync: bool = False, since: float | None = None) -> bool:
        """One pass over every sink; False when one is left unsettled (to retry).
        `since` is when the first change it handles arrived (for the lag)."""
        PASSES.labels("resync" if resync else "change").inc()
        if self._gate is not None and not self._gate.may_write():
            # Another replica writes; the gate's opening pokes the trigger.
            self._writer = False
            for lane in self.lanes:
                lane.in_sync = False
            return True
        kube = self._kube.snapshot()
        consul = self._consul.snapshot() if self._consul else Snapshot(synced=True)
        if not (kube.synced and consul.synced):
            return True  # the source that lists last pokes again
        reread = resync or not self._writer  # a new writer trusts nothing remembered
        self._writer = True
        settled = True
        for lane in self.lanes:
            try:
                settled = self._sync(lane, kube, consul, reread=reread, since=since) and settled
            except Exception:
                # A bug in one sink's pass must not keep the other sinks from theirs.
                log.exception("%s: reconcile pass failed", lane.name)
                lane.in_sync = settled = False
        return settled

    def _sync(self, lane: Lane[Any], kube: Snapshot, consul: Snapshot, *, reread: bool,
              since: float | None, follow: bool = True) -> bool:
        """`follow`: a plan that asks for a follow-up gets it, planned on the same
        snapshots once it is applied (once per pass)."""
        lane.in_sync = False
        try:
            decision = lane.planner.plan(kube, consul, reread=reread)
        except BridgeError as exc:
            retry_after = getattr(exc, "retry_after", None)
            quiet = isinstance(exc, Unavailable) or (retry_after and lane.throttled_until)
            if retry_after:  # the server said when: logged once while it says so
                lane.throttled_until = time.monotonic() + retry_after
            if not self._stop.is_set():
                log.log(logging.DEBUG if quiet else logging.WARNING,
                        "%s: reading what the sink holds failed: %s", lane.name, exc)
            return False
        lane.throttled_until = 0.0
        self._report_skips(lane, decision.skipped)
        plan = decision.plan
        if plan.empty:
            lane.planner.applied(plan, ApplyResult())
            lane.in_sync = True
            return True
        counts = plan.counts()
        for op, count in counts.items():
            PLANNED.labels(lane.name, op).inc(count)
        if self._dry_run:
            for line in plan.describe():
                log.info("dry-run: would %s", line)
            # Go on as if applied: each change is logged once, and the whole difference
            # again at each resync (which rereads what the sink holds).
            lane.planner.applied(plan, ApplyResult())
            return True
        log.log(logging.DEBUG if lane.down else logging.INFO, "%s: %s", lane.name,
                ", ".join(f"{count} to {op}" for op, count in counts.items()))
        result = lane.sink.apply(plan)
        if result.written and since is not None:
            LAG.observe(max(0.0, time.monotonic() - since))
        lane.planner.applied(plan, result)
        if result.failed:
            if self._gate is not None and not self._gate.may_write():
                log.info("%s: writes stopped: this replica is no longer the writer; %d left "
                         "to the next", lane.name, len(result.failed))
            elif not self._stop.is_set():  # when stopping, the rest was not sent: no news
                log.log(logging.DEBUG if lane.down else logging.WARNING, "%s: %d writes failed",
                        lane.name, len(result.failed))
            return False
        if decision.follow_up and follow:
            return self._sync(lane, kube, consul, reread=False, since=None, follow=False)
        lane.in_sync = True
        if not self._heap_settled:
            # The first full sync made what lives long (registrations, our record of the
            # sink), as the first catalog did for the app.
            self._heap_settled = True
            memory_policy.settle()
        return True

    @staticmethod
    def _report_skips(lane: Lane[Any], skipped: tuple[str, ...]) -> None:
        reasons = frozenset(skipped)
        for reason in sorted(reasons - lane.reported):
            SKIPPED.inc()
            log.warning("%s: not written: %s", lane.name, reason)
        lane.reported = reasons

    @property
    def in_sync(self) -> bool:
        """The last pass left every sink as desired."""
        return all(lane.in_sync for lane in self.lanes)

    @property
    def converged(self) -> bool:
        """Every sink is as desired and no change is waiting to be handled."""
        return self.in_sync and not self._trigger.pending
