"""Consul as a Sink: reads what this cluster owns there, and applies a plan in transactions.

`actual()` reads only our synthetic node and keeps only entries with our owner marker, so
a neighbour's registrations are invisible to the diff and can never be deleted. The one
exception is the user's to opt into: with `adopt_node` (`sync.adopt_node`), `leftovers()`
reads consul-k8s's registrations on its node, and a plan's `adopt` deregisters some of
them there (which ones and when: `catalog/adopt.py`). `apply()`
packs the plan into `/v1/txn` batches of at most `batch_size` operations and Consul's
default 512 KiB body (a registration's service and check always share a batch), retries
transient failures with backoff, and reports the outcome of every item; nothing is
swallowed. Each batch is one Consul transaction, applied whole or not at all; once the
bridge stops, or the write gate (`bridge/ha/gate.py`) closes, no further batch is sent
(the rest are reported failed, not sent), and a batch's request waits no longer than the
gate stays open.

One bad registration never holds back the others. When Consul rolls a transaction back
it names the failed operations; their registrations are taken out and the rest is sent
again. A registration refused for what it is (its meta, its address, an ACL rule, an ID
someone else's service holds) is reported rejected, with Consul's text, through
`bridge.rejections` (logged and counted once); one refused because of the state Consul
was in (our node or a service missing under it) is reported failed, to be read and
tried again. A batch refused as a whole (400, 413) is halved until the registration
that Consul refuses on its own is found.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

from prometheus_client import Counter

from bridge.catalog.plan import Plan, Registration
from bridge.catalog.sink import ApplyResult
from bridge.consul.client import ConsulClient, TxnRefused, TxnRolledBack
from bridge.consul.objects import (
    consul_k8s_registrations,
    iter_plan_operations,
    node_operation,
    registrations_on_node,
)
from bridge.errors import BridgeError, Denied, Unavailable
from bridge.ha.gate import NotWriter, WriteGate, write_timeout
from bridge.rejections import REJECTIONS, Rejections
from bridge.retry import Backoff, Stopped, retrying

log = logging.getLogger(__name__)

SINK = "consul"  # the sink's name in logs and in bridge_rejected_total

WRITES = Counter("bridge_consul_writes_total", "Registrations written to Consul", ["op"])
WRITE_ERRORS = Counter("bridge_consul_write_errors_total", "Registrations Consul refused")
TXNS = Counter("bridge_consul_txn_total", "Transactions sent to Consul")

TXN_TIMEOUT = 30.0  # seconds a transaction's answer is waited for, the gate permitting

# Consul's default txn_max_req_len (raft's suggested entry size); a larger body is a 413.
MAX_TXN_BYTES = 512 * 1024

# Per-operation errors that say what state Consul was in, not what is wrong with the
# registration: a read of Consul and another try will do.
_STATE_ERRORS = ("Missing node registration", "Missing service registration", "index is stale",
                 "doesn't exist", "does not exist")


def registration_item(service_id: str) -> str:
    """How a registration is named in `bridge.rejections` (and so in the logs)."""
    return f"registration {service_id}"


def rejection_reason(message: str) -> str:
    """The metric label for a rejection, from Consul's text."""
    if "Invalid Service Meta" in message:
        return "meta"
    if "Invalid service address" in message:
        return "address"
    if "Permission denied" in message or "ACL not found" in message:
        return "acl"
    if "does not match existing service name" in message:
        return "id_taken"
    if "too large" in message or "Request body" in message:
        return "too_large"
    return "invalid"


def _size_bound(reg: Registration) -> int:
    """An upper bound of the JSON bytes of `reg`'s operations (with every character
    escaped as \\uXXXX), cheap enough for every registration of a first sync."""
    text = 3 * len(reg.name) + 3 * len(reg.service_id) + len(reg.address) \
        + sum(len(tag) for tag in reg.tags) + sum(len(k) + len(v) for k, v in reg.meta)
    return 1024 + 6 * text + 8 * (len(reg.tags) + len(reg.meta))


