"""Consul as a Sink: reads what this cluster owns there, and applies a plan in transactions.

`actual()` reads only our synthetic node and keeps only entries with our owner marker, so
a neighbour's registrations are invisible to the diff and can never be deleted. `apply()`
packs the plan into `/v1/txn` batches of at most `batch_size` operations (a registration's
service and check always share a batch), retries transient failures with backoff, and
reports the outcome of every item; nothing is swallowed. Each batch is one Consul
transaction, applied whole or not at all; once the bridge stops no further batch is sent
(the rest are reported failed, not sent).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import Counter

from bridge.catalog.plan import Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.consul.client import ConsulClient
from bridge.consul.objects import iter_plan_operations, node_operation, registrations_on_node
from bridge.errors import BridgeError, Denied
from bridge.retry import Backoff, Stopped, retrying

log = logging.getLogger(__name__)

WRITES = Counter("bridge_consul_writes_total", "Registrations written to Consul", ["op"])
WRITE_ERRORS = Counter("bridge_consul_write_errors_total", "Registrations Consul refused")
TXNS = Counter("bridge_consul_txn_total", "Transactions sent to Consul")


class ConsulSink:
    def __init__(self, client: ConsulClient, *, node: str, cluster_id: str,
                 stop: threading.Event, batch_size: int = 64) -> None:
        self._client = client
        self._node = node
        self._cluster_id = cluster_id
        self._batch_size = max(2, batch_size)
        self._node_known = False
        self._retrying = retrying(stop, Backoff(base=0.2, cap=5.0), attempts=3)

    def actual(self) -> dict[str, Registration]:
        view = self._client.node_services(self._node)
        self._node_known = view is not None
        checks = self._client.node_checks(self._node) if view else []
        return registrations_on_node(view, checks, self._cluster_id)

    def apply(self, plan: Plan) -> ApplyResult[str]:
        result: ApplyResult[str] = ApplyResult()
        if plan.empty:
            return result
        items = [*plan.create, *plan.update, *plan.delete]
        kinds = ["create"] * len(plan.create) + ["update"] * len(plan.update) \
            + ["delete"] * len(plan.delete)
        groups = iter_plan_operations(plan, self._node)
        batch: list[dict[str, Any]] = []
        members: list[tuple[Registration, str]] = []
        if not self._node_known:
            batch.append(node_operation(self._node, self._cluster_id))
        for item, kind, ops in zip(items, kinds, groups, strict=True):
            if batch and len(batch) + len(ops) > self._batch_size:
                self._send(batch, members, result)
                batch, members = [], []
            batch.extend(ops)
            members.append((item, kind))
        if batch:
            self._send(batch, members, result)
        return result

    def _send(self, batch: list[dict[str, Any]], members: list[tuple[Registration, str]],
              result: ApplyResult[str]) -> None:
        try:
            self._retrying(self._txn, batch)
        except Stopped as exc:
            for item, _ in members:
                result.failed[item.service_id] = f"not sent: {exc}"
            return
        except BridgeError as exc:
            WRITE_ERRORS.inc(len(members))
            # A refusal (TLS, a missing permission) was logged once by the client already.
            log.log(logging.DEBUG if isinstance(exc, Denied) else logging.ERROR,
                    "consul write of %d registrations failed: %s", len(members), exc)
            for item, _ in members:
                result.failed[item.service_id] = str(exc)
            return
        if batch and "Node" in batch[0]:
            self._node_known = True
        for item, kind in members:
            WRITES.labels(kind).inc()
            result.written.append(item.service_id)
            log.debug("consul %s %s (%s %s:%d)", kind, item.service_id, item.name,
                      item.address, item.port)

    def _txn(self, batch: list[dict[str, Any]]) -> None:
        TXNS.inc()
        self._client.txn(batch)
