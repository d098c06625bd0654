"""Kubernetes as a Sink: Consul services materialised as headless Services + EndpointSlices.

What we hold is read from the source's own caches (the reflectors already watch every
Service and EndpointSlice), so `actual()` costs no API reads and is always current: an
edit by anyone shows in the next plan. Plans (`materialise.plan_for`) only ever replace
or delete objects carrying our `managed-by` label. `apply()` writes one object at a time
and reports the outcome of each: transient failures (5xx, 429, connection errors) are
retried with backoff here and then left to the reconciler's backoff; an object the API
server refuses as it is (422 Invalid, 404 for a missing namespace, 400) is *rejected*:
logged once with the server's own Status message and counted in
`bridge_rejected_total{sink="kubernetes"}` (`bridge.rejections`), and the rest of the plan
goes on. Nothing more is sent once the bridge stops or the write gate (`bridge/ha/gate.py`)
closes, and no write is waited for longer than the gate stays open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from bridge.catalog.model import Service
from bridge.catalog.sink import ApplyResult
from bridge.errors import BridgeError, Denied, Rejected, Unavailable
from bridge.ha.gate import NotWriter, WriteGate, write_timeout
from bridge.kube.materialise import Held, KubePlan, ObjectKey, held, object_item
from bridge.kube.objects import Slice
from bridge.rejections import REJECTIONS, Rejections
from bridge.retry import Backoff, Stopped, retrying

if TYPE_CHECKING:  # the kubernetes package is loaded only where a Kubernetes client is built
    from bridge.kube.client import KubeClient

log = logging.getLogger(__name__)

WRITES = Counter("bridge_kube_writes_total", "Objects written to Kubernetes", ["op", "resource"])
WRITE_ERRORS = Counter("bridge_kube_write_errors_total", "Kubernetes writes that failed")

SINK = "kubernetes"  # the sink's name in logs and in bridge_rejected_total
WRITE_TIMEOUT = 30.0  # seconds one write's answer is waited for, the gate permitting

Objects = Callable[[], tuple[Mapping[tuple[str, str], Service], Mapping[tuple[str, str], Slice]]]


class KubeSink:
    def __init__(self, client: KubeClient, objects: Objects, stop: threading.Event,
                 rejections: Rejections = REJECTIONS, gate: WriteGate | None = None) -> None:
        """`objects`: every cached Service and EndpointSlice, ours included; `rejections`:
        where refusals are reported (the planner holding them back reads the same); `gate`:
        asked before each write, None writes always."""
        self._client = client
        self._rejections = rejections
        self._gate = gate
        self._objects = objects
        self._retrying = retrying(stop, Backoff(base=0.2, cap=5.0), attempts=3)

    def actual(self) -> Held:
        return held(*self._objects())

    def apply(self, plan: KubePlan) -> ApplyResult[ObjectKey]:
        result: ApplyResult[ObjectKey] = ApplyResult()
        held = ""  # why no more is sent: the bridge stops, or the gate closed
        for verb, d in plan.writes():
            if held:
                result.failed[d.key] = held
                continue
            body = plan.bodies.get(d.key) if verb != "delete" else None
            item = object_item(d.key)
            try:
                self._retrying(self._write, verb, d.plural, d.namespace, d.name, body)
            except (Stopped, NotWriter, Unavailable) as exc:
                # An outage of the API server is logged once by the outage (bridge/outage.py).
                held = result.failed[d.key] = f"not sent: {exc}" if isinstance(exc, Stopped) \
                    else str(exc)
                continue
            except Denied as exc:
                # The client logged the refusal once; RBAC may be fixed, so it is retried.
                WRITE_ERRORS.inc()
                result.failed[d.key] = str(exc)
                continue
            except Rejected as exc:
                WRITE_ERRORS.inc()
                result.rejected[d.key] = str(exc)
                self._rejections.rejected(SINK, item, exc.reason or "Rejected", str(exc))
                continue
            except BridgeError as exc:
                WRITE_ERRORS.inc()
                result.failed[d.key] = str(exc)
                log.warning("kubernetes: %s %s failed: %s", verb, item, exc)
                continue
            WRITES.labels(verb, d.plural).inc()
            result.written.append(d.key)
            self._rejections.forget(item, SINK)
            log.info("kubernetes: %s %s", verb, item)
        return result

    def _write(self, verb: str, plural: str, namespace: str, name: str,
               body: dict[str, Any] | None) -> None:
        timeout = write_timeout(self._gate, WRITE_TIMEOUT)  # each attempt asks again
        self._client.write(verb, plural, namespace, name, body, timeout=timeout)
