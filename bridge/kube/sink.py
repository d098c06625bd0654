"""Kubernetes as a Sink: Consul services materialised as headless Services + EndpointSlices.

What we hold is read from the source's own caches (the reflectors already watch every
Service and EndpointSlice), so a sync pass costs no extra API reads. Only objects carrying
our `managed-by` label are ever replaced or deleted; a name taken by anything else is a
clash, reported once and skipped. Each write's outcome is reported; a failure makes the
reconciler try again later instead of being swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from bridge.catalog.model import Service, ServiceKey, Snapshot
from bridge.errors import BridgeError
from bridge.kube.client import KubeClient
from bridge.kube.materialise import (
    Desired,
    KubePlan,
    actual_service,
    actual_slice,
    is_ours,
    plan,
    wanted_objects,
)
from bridge.kube.objects import Slice

log = logging.getLogger(__name__)

WRITES = Counter("bridge_kube_writes_total", "Objects written to Kubernetes", ["op", "resource"])
WRITE_ERRORS = Counter("bridge_kube_write_errors_total", "Kubernetes writes that failed")
CLASHES = Counter("bridge_kube_name_clashes_total", "Wanted objects whose name another owner holds")


@dataclass
class KubeApplyResult:
    written: list[tuple[str, str, str]] = field(default_factory=list)
    failed: dict[tuple[str, str, str], str] = field(default_factory=dict)


class KubeSink:
    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._reported: set[str] = set()
        self.last_plan: KubePlan | None = None

    @staticmethod
    def actual(services: Mapping[tuple[str, str], Service], slices: Mapping[tuple[str, str], Slice]
               ) -> tuple[dict[tuple[str, str, str], Desired], set[tuple[str, str, str]]]:
        """Our objects as comparable values, and the keys of everyone else's."""
        ours: dict[tuple[str, str, str], Desired] = {}
        foreign: set[tuple[str, str, str]] = set()
        for svc in services.values():
            if is_ours(svc.labels):
                d = actual_service(svc)
                ours[d.key] = d
            else:
                foreign.add(("services", svc.key.namespace, svc.key.name))
        for sl in slices.values():
            if is_ours(sl.labels):
                d = actual_slice(sl)
                ours[d.key] = d
            else:
                foreign.add(("endpointslices", sl.namespace, sl.name))
        return ours, foreign

    def sync(self, consul: Snapshot, services: Mapping[tuple[str, str], Service],
             slices: Mapping[tuple[str, str], Slice]) -> KubeApplyResult:
        ours, foreign = self.actual(services, slices)
        remote = dict(consul.services)
        local = {ServiceKey(*k) for k, svc in services.items() if not is_ours(svc.labels)}
        wanted, bodies = wanted_objects(remote, {}, local)
        for key in sorted(set(remote) & local):
            self._report(f"services {key}: a Service not managed by the bridge has this name; "
                         "its Consul instances are answered by DNS but not materialised")
        current = plan(wanted, ours, foreign)
        for clash in current.clashes:
            self._report(clash)
        self.last_plan = current
        result = KubeApplyResult()
        for verb, items in (("create", current.create), ("replace", current.replace),
                            ("delete", current.delete)):
            for d in items:
                try:
                    self._client.write(verb, d.plural, d.namespace, d.name,
                                       bodies.get(d.key) if verb != "delete" else None)
                except BridgeError as exc:
                    WRITE_ERRORS.inc()
                    result.failed[d.key] = str(exc)
                    self._report(f"{verb} {d.plural} {d.namespace}/{d.name} failed: {exc}")
                    continue
                WRITES.labels(verb, d.plural).inc()
                result.written.append(d.key)
                log.info("kubernetes: %s %s %s/%s", verb, d.plural, d.namespace, d.name)
        return result

    def _report(self, message: str) -> None:
        """Logs a problem once while it lasts, instead of on every pass."""
        if message not in self._reported:
            self._reported.add(message)
            if "not managed by the bridge" in message or "exists and is not" in message:
                CLASHES.inc()
            log.warning("%s", message)
