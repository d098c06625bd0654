"""The composition root: builds every part from the settings, starts them, stops them.

Concurrency model (threads; both client libraries are synchronous):

- `reflector-services`, `reflector-endpointslices`: each owns one Kubernetes list/watch
  and its cache; a cache is a dict replaced whole on every change (copy-on-write).
- `consul-services` plus one `consul-<name>` thread per Consul service: each owns one
  blocking query and one entry of the Consul source's map, also replaced whole.
- `dns-publisher`: the only thread that merges the sources into an immutable `Catalog`
  and publishes it to DNS. Sources wake it through its own coalescing `Trigger` (10 ms
  quiet, 40 ms at most), so DNS never waits behind a write to Consul or Kubernetes.
- `reconciler`: the only thread that plans and writes (Consul, and Kubernetes with
  `to_k8s`). Sources wake it through a second `Trigger` (`sync.quiet_period`,
  `sync.max_delay`); both read the sources' current caches (no locks: each is one
  reference, replaced whole).
- DNS: with `dns.workers` > 0 (the default, 1), worker processes answer on sockets this
  process binds (`dns/workers.py`): the publisher sends them the services that changed,
  each derives its own table, and all switch to it before `publish()` returns. With 0,
  `DnsServer.publish()` updates the table in the publisher's thread and swaps one
  reference, and the UDP/TCP threads of this process answer from it. Either way a query
  sees one whole catalog state, old or new, and readers never lock.
- `dns-forwarder`: one thread owns every query forwarded upstream (names outside our
  zones, ExternalName targets); it sends UDP replies itself and queues TCP replies to
  the DNS TCP thread.
- `http`: health, readiness and metrics; it only reads.

Shutdown: one `stop` event ends every loop; blocking calls in flight are cut by closing
their clients, and all threads are daemons so the process never hangs on exit.
"""

from __future__ import annotations

import logging
import threading
import time

from bridge import memory_policy
from bridge.catalog.model import Catalog
from bridge.catalog.to_consul import SyncOptions
from bridge.config import Settings, parse_hostport
from bridge.consul.client import ConsulClient
from bridge.consul.sink import ConsulSink
from bridge.consul.source import ConsulSource
from bridge.dns import metrics as dns_metrics
from bridge.dns.server import DnsServer
from bridge.dns.workers import DnsWorkers
from bridge.http import HealthServer
from bridge.kube.client import KubeClient
from bridge.kube.sink import KubeSink
from bridge.kube.source import KubeSource
from bridge.reconcile.loop import Mode, Reconciler
from bridge.reconcile.publish import Publisher
from bridge.reconcile.trigger import Trigger

log = logging.getLogger(__name__)


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.trigger = Trigger(settings.sync.quiet_period, settings.sync.max_delay)
        self.dns: DnsServer | DnsWorkers = DnsServer(settings.dns)
        if settings.dns.workers:
            self.dns = DnsWorkers(settings.dns, settings.dns.workers,
                                  log_level=settings.log.level, log_format=settings.log.format)
        dns_metrics.export(self.dns.metrics)  # bridge_dns_* on /metrics, counted on scrape
        self._catalog_ready = threading.Event()
        self.kube_client = KubeClient(settings.kubernetes)
        sync = settings.sync
        self.kube = KubeSource(self.kube_client, settings.kubernetes, settings.cluster_id,
                               self._changed, self.stop_event, watch_nodes=sync.to_consul,
                               watch_ingresses=sync.to_consul and sync.ingress,
                               dns_namespaces=(settings.dns.namespaces,
                                               settings.dns.deny_namespaces))
        self.consul_client = ConsulClient(settings.consul)
        self.consul: ConsulSource | None = None
        if settings.sync.from_consul:
            self.consul = ConsulSource(
                self.consul_client, our_node=settings.node_name,
                cluster_id=settings.cluster_id,
                default_namespace=settings.sync.consul_namespace,
                on_change=self._changed, stop=self.stop_event, admit_warning=sync.admit_warning)
        self.sink: ConsulSink | None = None
        if settings.sync.to_consul:
            self.sink = ConsulSink(self.consul_client, node=settings.node_name,
                                   cluster_id=settings.cluster_id,
                                   batch_size=settings.sync.batch_size)
        options = SyncOptions(
            cluster_id=settings.cluster_id, tag=sync.tag, prefix=sync.service_prefix,
            add_namespace_suffix=sync.add_namespace_suffix,
            default_sync=settings.kubernetes.default_sync,
            cluster_ip_services=sync.cluster_ip_services, register_cluster_ip=sync.register_cluster_ip,
            node_port_sync_type=sync.node_port_sync_type, lb_endpoints=sync.lb_endpoints,
            external_name=sync.external_name, not_ready=sync.not_ready,
            ingress=sync.ingress, ingress_lb_ips=sync.ingress_lb_ips,
        )
        self.publisher = Publisher(kube=self.kube.dns, consul=self.consul, publish=self._publish,
                                   stop=self.stop_event, local_wins=sync.local_wins)
        self.reconciler = Reconciler(
            kube=self.kube, consul=self.consul, sink=self.sink, options=options, trigger=self.trigger,
            stop=self.stop_event, resync_period=sync.resync_period,
            mode=Mode(upsert_only=sync.upsert_only, dry_run=sync.dry_run),
            kube_sink=KubeSink(self.kube_client) if sync.to_k8s else None)
        host, port = parse_hostport(settings.http.listen)
        self.http = HealthServer(host, port, self.waiting_for)
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
        """What readiness still waits for; empty when ready."""
        missing = []
        if not self.kube.synced:
            missing.append("kubernetes list")
        if self.consul is not None and not self.consul.synced:
            missing.append("consul list")
        if not self._catalog_ready.is_set():
            missing.append("first catalog")
        if not self._dns_bound:
            missing.append("dns listener")
        return missing

    @property
    def ready(self) -> bool:
        return not self.waiting_for()

    def start(self) -> None:
        self.dns.start()
        self.dns.publish(Catalog())
        self._dns_bound = True
        self.http.start()
        self.publisher.start()
        self.reconciler.start()
        self.kube.start()
        if self.consul is not None:
            self.consul.start()
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
        self.stop_event.set()
        self._changed()
        if self.consul is not None:
            self.consul.close()
        self.kube_client.close()
        self.http.stop()
        self.dns.stop()
        self.reconciler.thread.join(timeout=2)
