"""What high availability adds to one bridge process, built from its settings.

- The write gate (`Leadership`): started before the reconciler, stopped after it, so the
  Lease and the claim are given up only once no write is under way.
- With `sync.from_consul`, every cluster's claim (`ClusterWatcher`) and, with
  `sync.expire_dead_clusters_after`, the filter DNS's services pass through
  (`DeadClusterFilter`).
- The watcher also sees this cluster's own claim given up, which is the last thing a
  writer does when it stops cleanly (after giving up the Lease): a replica that is not
  the writer then tries the Lease at once rather than at its next retry.

`app.py` calls `start()`, `stop()`, `visible()` (publisher), `waiting_for()` and
`problems()` (readiness); the sinks and the reconciler get `leadership` as their gate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bridge.catalog.model import Service, ServiceKey
from bridge.config import Settings
from bridge.consul.client import ConsulClient
from bridge.ha.clock import Clock, SystemClock
from bridge.ha.clusters import ClusterWatcher, DeadClusterFilter
from bridge.ha.leadership import Leadership, build
from bridge.threads import Threads

if TYPE_CHECKING:  # the kubernetes package is loaded only where a Kubernetes client is built
    from bridge.kube.client import KubeClient

log = logging.getLogger(__name__)


class HighAvailability:
    def __init__(self, settings: Settings, kube: KubeClient | None, consul: ConsulClient, *,
                 stop: threading.Event, on_writable: Callable[[], None],
                 on_clusters: Callable[[], None], clock: Clock | None = None) -> None:
        """`kube`: None when Kubernetes is off (nothing is written, the gate stays open).
        `on_writable`: wakes the reconciler when this replica starts or stops writing;
        `on_clusters`: wakes the DNS publisher when what DNS should hide changes."""
        clock = clock or SystemClock()
        self._cluster_id = settings.cluster_id
        self._on_clusters = on_clusters
        self._expire_after = settings.sync.expire_dead_clusters_after
        self.leadership: Leadership = build(settings, kube, consul, clock=clock,
                                            on_change=on_writable)
        self.watcher: ClusterWatcher | None = None
        self._filter: DeadClusterFilter | None = None
        if settings.sync.from_consul:
            self.watcher = ClusterWatcher(consul, our_cluster_id=settings.cluster_id, clock=clock,
                                          stop=stop, on_change=self._clusters_changed,
                                          expire_after=self._expire_after,
                                          outage=getattr(consul, "outage", None))
            self._filter = DeadClusterFilter(self.watcher, expire_after=self._expire_after,
                                             clock=clock)

    def _clusters_changed(self) -> None:
        self._on_clusters()
        ours = self.watcher.clusters().get(self._cluster_id) if self.watcher else None
        if ours is not None and not ours.alive and not self.leadership.leading():
            self.leadership.wake()

    def visible(self, services: Mapping[ServiceKey, Service]) -> Mapping[ServiceKey, Service]:
        """The merged services DNS answers: less the instances of clusters dead too long."""
        return services if self._filter is None else self._filter.apply(services)

    def waiting_for(self) -> list[str]:
        """What readiness waits for: the claims listed once, when dead clusters expire (so
        a replica never starts by answering instances it should hide)."""
        if self.watcher is not None and self._expire_after > 0 and not self.watcher.synced:
            return ["consul cluster claims"]
        return []

    def problems(self) -> list[str]:
        """Why this replica, though it leads, writes nothing (for /readyz's text)."""
        return self.leadership.problems()

    def start(self, threads: Threads | None = None) -> None:
        if self.leadership.elector is not None or self.leadership.claim is not None:
            self.leadership.start(threads)  # with neither the gate is open and there is nothing to run
        if self.watcher is not None:
            self.watcher.start(threads)

    def stop(self, deadline: float) -> None:
        """Gives up the Lease and the claim, waiting `deadline` seconds at most (an API
        server that does not answer must not hold the process: what is not given up
        lapses by itself). Call once the reconciler has stopped. The watcher ends with the
        stop event and the Consul client's cut reads."""
        giving_up = threading.Thread(target=self.leadership.stop, kwargs={"timeout": deadline},
                                     name="ha-release", daemon=True)
        giving_up.start()
        giving_up.join(deadline)
        if giving_up.is_alive():
            log.warning("stopping: the Lease and the cluster claim were not given up within %gs; "
                        "they lapse by themselves", deadline)
