"""Kubernetes as a Sink: Consul services materialised as headless Services + EndpointSlices.

What we hold is read from the source's own caches (the reflectors already watch every
Service and EndpointSlice), so `actual()` costs no API reads and is always current: an
edit by anyone shows in the next plan. Plans (`materialise.plan_for`) only ever replace
or delete objects carrying our `managed-by` label. `apply()` writes one object at a time,
retries transient failures with backoff, sends nothing more once the bridge stops or the
write gate (`bridge/ha/gate.py`) closes, waits for no write longer than the gate stays
open, and reports the outcome of every object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

from bridge.catalog.model import Service
from bridge.catalog.sink import ApplyResult
from bridge.errors import BridgeError
from bridge.ha.gate import NotWriter, WriteGate, write_timeout
from bridge.kube.client import KubeClient
from bridge.kube.materialise import Held, KubePlan, ObjectKey, held
from bridge.kube.objects import Slice
from bridge.retry import Backoff, Stopped, retrying

log = logging.getLogger(__name__)

WRITES = Counter("bridge_kube_writes_total", "Objects written to Kubernetes", ["op", "resource"])
WRITE_ERRORS = Counter("bridge_kube_write_errors_total", "Kubernetes writes that failed")

WRITE_TIMEOUT = 30.0  # seconds one write's answer is waited for, the gate permitting

Objects = Callable[[], tuple[Mapping[tuple[str, str], Service], Mapping[tuple[str, str], Slice]]]


class KubeSink:
    def __init__(self, client: KubeClient, objects: Objects, stop: threading.Event,
                 gate: WriteGate | None = None) -> None:
        """`objects`: every cached Service and EndpointSlice, ours included; `gate`: asked
        before each write, None writes always."""
        self._client = client
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
            try:
                self._retrying(self._write, verb, d.plural, d.namespace, d.name, body)
            except (Stopped, NotWriter) as exc:
                held = result.failed[d.key] = str(exc) if isinstance(exc, NotWriter) \
                    else f"not sent: {exc}"
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

    def _write(self, verb: str, plural: str, namespace: str, name: str,
               body: dict[str, Any] | None) -> None:
        timeout = write_timeout(self._gate, WRITE_TIMEOUT)  # each attempt asks again
        self._client.write(verb, plural, namespace, name, body, timeout=timeout)