class _Member(NamedTuple):
    item: Registration
    kind: str  # create, update or delete
    ops: list[dict[str, Any]]


class ConsulSink:
    def __init__(self, client: ConsulClient, *, node: str, cluster_id: str,
                 stop: threading.Event, batch_size: int = 64,
                 gate: WriteGate | None = None, rejections: Rejections = REJECTIONS,
                 adopt_node: str = "") -> None:
        """`gate`: asked before each transaction; None writes always. `adopt_node`:
        consul-k8s's node, whose registrations a plan may adopt."""
        self._client = client
        self._gate = gate
        self._node = node
        self._adopt_node = adopt_node
        self._cluster_id = cluster_id
        self._batch_size = max(3, batch_size)  # a registration's 2 operations, and the node's
        self._rejections = rejections
        self._node_known = False
        self._retrying = retrying(stop, Backoff(base=0.2, cap=5.0), attempts=3)
        # Consul asked us to slow down (429 with Retry-After): no write before this clock
        # time (time.monotonic), which the reconciler waits for instead of its own backoff;
        # the throttling is logged once, until a write lands again.
        self.throttled_until = 0.0
        self._throttle_logged = False

    def actual(self) -> dict[str, Registration]:
        view = self._client.node_services(self._node)
        self._node_known = view is not None
        checks = self._client.node_checks(self._node) if view else []
        return registrations_on_node(view, checks, self._cluster_id)

    def leftovers(self) -> dict[str, Registration]:
        """consul-k8s's registrations on `adopt_node`, by service ID."""
        if not self._adopt_node:
            return {}
        return consul_k8s_registrations(self._client.node_services(self._adopt_node))

    def apply(self, plan: Plan) -> ApplyResult[str]:
        result: ApplyResult[str] = ApplyResult()
        if plan.empty:
            return result
        items = [*plan.create, *plan.update, *plan.delete, *plan.adopt]
        kinds = ["create"] * len(plan.create) + ["update"] * len(plan.update) \
            + ["delete"] * (len(plan.delete) + len(plan.adopt))
        groups = iter_plan_operations(plan, self._node, self._adopt_node)
        batch: list[_Member] = []
        ops = size = 0
        held = ""  # why no more is sent: the bridge stops, the gate closed, or Consul is down
        for item, kind, group in zip(items, kinds, groups, strict=True):
            weight = _size_bound(item)
            # Room for the node's operation while Consul may not have our node.
            room = self._batch_size - (0 if self._node_known else 1)
            if not held and batch and (ops + len(group) > room or size + weight > MAX_TXN_BYTES - 1024):
                held = self._send(batch, result)
                batch, ops, size = [], 0, 0
            if held:
                result.failed[item.service_id] = held
                continue
            batch.append(_Member(item, kind, group))
            ops += len(group)
            size += weight
        if batch:
            self._send(batch, result)
        return result

    def _send(self, members: list[_Member], result: ApplyResult[str]) -> str:
        """Send `members` in one transaction; those Consul names as failed are taken out
        and the rest is sent again, until it lands or nothing is left. Returns why no
        further batch may be sent ("" to go on)."""
        pending = members
        node_again = True  # our node may have gone since we read it: one more try with it
        while pending:
            with_node = not self._node_known
            batch = ([node_operation(self._node, self._cluster_id)] if with_node else []) \
                + [op for member in pending for op in member.ops]
            try:
                self._retrying(self._txn, batch)
            except Stopped as exc:
                self._fail(pending, f"not sent: {exc}", result, log_it=False)
                return f"not sent: {exc}"
            except NotWriter as exc:
                self._fail(pending, str(exc), result, log_it=False)
                return str(exc)
            except TxnRolledBack as exc:
                blamed = self._blame(exc, pending, with_node)
                if blamed is None:
                    self._fail(pending, str(exc), result)
                    return ""
                if not with_node and node_again and \
                        any("Missing node registration" in text for text, _ in blamed.values()):
                    self._node_known, node_again = False, False
                    continue
                for position, (text, permanent) in blamed.items():
                    if permanent:
                        self._reject(pending[position].item.service_id, text, result)
                    else:
                        self._fail([pending[position]], text, result)
                pending = [m for position, m in enumerate(pending) if position not in blamed]
                continue
            except TxnRefused as exc:
                if exc.status in (400, 413) and len(pending) > 1:
                    half = len(pending) // 2
                    held = self._send(pending[:half], result)
                    if held:
                        self._fail(pending[half:], held, result, log_it=False)
                        return held
                    return self._send(pending[half:], result)
                if exc.status in (400, 413) and pending[0].kind != "delete":
                    self._reject(pending[0].item.service_id, str(exc), result)
                else:
                    self._fail(pending, str(exc), result)
                return ""
            except Unavailable as exc:
                # Consul is down: its outage says so once (bridge/outage.py); the rest of
                # the plan is not sent either, and is left to the pass its recovery wakes.
                self._fail(pending, str(exc), result, log_it=False)
                return str(exc)
            except BridgeError as exc:
                retry_after = getattr(exc, "retry_after", None)
                if retry_after:
                    return self._throttled(pending, exc, retry_after, result)
                # A refusal (TLS, a missing permission) was logged once by the client already.
                self._fail(pending, str(exc), result, log_it=not isinstance(exc, Denied))
                return ""
            if with_node:
                self._node_known = True
            self._throttle_logged = False
            for member in pending:
                WRITES.labels(member.kind).inc()
                result.written.append(member.item.service_id)
                log.debug("consul %s %s (%s %s:%d)", member.kind, member.item.service_id, member.item.name,
                          member.item.address, member.item.port)
            return ""
        return ""

    @staticmethod
    def _blame(exc: TxnRolledBack, pending: list[_Member], with_node: bool
               ) -> dict[int, tuple[str, bool]] | None:
        """The position in `pending` of each member an error names, with the error's text
        and whether it is about the registration itself (permanent); None when an error
        is no member's (the node's operation, or an index out of range)."""
        owner: list[int] = []
        for position, member in enumerate(pending):
            owner.extend([position] * len(member.ops))
        offset = 1 if with_node else 0
        blamed: dict[int, tuple[str, bool]] = {}
        for index, text in exc.errors:
            if not offset <= index < offset + len(owner):
                return None
            position = owner[index - offset]
            permanent = pending[position].kind != "delete" and not any(s in text for s in _STATE_ERRORS)
            known = blamed.get(position)
            # What is wrong with the registration wins over its consequences (the check
            # of a service Consul refused is missing its service).
            if known is None or (permanent and not known[1]):
                blamed[position] = (text, permanent)
        return blamed or None

    def _reject(self, service_id: str, text: str, result: ApplyResult[str]) -> None:
        WRITE_ERRORS.inc()
        result.rejected[service_id] = text
        self._rejections.rejected(SINK, registration_item(service_id), rejection_reason(text), text)

    def _throttled(self, pending: list[_Member], exc: BridgeError, retry_after: float,
                   result: ApplyResult[str]) -> str:
        """Consul said when to come back: the rest of the plan waits for it too."""
        self.throttled_until = time.monotonic() + retry_after
        self._fail(pending, str(exc), result, log_it=False)
        WRITE_ERRORS.inc(len(pending))
        if not self._throttle_logged:
            self._throttle_logged = True
            log.warning("consul asks the bridge to slow down (%s): writes wait for its Retry-After "
                        "(%gs) and are logged again only once they land", exc, retry_after)
        return f"throttled by Consul: {exc}"

    def _fail(self, members: list[_Member], text: str, result: ApplyResult[str], *,
              log_it: bool = True) -> None:
        if log_it:
            WRITE_ERRORS.inc(len(members))
            log.error("consul write of %d registrations failed: %s", len(members), text)
        for member in members:
            result.failed[member.item.service_id] = text

    def _txn(self, batch: list[dict[str, Any]]) -> None:
        timeout = write_timeout(self._gate, TXN_TIMEOUT)  # each attempt asks again
        TXNS.inc()
        self._client.txn(batch, timeout=timeout)
