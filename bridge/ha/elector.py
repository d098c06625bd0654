"""Leader election on a Lease, with client-go's semantics, and the fencing deadline.

client-go's tools/leaderelection/leaderelection.go (`tryAcquireOrRenew`, `release`), step
by step, one step per `tick()`:

1. A leader whose observed record is its own and still valid first replaces the Lease it
   last stored (the fast path); any failure falls through to the slow path.
2. Get the Lease; absent: create it, and lead.
3. A record that differs from the one observed last is observed now, on OUR monotonic
   clock. A record with a holder that is not us, observed less than its own
   leaseDurationSeconds ago, is someone else's: try again later. Remote timestamps are
   never compared with ours.
4. Otherwise replace it naming us (leaseTransitions + 1 when the holder changes, acquire
   time and transitions kept when it was already ours). The replace carries the
   resourceVersion read, so of two candidates only one succeeds; the other gets a 409.

Candidates try every `retry_period` with client-go's jitter (factor 1.2); the leader every
`retry_period`. A leader steps down when no renewal has succeeded for `renew_deadline`.

Fencing: a write is allowed only before `may_write_until()`, the send time of the last
successful acquire or renew plus `renew_deadline`. Another replica observes that renewal no
earlier than it was sent and waits `lease_duration` (> `renew_deadline`) from then before
taking over, so this leader stops writing before anyone else may start, whatever its
renewals are doing, provided both clocks run at about the same rate. The margin
(`lease_duration - renew_deadline`) is what a write batch already under way may take.

Release (client-go's `ReleaseOnCancel`): on a clean stop the leader, having stopped
writing, replaces the Lease with no holder and leaseDurationSeconds 1, so another replica
takes over on its next try instead of after a full `lease_duration`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import Counter, Gauge

from bridge.errors import BridgeError, Conflict, Rejected
from bridge.ha.clock import Clock
from bridge.ha.episode import Episode
from bridge.ha.lease import LeaseRecord, LeaseStore, micro_time

log = logging.getLogger(__name__)

LEADER = Gauge("bridge_leader", "1 while this replica holds the Lease and may write")
TRANSITIONS = Counter("bridge_leader_transitions_total", "Times this replica became the leader")

# client-go's JitterFactor: candidates wait retry_period * (1 + 1.2 * rand) between tries.
JITTER_FACTOR = 1.2


class LeaderElector:
    """One replica's side of the election. Not thread-safe: one thread calls `tick()` and
    `release()`; any thread may call `is_leader()` and `may_write_until()`."""

    def __init__(self, store: LeaseStore, *, identity: str, lease_duration: int,
                 renew_deadline: float, retry_period: float, clock: Clock,
                 jitter: Callable[[], float] = random.random) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be below lease_duration")
        if not renew_deadline > JITTER_FACTOR * retry_period:
            raise ValueError("renew_deadline must exceed retry_period * 1.2")
        if not identity:
            raise ValueError("a leader election needs an identity")
        self._store = store
        self.identity = identity
        self._lease_duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._clock = clock
        self._jitter = jitter
        self._episode = Episode(log, f"leader election on {store.describe()}")
        self._lease: Mapping[str, Any] | None = None  # as last read or stored
        self._observed = LeaseRecord()
        self._observed_at = float("-inf")
        # Send time of the last successful acquire or renew while leading; None otherwise.
        self._renewed_at: float | None = None
        self.leading = False
        # Why the election cannot go on while the server refuses it (RBAC, a bad request):
        # for /readyz. Transient failures pass by themselves and are only logged.
        self.problem = ""

    # --- what the rest of the bridge reads --------------------------------------------

    def may_write_until(self) -> float:
        """Monotonic time before which this replica may write; -inf when not leading."""
        renewed = self._renewed_at
        return float("-inf") if renewed is None else renewed + self._renew_deadline

    def is_leader(self) -> bool:
        return self._clock.monotonic() < self.may_write_until()

    def describe(self) -> str:
        return self._store.describe()

    @property
    def holder(self) -> str:
        """The holder in the record observed last ("" for none)."""
        return self._observed.holder

    # --- the election -------------------------------------------------------------------

    def tick(self) -> float:
        """One attempt to acquire or renew; returns the seconds until the next one."""
        started = self._clock.monotonic()
        try:
            acquired = self._try_acquire_or_renew(started)
        except BridgeError as exc:
            self._episode.failed(exc)
            if isinstance(exc, Rejected):
                self.problem = f"leader election on {self._store.describe()} refused: {exc}"
            acquired = False
        else:
            self._episode.recovered()
            self.problem = ""
        if acquired:
            self._renewed_at = started
            if not self.leading:
                self.leading = True
                LEADER.set(1)
                TRANSITIONS.inc()
                log.info("%s: leading as %s (transitions %d)", self._store.describe(),
                         self.identity, self._observed.transitions)
        elif self.leading:
            if self._observed.holder not in ("", self.identity):
                self._step_down(f"{self._observed.holder} holds it now")
            elif self._clock.monotonic() >= self.may_write_until():
                self._step_down(f"no renewal succeeded for {self._renew_deadline:g}s")
        if self.leading:
            return self._retry_period
        return self._retry_period * (1 + JITTER_FACTOR * self._jitter())

    def release(self) -> bool:
        """Stops writing, then gives the Lease up if this replica holds it. Call only once
        every write guarded by it has finished (client-go's ReleaseOnCancel warning)."""
        if self.leading:
            self._step_down("stopping", logging.INFO)
        self._renewed_at = None
        if self._observed.holder != self.identity or self._lease is None:
            return True
        now = micro_time(self._clock.wall())
        record = LeaseRecord(duration=1, acquire_time=now, renew_time=now,
                             transitions=self._observed.transitions)
        try:
            self._observe(self._store.replace(self._lease, record.spec()))
        except BridgeError as exc:
            log.warning("%s: could not release it (it lapses by itself): %s",
                        self._store.describe(), exc)
            return False
        log.info("%s: released", self._store.describe())
        return True

    def _step_down(self, why: str, level: int = logging.WARNING) -> None:
        self.leading = False
        self._renewed_at = None
        LEADER.set(0)
        log.log(level, "%s: stopped leading: %s", self._store.describe(), why)

    def _valid(self, now: float) -> bool:
        """client-go's isLeaseValid: observed less than the record's own duration ago."""
        return self._observed_at + self._observed.duration > now

    def _observe(self, lease: Mapping[str, Any]) -> None:
        self._lease = lease
        self._observed = LeaseRecord.of(lease)
        self._observed_at = self._clock.monotonic()

    def _try_acquire_or_renew(self, now: float) -> bool:
        stamp = micro_time(self._clock.wall())
        desired = LeaseRecord(holder=self.identity, duration=self._lease_duration,
                              acquire_time=stamp, renew_time=stamp)
        # 1. Fast path: the leader replaces what it stored last, without reading first.
        if self._lease is not None and self._observed.holder == self.identity and self._valid(now):
            kept = replace(desired, acquire_time=self._observed.acquire_time,
                           transitions=self._observed.transitions)
            try:
                self._observe(self._store.replace(self._lease, kept.spec()))
                return True
            except BridgeError as exc:
                log.debug("%s: optimistic renewal failed (%s); reading it", self._store.describe(), exc)
        # 2. Get or create.
        lease = self._store.get()
        if lease is None:
            try:
                self._observe(self._store.create(desired.spec()))
            except Conflict:
                return False  # another replica created it first
            return True
        # 3. Observe a changed record now; respect a live holder.
        record = LeaseRecord.of(lease)
        self._lease = lease
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock.monotonic()
        if record.holder and record.holder != self.identity and self._valid(now):
            return False
        # 4. Take it (or renew it) with the resourceVersion just read.
        if record.holder == self.identity:
            desired = replace(desired, acquire_time=record.acquire_time, transitions=record.transitions)
        else:
            desired = replace(desired, transitions=record.transitions + 1)
        try:
            self._observe(self._store.replace(lease, desired.spec()))
        except Conflict:
            return False  # someone else wrote it since we read it
        return True
