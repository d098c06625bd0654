"""Fault injection and the request log: the knobs tests turn to make Consul misbehave.

Everything here is driven either from Python (`server.faults.*`) or over HTTP through
the `/_admin/...` paths (see admin.py), and is consulted by the transport and the
blocking-query loop. Faults model what clients meet in production: a leaderless
cluster (500 `No cluster leader`), rate limiting (429), slow answers, an agent restart
(connections refused, then back on the same port), connections cut mid-blocking-query,
`X-Consul-KnownLeader: false`, and snapshot restores that move the index backwards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from bridge.testing.consul.state import Store
from bridge.testing.timers import SYSTEM, Clock, DelayedCall

HIDDEN = "<hidden>"


@dataclass
class ErrorRule:
    """Answer matching requests with `status`/`body` instead of serving them."""

    status: int
    body: str
    remaining: int | None  # None = until cleared
    path_prefix: str = "/v1/"
    methods: frozenset[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        return self.methods is None or method in self.methods


@dataclass(frozen=True)
class RequestRecord:
    """One served /v1 request, with every token replaced by `<hidden>`."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    token_source: str | None  # "query", "header", "bearer" or None
    body: str
    at: float  # wall clock (time.time()) once the answer was built, just before it is sent
    took: float = 0.0  # seconds from routing to the answer built (a blocking query's wait included)


class RequestLog:
    """Thread-safe list of RequestRecord, appended before each response is written."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def find(
        self, *, method: str | None = None, path: str | None = None, prefix: str | None = None
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.records()
            if (method is None or r.method == method)
            and (path is None or r.path == path)
            and (prefix is None or r.path.startswith(prefix))
        ]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


def redact_query(raw_query: str) -> dict[str, list[str]]:
    query = parse_qs(raw_query, keep_blank_values=True)
    if "token" in query:
        query["token"] = [HIDDEN for _ in query["token"]]
    return query


def redact_body(body: bytes) -> str:
    """The request body as text, with the value of any JSON key that holds a secret hidden
    ("token", and the ACL endpoints' "SecretID", "BearerToken", "ServiceAccountJWT", any case)."""
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return json.dumps(_redact(parsed), separators=(",", ":"))


_SECRET_KEYS = frozenset({"token", "secretid", "bearertoken", "serviceaccountjwt"})


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (HIDDEN if k.lower() in _SECRET_KEYS else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


class Faults:
    """The fault switchboard. Outage/recover are wired to the transport by the server."""

    def __init__(self, store: Store, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._errors: list[ErrorRule] = []
        self._delay = 0.0
        self._delay_prefix = "/v1/"
        self.known_leader = True
        self.last_contact_ms = 0
        # Blocking queries in flight compare this at every wake-up; a bump drops them.
        self.drop_generation = 0
        self.drop_blocking_after: float | None = None
        self._outage_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._reopen = DelayedCall(clock)
        self.in_outage = False

    # -- error responses --------------------------------------------------------

    def fail_requests(
        self,
        status: int,
        body: str = "",
        *,
        count: int | None = None,
        path_prefix: str = "/v1/",
        methods: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `count` matching requests (all, if None) with status/body."""
        rule = ErrorRule(
            status=status,
            body=body,
            remaining=count,
            path_prefix=path_prefix,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._errors.append(rule)

    def no_leader(self, *, count: int | None = None, path_prefix: str = "/v1/") -> None:
        """What every RPC-backed endpoint answers while the cluster has no leader."""
        self.fail_requests(500, "No cluster leader", count=count, path_prefix=path_prefix)

    def rate_limit(
        self, *, count: int | None = None, path_prefix: str = "/v1/", retry_after: int | None = None, body: str = ""
    ) -> None:
        """Consul's RPC rate limiter: a bare 429 (Consul sends no body and no Retry-After)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fail_requests(429, body, count=count, path_prefix=path_prefix, headers=headers)

    def take_error(self, method: str, path: str) -> ErrorRule | None:
        """The rule that applies to this request, consuming one of its uses."""
        with self._lock:
            for rule in self._errors:
                if rule.matches(method, path):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._errors.remove(rule)
                    return rule
        return None

    # -- slowness -----------------------------------------------------------------

    def slow(self, seconds: float, *, path_prefix: str = "/v1/") -> None:
        """Delay every matching response by `seconds` (0 to turn off)."""
        with self._lock:
            self._delay = max(0.0, seconds)
            self._delay_prefix = path_prefix

    def delay_for(self, path: str) -> float:
        with self._lock:
            return self._delay if path.startswith(self._delay_prefix) else 0.0

    # -- leadership headers ----------------------------------------------------------

    def set_known_leader(self, known: bool, *, last_contact_ms: int = 0) -> None:
        """Set X-Consul-KnownLeader (and X-Consul-LastContact) on query responses."""
        self.known_leader = known
        self.last_contact_ms = last_contact_ms

    # -- blocking-query drops -----------------------------------------------------------

    def drop_blocking_queries(self) -> None:
        """Cut the connection of every blocking query currently waiting (no response)."""
        with self._lock:
            self.drop_generation += 1
        self._store.notify()

    def drop_blocking_queries_after(self, seconds: float | None) -> None:
        """Cut any blocking query once it has waited `seconds` (None turns this off)."""
        self.drop_blocking_after = seconds
        self._store.notify()

    # -- outages ----------------------------------------------------------------------

    def attach_outage_hooks(self, close: Callable[[], None], reopen: Callable[[], None]) -> None:
        self._outage_hooks = (close, reopen)

    def outage(self, duration: float | None = None) -> None:
        """Stop listening (connections refused, open ones closed); reopen after `duration`."""
        if self._outage_hooks is None:
            raise RuntimeError("server not started")
        self._reopen.cancel()
        with self._lock:
            self.in_outage = True
        self._outage_hooks[0]()
        if duration is not None:
            self._reopen.schedule(duration, self.recover)

    def recover(self) -> None:
        """Listen again on the same host and port."""
        if self._outage_hooks is None:
            raise RuntimeError("server not started")
        self._reopen.cancel()
        with self._lock:
            if not self.in_outage:
                return
            self.in_outage = False
        self._outage_hooks[1]()

    def cancel_timers(self) -> None:
        self._reopen.cancel()

    # -- index moves --------------------------------------------------------------------

    def reset_index(self, to: int) -> None:
        """Snapshot-restore style: every index goes back to at most `to`."""
        self._store.reset_index(to)

    # -- everything off -------------------------------------------------------------------

    def clear(self) -> None:
        """Remove error rules, slowness, leadership overrides and blocking drops."""
        with self._lock:
            self._errors.clear()
            self._delay = 0.0
        self.known_leader = True
        self.last_contact_ms = 0
        self.drop_blocking_after = None

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "errors": [
                    {"status": r.status, "body": r.body, "remaining": r.remaining, "path_prefix": r.path_prefix}
                    for r in self._errors
                ],
                "delay": self._delay,
                "known_leader": self.known_leader,
                "last_contact_ms": self.last_contact_ms,
                "drop_generation": self.drop_generation,
                "drop_blocking_after": self.drop_blocking_after,
                "in_outage": self.in_outage,
                "time": time.time(),
            }
