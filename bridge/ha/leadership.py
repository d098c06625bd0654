"""The write gate: the elector and the cluster claim run on one thread, and sinks ask it.

Wiring (for the composition root, `app.py`):

- Construct: `leadership = build(settings, kube_client or None, consul_client,
  on_change=reconcile_trigger.poke)`. With `ha.enabled: false` there is no election (this
  replica always leads); without `sync.to_consul` there is no claim; with neither the gate
  is always open. Readers: a `ClusterWatcher` (clusters.py) with `on_change` poking the DNS
  publisher, and a `DeadClusterFilter` over it applied to the merged services before DNS.
- Start: `leadership.start()` before the reconciler, which writes nothing until the gate
  opens (`on_change` wakes it for a full pass when this replica starts leading).
- Sinks: before each write batch (a Consul txn, a Kubernetes write) ask the gate
  (`gate.write_timeout`); when it is closed stop applying, report the rest as not
  applied, and leave it to the next pass. A batch's request timeout ends when the gate
  closes; one sent just before has `lease_duration - renew_deadline` to land before any
  other replica may write.
- Stop: set the stop event, join the reconciler (no write under way), then
  `leadership.stop()`, which releases the Lease and then the claim (the clients may have
  cut their reads in flight by then; new requests still go out). The other replicas see
  the claim released (their `ClusterWatcher` follows it) and call `wake()`, so one of
  them takes the Lease, already free, at once instead of at its next retry.
- Readiness: `leadership.problems()` says why nothing is written (the Lease refused, a
  cluster id conflict, no access to namespace kube-system); DNS still answers, so it
  belongs in /readyz's text, not its status. Metrics register on import: bridge_leader,
  bridge_leader_transitions_total, bridge_cluster_id_conflict, bridge_cluster_alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.config import Settings
from bridge.consul.client import ConsulClient
from bridge.errors import Rejected
from bridge.ha.claim import ClaimState, ClusterClaim
from bridge.ha.clock import Clock, SystemClock
from bridge.ha.elector import LeaderElector
from bridge.threads import Threads

if TYPE_CHECKING:  # the kubernetes package is loaded only where a Kubernetes client is built
    from bridge.kube.client import KubeClient

log = logging.getLogger(__name__)


def default_identity() -> str:
    """Host name and process id, when the pod's name is not given (ha.identity, POD_NAME)."""
    return f"{socket.gethostname()}_{os.getpid()}"


def lease_name(cluster_id: str) -> str:
    return f"bridge-{cluster_id}"


def kube_system_uid(kube: KubeClient) -> str:
    """The cluster's identity: the uid of namespace kube-system (RBAC: get namespaces,
    resourceNames kube-system)."""
    namespace = kube.read("namespaces", "", "kube-system")
    uid = ((namespace or {}).get("metadata") or {}).get("uid")
    if not isinstance(uid, str) or not uid:
        raise Rejected("namespace kube-system has no uid" if namespace else "namespace kube-system not found")
    return uid


class Leadership:
    """Runs `elector.tick()` and `claim.step()` on the `ha-leadership` thread. With no
    elector this replica always leads; with no claim only the Lease gates writes."""

    def __init__(self, elector: LeaderElector | None, claim: ClusterClaim | None, *, clock: Clock,
                 retry_period: float, on_change: Callable[[], None] = lambda: None) -> None:
        self.elector = elector
        self.claim = claim
        self._clock = clock
        self._retry_period = retry_period
        self._on_change = on_change
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writable = False
        self.thread = threading.Thread(target=self._run, name="ha-leadership", daemon=True)

    def may_write_until(self) -> float:
        until = float("inf")
        if self.elector is not None:
            until = min(until, self.elector.may_write_until())
        if self.claim is not None:
            until = min(until, self.claim.may_write_until())
        return until

    def may_write(self) -> bool:
        return self._clock.monotonic() < self.may_write_until()

    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def problems(self) -> list[str]:
        """Why this replica cannot lead (the server refuses the election), or, though
        leading, writes nothing (the claim)."""
        found = []
        if self.elector is not None and self.elector.problem:
            found.append(self.elector.problem)
        if self.claim is not None and self.claim.problem and self.claim.state in (
                ClaimState.CONFLICT, ClaimState.UNKNOWN):
            found.append(self.claim.problem)
        return found

    def step(self) -> float:
        """One round: the election, then the claim; returns the seconds until the next."""
        delay = self.elector.tick() if self.elector is not None else self._retry_period
        if self.claim is not None:
            self.claim.step(self.leading())
        writable = self.may_write()
        if writable != self._writable:
            self._writable = writable
            log.info("writes %s", "allowed: this replica is the writer" if writable else "stopped")
            self._on_change()
        return delay

    def start(self, threads: Threads | None = None) -> None:
        """Starts the loop; through `threads` when given, so its death fails /healthz."""
        if threads is None:
            self.thread.start()
        else:
            self.thread = threads.start("ha-leadership", self._run)

    def wake(self) -> None:
        """Run the next round now: the Lease may have just been given up."""
        self._wake.set()

    def _run(self) -> None:
        delay = 0.0
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                delay = self.step()
            except Exception:
                # A bug or a surprise must not end the election: the fence holds by time.
                log.exception("leadership: unexpected error")
                delay = self._retry_period

    def stop(self, timeout: float = 15.0) -> None:
        """Ends the thread, then gives up the Lease and the claim. Call once no write is
        under way (the reconciler has stopped). The Lease goes first: the claim's release
        is what wakes the other replicas (`wake()`), and the Lease must be free by then."""
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("leadership: still in a request after %gs; leaving the Lease to lapse", timeout)
                return
        if self.elector is not None:
            self.elector.release()
        if self.claim is not None:
            self.claim.release()


def build(settings: Settings, kube: KubeClient | None, consul: ConsulClient | None, *,
          clock: Clock | None = None, on_change: Callable[[], None] = lambda: None) -> Leadership:
    """The gate for these settings. `kube` is None when Kubernetes is off (a sidecar, which
    writes nothing and needs no gate that closes)."""
    clock = clock or SystemClock()
    ha = settings.ha
    identity = ha.identity or default_identity()
    elector = claim = None
    if kube is not None:
        namespace = ha.lease_namespace or kube.namespace or "default"
        name = lease_name(settings.cluster_id)
        if ha.enabled:
            from bridge.ha.lease import KubeLeaseStore  # with the Kubernetes client it needs

            store = KubeLeaseStore(kube, namespace, name, timeout=ha.renew_deadline)
            elector = LeaderElector(store, identity=identity, lease_duration=ha.lease_duration,
                                    renew_deadline=ha.renew_deadline, retry_period=ha.retry_period,
                                    clock=clock)
        if consul is not None and settings.sync.to_consul:
            claim = ClusterClaim(consul, cluster_id=settings.cluster_id, lease=f"{namespace}/{name}",
                                 identity=identity, cluster_uid=lambda: kube_system_uid(kube),
                                 session_ttl=ha.session_ttl, lock_delay=ha.lock_delay, clock=clock)
    return Leadership(elector, claim, clock=clock, retry_period=ha.retry_period, on_change=on_change)
