"""The other clusters' claims as every replica sees them: alive, or dead since when.

`ClusterWatcher` follows `bridge/clusters/` with a blocking recursive KV read. A key whose
Session is set belongs to a cluster whose bridge is alive; a key without one (the session
lapsed or was released; the value stays, as the sessions are made with behavior
"release") to a dead one. "Since" is when this replica saw the change, on its monotonic
clock; a cluster first seen dead counts from then. `bridge_cluster_alive{cluster}` shows
each, and each change is logged once.

`DeadClusterFilter` applies `catalog/expiry.py` with `sync.expire_dead_clusters_after`
to the merged services before DNS sees them, logging when names are hidden or, by
self-preservation, kept. The watcher calls `on_change` when a cluster's state changes and
again when a dead cluster's instances come due, so the publisher re-merges at that moment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from prometheus_client import Gauge

from bridge.catalog.expiry import expire
from bridge.catalog.model import Service, ServiceKey
from bridge.consul.blocking import BlockingLoop
from bridge.ha.claim import KEY_PREFIX, ClaimValue
from bridge.ha.clock import Clock
from bridge.outage import Outage
from bridge.threads import Threads

log = logging.getLogger(__name__)

ALIVE = Gauge("bridge_cluster_alive", "1 while the cluster's bridge holds its claim in Consul, "
              "0 once the claim lapsed", ["cluster"])


@dataclass(frozen=True, slots=True)
class ClusterView:
    cluster_id: str
    alive: bool
    since: float  # monotonic: when this replica saw `alive` take its value
    claim: ClaimValue | None


class KvLister(Protocol):
    def kv_list(self, prefix: str, index: int | None) -> tuple[int, list[dict[str, Any]]]: ...


Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]


def _timer(seconds: float, call: Callable[[], None]) -> Callable[[], None]:
    """Runs `call` after `seconds` on a daemon thread; returns what cancels it."""
    timer = threading.Timer(seconds, call)
    timer.daemon = True
    timer.start()
    return timer.cancel


class ClusterWatcher:
    """Tracks every claim under `bridge/clusters/`. `observe()` runs on the watcher's
    thread; `clusters()` and `dead()` may be read from any thread (each is one reference,
    replaced whole)."""

    def __init__(self, consul: KvLister, *, our_cluster_id: str, clock: Clock,
                 stop: threading.Event, on_change: Callable[[], None] = lambda: None,
                 expire_after: float = 0.0, schedule: Schedule = _timer,
                 outage: Outage | None = None) -> None:
        """`outage`: Consul's, which the watch waits through (`bridge/outage.py`)."""
        self._consul = consul
        self._outage = outage
        self._ours = our_cluster_id
        self._clock = clock
        self._stop = stop
        self._on_change = on_change
        self._expire_after = expire_after
        self._schedule = schedule
        self._due: dict[str, Callable[[], None]] = {}  # cluster -> cancels its wake-up
        self._clusters: Mapping[str, ClusterView] = MappingProxyType({})
        self._dead: Mapping[str, float] = MappingProxyType({})
        self.synced = False
        self.thread = threading.Thread(target=self._run, name="consul-clusters", daemon=True)

    def clusters(self) -> Mapping[str, ClusterView]:
        return self._clusters

    def dead(self) -> Mapping[str, float]:
        """Dead clusters other than ours, each with when it was first seen dead."""
        return self._dead

    def start(self, threads: Threads | None = None) -> None:
        """Starts the loop; through `threads` when given, so its death fails /healthz."""
        if threads is None:
            self.thread.start()
        else:
            self.thread = threads.start("consul-clusters", self._run)

    def _run(self) -> None:
        BlockingLoop(f"consul kv {KEY_PREFIX}", lambda index: self._consul.kv_list(KEY_PREFIX, index),
                     self._deliver, self._stop, outage=self._outage).run()

    def _deliver(self, entries: list[dict[str, Any]]) -> bool:
        if self.observe(entries):
            self._on_change()
        return True

    def observe(self, entries: list[dict[str, Any]]) -> bool:
        """One listing of the prefix; True when any cluster's state changed."""
        now = self._clock.monotonic()
        before = self._clusters
        after: dict[str, ClusterView] = {}
        for entry in entries:
            key = entry.get("Key")
            if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
                continue
            cluster = key[len(KEY_PREFIX):]
            if not cluster or "/" in cluster:
                continue
            alive = bool(entry.get("Session"))
            claim = ClaimValue.decode(entry.get("Value"))
            old = before.get(cluster)
            if old is not None and old.alive == alive:
                after[cluster] = ClusterView(cluster, alive, old.since, claim)
                continue
            after[cluster] = ClusterView(cluster, alive, now, claim)
            self._changed(cluster, old, after[cluster])
        for cluster in before.keys() - after.keys():
            log.info("cluster %s: its claim was deleted from Consul; no longer tracked", cluster)
            ALIVE.remove(cluster)
            self._cancel(cluster)
        changed = before.keys() != after.keys() or any(
            before[c].alive != v.alive for c, v in after.items() if c in before)
        self._clusters = MappingProxyType(after)
        self._dead = MappingProxyType({c: v.since for c, v in after.items()
                                       if not v.alive and c != self._ours})
        self.synced = True
        return changed

    def _changed(self, cluster: str, old: ClusterView | None, new: ClusterView) -> None:
        ALIVE.labels(cluster).set(1 if new.alive else 0)
        who = new.claim.describe() if new.claim else "no readable claim"
        if new.alive:
            self._cancel(cluster)
            if old is not None:
                log.info("cluster %s: its bridge holds its claim again (%s)", cluster, who)
            return
        if cluster == self._ours:
            log.info("cluster %s (this cluster): no bridge holds its claim at the moment", cluster)
            return
        hide = (f"its instances stop being answered in {self._expire_after:g}s unless that takes "
                "more than half of a name's" if self._expire_after > 0
                else "its instances stay answered (sync.expire_dead_clusters_after is 0)")
        seen = "found dead" if old is None else "dead: its bridge's claim lapsed"
        log.warning("cluster %s %s (%s); %s", cluster, seen, who, hide)
        if self._expire_after > 0:
            self._cancel(cluster)
            self._due[cluster] = self._schedule(self._expire_after, self._on_change)

    def _cancel(self, cluster: str) -> None:
        cancel = self._due.pop(cluster, None)
        if cancel is not None:
            cancel()


