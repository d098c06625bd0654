"""Gathers the operator's view from the running parts of one bridge, without stopping them.

Everything read here is a reference some loop replaces whole (the publisher's `Published`,
the sources' caches and notes, the Consul planner's record, copied in one step) or a plain
value; no lock of a loop is taken, so a page or an explanation never holds up DNS, the
publisher or the reconciler. Nothing secret is read: settings are read by name, one value
at a time, never the Consul token or anything of the credentials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from bridge.catalog.model import Catalog, Snapshot
from bridge.consul.sink import SINK as CONSUL_SINK
from bridge.explain.answers import CurrentAnswers
from bridge.explain.model import SourceTimes, SyncRecord, World
from bridge.kube.sink import SINK as KUBE_SINK
from bridge.kube.source import KubeSource
from bridge.reconcile.loop import LAG, PASSES, PLANNED, SKIPPED
from bridge.reconcile.plans import ConsulPlanner
from bridge.rejections import REJECTED, REJECTIONS

if TYPE_CHECKING:
    from bridge.app import App

JSON = dict[str, Any]


def _samples(metric: Counter | Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for family in metric.collect() for s in family.samples]


class OperatorState:
    """Reads one App for /status and /explain."""

    def __init__(self, app: App, clock: Callable[[], float] = time.time) -> None:
        self._app = app
        self._clock = clock
        dns = app.dns
        self.answers = CurrentAnswers(app.settings.dns,
                                      (lambda: dns.table) if hasattr(dns, "table") else None)

    def sources(self) -> tuple[SourceTimes, ...]:
        app = self._app
        found = []
        if isinstance(app.kube, KubeSource):
            for reflector in app.kube.reflectors:
                fresh = reflector.freshness
                found.append(SourceTimes(fresh.source, reflector.synced.is_set(), fresh.last_event,
                                         fresh.last_change, len(reflector.items)))
        if app.consul is not None:
            fresh = app.consul.freshness
            found.append(SourceTimes("consul", app.consul.synced, fresh.last_event, fresh.last_change,
                                     len(app.consul.entries)))
        return tuple(found)

    def _sync(self) -> SyncRecord | None:
        reconciler = self._app.reconciler
        if reconciler is None:
            return None
        writer = self._app.ha.leadership.may_write()
        for lane in reconciler.lanes:
            if isinstance(lane.planner, ConsulPlanner):
                wanted, held = lane.planner.record()
                return SyncRecord(writer, wanted, held)
        return SyncRecord(writer)

    def world(self) -> World:
        app = self._app
        view = app.publisher.view
        catalog = view.catalog if view is not None else Catalog()
        empty = Snapshot()
        kube = app.kube if isinstance(app.kube, KubeSource) else None
        consul = app.consul
        settings = app.settings
        return World(
            catalog=catalog,
            kube=view.kube if view else empty,
            consul=view.consul if view else empty,
            merged=view.merged if view else {},
            changed_at=view.changed_at if view else {},
            # Asked only by an explanation: the status page never builds an answerer.
            answer=lambda name, qtype: self.answers.answer_for(catalog)(name, qtype),
            zone=settings.dns.zone,
            cluster_id=settings.cluster_id,
            kubernetes=kube is not None,
            kube_services=kube.services.items if kube else {},
            dns_admits=kube.dns_admits if kube else (lambda namespace: True),
            dns_namespaces=(settings.dns.namespaces, settings.dns.deny_namespaces),
            consul_entries=consul.entries if consul else {},
            consul_labels=consul.labels if consul else {},
            consul_notes=consul.notes if consul else {},
            collisions=frozenset(consul.collisions) if consul else frozenset(),
            consul_namespace=settings.sync.consul_namespace,
            local_wins=settings.sync.local_wins,
            sync=self._sync(),
            rejections={sink: REJECTIONS.held(sink) for sink in (CONSUL_SINK, KUBE_SINK)},
            sources=self.sources(),
        )

    def status(self) -> JSON:
        """Readiness, leadership, sources and sync counters, for the page's header."""
        app = self._app
        leadership = app.ha.leadership
        elector = leadership.elector
        ha: JSON = {"writer": leadership.may_write(), "leading": leadership.leading(),
                    "identity": elector.identity if elector else "",
                    "lease_holder": elector.holder if elector else "",
                    "election": elector is not None,
                    "claim": leadership.claim.state.value if leadership.claim is not None else "",
                    "problems": app.ha.problems()}
        watcher = app.ha.watcher
        now_mono = time.monotonic()
        clusters = [{"cluster": c.cluster_id, "alive": c.alive, "for": round(now_mono - c.since, 1)}
                    for c in sorted(watcher.clusters().values(), key=lambda c: c.cluster_id)] \
            if watcher is not None else []
        counters: dict[str, float] = {}
        for name, labels, value in _samples(PLANNED):
            if name.endswith("_total"):
                counters[f"planned {labels['sink']} {labels['op']}"] = value
        for name, labels, value in _samples(PASSES):
            if name.endswith("_total"):
                counters[f"passes ({labels['reason']})"] = value
        for name, _labels, value in _samples(SKIPPED):
            if name.endswith("_total"):
                counters["skipped (not written, logged)"] = value
        for name, labels, value in _samples(REJECTED):
            if name.endswith("_total"):
                counters[f"rejected {labels['sink']} {labels['reason']}"] = value
        lag = {name.rsplit("_", 1)[1]: value for name, labels, value in _samples(LAG)
               if name.endswith(("_sum", "_count"))}
        reconciler = app.reconciler
        return {
            "now": self._clock(),
            "cluster_id": app.settings.cluster_id,
            "waiting_for": app.waiting_for(),
            "warnings": app.warnings(),
            "ha": ha,
            "clusters": clusters,
            "sinks": [{"sink": lane.name, "in_sync": lane.in_sync} for lane in reconciler.lanes]
            if reconciler is not None else [],
            "counters": counters,
            "lag": {"writes": lag.get("count", 0.0),
                    "mean_seconds": lag["sum"] / lag["count"] if lag.get("count") else None},
            "rejected": [{"sink": sink, "item": item, "reason": reason, "message": message}
                         for sink in (CONSUL_SINK, KUBE_SINK)
                         for item, (reason, message) in sorted(REJECTIONS.held(sink).items())],
        }
