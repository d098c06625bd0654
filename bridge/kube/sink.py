"""Kubernetes as a Sink: Consul services materialised as headless Services + EndpointSlices.

What we hold is read from the source's own caches (the reflectors already watch every
Service and EndpointSlice), so `actual()` costs no API reads and is always current: an
edit by anyone shows in the next plan. Plans (`materialise.plan_for`) only ever replace
or delete objects carrying our `managed-by` label. `apply()` writes one object at a time,
retries transient failures with backoff, sends nothing more once the bridge stops, and
reports the outcome of every object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from prometheus_client import Counter

from bridge.catalog.model import Service
from bridge.catalog.sink import ApplyResult
from bridge.errors import BridgeError
from bridge.kube.client import KubeClient
from bridge.kube.materialise import Held, KubePlan, ObjectKey, held
from bridge.kube.objects import Slice
from bridge.retry import Backoff, Stopped, retrying

log = logging.getLogger(__name__)

WRITES = Counter("bridge_kube_writes_total", "Objects written to Kubernetes", ["op", "resource"])
WRITE_ERRORS = Counter("bridge_kube_write_errors_total", "Kubernetes writes that failed")

Objects = Callable[[], tuple[Mapping[tuple[str, str], Service], Mapping[tuple[str, str], Slice]]]


class KubeSink:
    def __init__(self, client: KubeClient, objects: Objects, stop: threading.Event) -> None:
        """`objects`: every cached Service and EndpointSlice, ours included."""
        self._client = client
        self._objects = objects
        self._retrying = retrying(stop, Backoff(base=0.2, cap=5.0), attempts=3)

    def actual(self) -> Held:
        return held(*self._objects())

    def apply(self, plan: KubePlan) -> ApplyResult[ObjectKey]:
        result: ApplyResult[ObjectKey] = ApplyResult()
        for verb, d in plan.writes():
            body = plan.bodies.get(d.key) if verb != "delete" else None
            try:
                self._retrying(self._client.write, verb, d.plural, d.namespace, d.name, body)
            except Stopped as exc:
                result.failed[d.key] = f"not sent: {exc}"
                continue
            except BridgeError as exc:
                WRITE_ERRORS.inc()
                result.failed[d.key] = str(exc)
                log.warning("kubernetes: %s %s %s/%s failed: %s", verb, d.plural, d.namespace,
                            d.name, exc)
                continue
            WRITES.labels(verb, d.plural).inc()
            result.written.append(d.key)
            log.info("kubernetes: %s %s %s/%s", verb, d.plural, d.namespace, d.name)
        return result