class DeadClusterFilter:
    """The merged services as DNS should see them, given the watcher's dead clusters.
    Called from the publisher's thread only."""

    def __init__(self, watcher: ClusterWatcher, *, expire_after: float, clock: Clock) -> None:
        self._watcher = watcher
        self._after = expire_after
        self._clock = clock
        self._hidden: frozenset[ServiceKey] = frozenset()
        self._kept: frozenset[ServiceKey] = frozenset()

    def apply(self, services: Mapping[ServiceKey, Service]) -> Mapping[ServiceKey, Service]:
        if self._after <= 0:
            return services
        result = expire(services, self._watcher.dead(), self._clock.monotonic(), self._after)
        hidden, kept = frozenset(result.hidden), frozenset(result.kept)
        if hidden - self._hidden:
            log.info("instances of dead clusters no longer answered for %s", _names(hidden - self._hidden))
        if self._hidden - hidden:
            log.info("instances of dead clusters answered again for %s", _names(self._hidden - hidden))
        if kept - self._kept:
            owners = sorted(set().union(*(result.kept[k] for k in kept - self._kept)))
            log.warning("still answering instances of dead cluster(s) %s for %s: hiding them would take "
                        "away more than half of each name's instances (self-preservation)",
                        ", ".join(owners), _names(kept - self._kept))
        self._hidden, self._kept = hidden, kept
        return result.services


def _names(keys: frozenset[ServiceKey], shown: int = 5) -> str:
    """A count and the first few names, for one log line about many names."""
    first = ", ".join(str(k) for k in sorted(keys)[:shown])
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} name(s): {first}{more}"
