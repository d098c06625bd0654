"""The composition root: builds every part from the settings, starts them, stops them.

Concurrency model (threads; both client libraries are synchronous). Every loop thread is
started through one `Threads`; one that dies of an exception its loop did not expect
makes `/healthz` answer 500 naming it.

- `reflector-services`, `reflector-endpointslices` (and `-nodes`, `-ingresses` when the
  sync needs them): each owns one Kubernetes list/watch and its cache; a cache is a
  dict replaced whole on every change (copy-on-write).
- `consul-reader`: one asyncio event loop running every blocking query of the Consul
  source (the service list, and one per Consul service others registered); each query
  owns one entry of the source's map, also replaced whole.
- `dns-publisher`: the only thread that merges the sources into an immutable `Catalog`
  and publishes it to DNS. Sources wake it through its own coalescing `Trigger` (10 ms
  quiet, 40 ms at most), so DNS never waits behind a write to Consul or Kubernetes.
- `ha-leadership` (`bridge.ha`): the Lease election and the cluster claim in Consul, the
  write gate the reconciler and the sinks ask; `consul-clusters` follows every cluster's
  claim for the dead-cluster filter the publisher applies. Every replica answers DNS;
  only the one the gate lets through writes.
- `reconciler`: the only thread that writes, and only while the write gate is open. One
  lane per sink (Consul with `to_consul`, Kubernetes with `to_k8s`), each a planner and a
  sink (`reconcile/`), driven alike.
  Sources wake it through a second `Trigger` (`sync.quiet_period`, `sync.max_delay`).
  It and the publisher read the sources' current caches without locks: each is one
  reference, replaced whole.
- DNS (`bridge.dns`): with `dns.workers` > 0 (the default, 1), worker processes answer on
  sockets this process binds: the publisher sends them the services that changed, and
  all switch to the new table before `publish()` returns. With 0, the UDP/TCP threads
  of this process answer from a table the publisher swaps in as one reference. Either
  way a query sees one whole catalog state, old or new, and readers never lock. Names
  outside our zones are forwarded upstream by DNS's own forwarder thread.
- `http`: health, readiness and metrics, and the operator's pages (/status, /explain:
  `bridge.explain`); it only reads, references the loops replace whole.

A sidecar (`kubernetes.enabled: false`) builds no Kubernetes client, no reflector, no sink
and no reconciler: it reads Consul only (its own cluster's Services included, as the
central bridge registered them), publishes to DNS, and is ready once Consul has listed.

Ports are bound in `start()`, never by a constructor: DNS first (it answers SERVFAIL
until the first catalog), then HTTP, then the loops. A start that fails stops what it
had started.

Shutdown (`stop()`), in this order, bounded:
1. the stop event is set and both triggers closed, so no loop starts anything new and
   none waits any longer; every retry ends (`bridge.retry`);
2. the sources: the Kubernetes client ends its watches, and the Consul client cuts its
   reads in flight (blocking queries) at once;
3. the publisher and the reconciler are joined, together within `STOP_DEADLINE`. A
   Consul transaction in flight gets that long to complete; if it has not by then, it
   was sent whole all the same, and Consul applies it whole or not at all. None is sent
   after the stop event is set, so a write is never half done;
4. the Lease, then the cluster claim, are given up (within `STOP_DEADLINE` more), so
   another replica takes over at once;
5. DNS (its threads or worker processes), then HTTP.
All threads are daemons, so anything still blocked cannot keep the process from exiting.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from bridge import memory_policy
from bridge.catalog.model import Catalog, Snapshot
from bridge.catalog.to_consul import SyncOptions
from bridge.config import Settings, parse_hostport
from bridge.consul.client import ConsulClient
from bridge.consul.sink import ConsulSink
from bridge.consul.source import ConsulSource
from bridge.dns import metrics as dns_metrics
from bridge.dns.server import DnsServer
from bridge.dns.workers import DnsWorkers
from bridge.explain.routes import Routes
from bridge.explain.state import OperatorState
from bridge.ha.wiring import HighAvailability
from bridge.http import HealthServer
from bridge.kube.sink import KubeSink
from bridge.reconcile.loop import Lane, Reconciler, Source
from bridge.reconcile.plans import ConsulPlanner, KubePlanner
from bridge.reconcile.publish import Publisher
from bridge.reconcile.trigger import Trigger
from bridge.threads import Threads

if TYPE_CHECKING:  # the kubernetes package is loaded only by a bridge that talks to Kubernetes
    from bridge.kube.client import KubeClient
    from bridge.kube.source import KubeSource

log = logging.getLogger(__name__)

def _because(what: str, why: str) -> str:
    return f"{what} ({why})" if why else what


class _NoKubernetes:
    """The Kubernetes side of a sidecar: nothing, and listed from the start."""

    synced = True

    def snapshot(self) -> Snapshot:
        return Snapshot(synced=True)


_NO_KUBERNETES = _NoKubernetes()

# How long a stop waits for the publisher and the reconciler to finish what they are
# doing (a transaction in flight). Well under the 2 s a stop may take in all.
STOP_DEADLINE = 0.75


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        sync = settings.sync
        self.stop_event = threading.Event()
        self.threads = Threads()
        self.trigger = Trigger(sync.quiet_period, sync.max_delay)
        self.dns: DnsServer | DnsWorkers = DnsWorkers(
            settings.dns, settings.dns.workers, log_level=settings.log.level,
            log_format=settings.log.format) if settings.dns.workers else DnsServer(settings.dns)
        dns_metrics.export(self.dns.metrics)  # bridge_dns_* on /metrics, counted on scrape
        self._catalog_ready = threading.Event()
        # A sidecar (kubernetes.enabled: false) has no Kubernetes client at all: it needs no
        # credentials, and the settings allow it no sink (config._check_combination).
        self.kube_client: KubeClient | None = None
        self.kube: Source = _NO_KUBERNETES
        self.kube_source: KubeSource | None = None
        if settings.kubernetes.enabled:
            from bridge.kube.client import KubeClient
            from bridge.kube.source import KubeSource

            self.kube_client = KubeClient(settings.kubernetes)
            self.kube = self.kube_source = KubeSource(self.kube_client, settings.kubernetes, settings.cluster_id,
                                   self._changed, self.stop_event, watch_nodes=sync.to_consul,
                                   watch_ingresses=sync.to_consul and sync.ingress,
                                   dns_namespaces=(settings.dns.namespaces,
                                                   settings.dns.deny_namespaces),
                                   threads=self.threads)
        self.consul_client = ConsulClient(settings.consul)
        self.consul: ConsulSource | None = None
        if sync.from_consul:
            self.consul = ConsulSource(
                self.consul_client, our_node=settings.node_name,
                cluster_id=settings.cluster_id,
                default_namespace=sync.consul_namespace,
                on_change=self._changed, stop=self.stop_event, admit_warning=sync.admit_warning,
                keep_ours=not settings.kubernetes.enabled, threads=self.threads,
                adopt_node=sync.adopt_node)
        self.ha = HighAvailability(
            settings, self.kube_client if settings.kubernetes.enabled else None,
            self.consul_client, stop=self.stop_event, on_writable=self.trigger.poke,
            on_clusters=lambda: self.publisher.trigger.poke())
        lanes: list[Lane[Any]] = []
        if sync.to_consul:
            consul_sink = ConsulSink(self.consul_client, node=settings.node_name,
                                     cluster_id=settings.cluster_id, stop=self.stop_event,
                                     batch_size=sync.batch_size, gate=self.ha.leadership,
                                     adopt_node=sync.adopt_node)
            options = SyncOptions(
                cluster_id=settings.cluster_id, tag=sync.tag, prefix=sync.service_prefix,
                add_namespace_suffix=sync.add_namespace_suffix,
                default_sync=settings.kubernetes.default_sync,
                cluster_ip_services=sync.cluster_ip_services,
                register_cluster_ip=sync.register_cluster_ip,
                node_port_sync_type=sync.node_port_sync_type, lb_endpoints=sync.lb_endpoints,
                external_name=sync.external_name, not_ready=sync.not_ready,
                ingress=sync.ingress, ingress_lb_ips=sync.ingress_lb_ips,
            )
            lanes.append(Lane("consul", ConsulPlanner(
                consul_sink, options, upsert_only=sync.upsert_only,
                adopt_from=consul_sink.leftovers if sync.adopt_node else None), consul_sink,
                outage=self.consul_client.outage))
        if sync.to_k8s:
            assert self.kube_client is not None and self.kube_source is not None
            kube_sink = KubeSink(self.kube_client, self.kube_source.objects, self.stop_event,
                                 gate=self.ha.leadership)
            lanes.append(Lane("kubernetes", KubePlanner(kube_sink), kube_sink,
                              outage=self.kube_client.outage))
        # DNS answers its own namespaces (dns.namespaces), the sync its own.
        dns_view = self.kube_source.dns if self.kube_source is not None else self.kube
        self.publisher = Publisher(kube=dns_view, consul=self.consul, publish=self._publish,
                                   stop=self.stop_event, local_wins=sync.local_wins,
                                   threads=self.threads, visible=self.ha.visible)
        # Without a sink (a sidecar) there is nothing to reconcile: no thread for it.
        self.reconciler: Reconciler | None = Reconciler(
            kube=self.kube, consul=self.consul, lanes=lanes, trigger=self.trigger,
            stop=self.stop_event, resync_period=sync.resync_period, dry_run=sync.dry_run,
            threads=self.threads, gate=self.ha.leadership) if lanes else None
        host, port = parse_hostport(settings.http.listen)
        self.http = HealthServer(host, port, self.waiting_for, self.threads.dead,
                                 warnings=self.warnings,
                                 pages=Routes(OperatorState(self)).handlers())
        # A server found back (bridge/outage.py) wakes what does not wait on it directly:
        # the reconciler's next pass and the leader election's next round.
        for client in (self.kube_client, self.consul_client):
            if client is not None:
                client.outage.on_recovery(self.trigger.poke)
                client.outage.on_recovery(self.ha.leadership.wake)
        self._dns_bound = False

    def _changed(self) -> None:
        """A source changed: DNS and the sinks each coalesce the news at their own pace."""
        self.publisher.trigger.poke()
        self.trigger.poke()

    def _publish(self, catalog: Catalog) -> None:
        self.dns.publish(catalog)
        if catalog.ready and not self._catalog_ready.is_set():
            self._catalog_ready.set()
            log.info("catalog ready: %d services", len(catalog.services))
            memory_policy.settle()  # what is loaded now lives long

    def waiting_for(self) -> list[str]:
        """What readiness still waits for, one line each; empty when ready. A request the
        API server refuses (RBAC, a token it rejects) is one: it does not heal by waiting."""
        missing = []
        if self.kube_client is not None:
            if not self.kube.synced:
                missing.append(_because("kubernetes list", self.kube_client.outage.describe()))
            # A refused Lease is the leader election's to report: a warning, since a
            # replica that cannot lead still answers DNS (see `self.ha.problems`).
            missing.extend(self.kube_client.access.problems(but=("leases",)))
        # Consul's refusals (a TLS handshake, an ACL): logged once by the client, held there.
        missing.extend(self.consul_client.problems())
        if self.consul is not None and not self.consul.synced:
            missing.append(_because("consul list", self.consul_client.outage.describe()))
        missing += self.ha.waiting_for()
        if not self._catalog_ready.is_set():
            missing.append("first catalog")
        if not self._dns_bound:
            missing.append("dns listener")
        return missing

    def warnings(self) -> list[str]:
        """What /readyz adds to its status: why this replica writes nothing (high
        availability), and a server that is down (DNS answers the last state meanwhile),
        unless a line of `waiting_for` names it already."""
        found = self.ha.problems()
        if self.kube_client is not None and self.kube.synced:
            found.append(self.kube_client.outage.describe())
        if self.consul is None or self.consul.synced:
            found.append(self.consul_client.outage.describe())
        return [line for line in found if line]

    @property
    def ready(self) -> bool:
        return not self.waiting_for()

    def start(self) -> None:
        """Bind DNS and HTTP, then start the loops; on a failure, stop what started."""
        try:
            self.dns.start()
            self.dns.publish(Catalog())
            self._dns_bound = True
            self.http.start()
            self.publisher.start()
            self.ha.start(self.threads)  # before the reconciler, which writes only once the gate opens
            if self.reconciler is not None:
                self.reconciler.start()
            if self.kube_source is not None:
                self.kube_source.start()
            if self.consul is not None:
                self.consul.start()
        except BaseException:
            self.stop()
            raise
        # The first pass publishes even an empty world once both sources have listed.
        self._changed()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready:
                return True
            self._catalog_ready.wait(0.05)
        return self.ready

    def stop(self) -> None:
        """Stop everything, in the order the module docstring gives; returns within about
        twice `STOP_DEADLINE` plus the time DNS and HTTP take to close. Safe to call twice."""
        if self.stop_event.is_set():
            return
        self.stop_event.set()
        self.trigger.close()
        self.publisher.trigger.close()
        if self.kube_client is not None:
            self.kube_client.close()
        if self.consul is not None:
            self.consul.close()
        self.consul_client.close()
        deadline = time.monotonic() + STOP_DEADLINE
        reconciler = self.reconciler.thread if self.reconciler is not None else None
        for thread in (self.publisher.thread, reconciler):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("stopping: %s did not finish within %.2fs; a transaction it "
                                "sent is applied whole or not at all", thread.name, STOP_DEADLINE)
        self.ha.stop(STOP_DEADLINE)  # no write under way: give up the Lease and the claim
        if self.consul_client.login is not None:
            self.consul_client.login.stop()  # the login's token, deleted rather than left to its TTL
        self.dns.stop()  # each a no-op if it never started
        self.http.stop()
