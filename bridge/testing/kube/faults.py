"""Fault injection and the request log, shared by all request threads.

Tests use these to make the fake misbehave the way a real control plane does under load or
during an upgrade: fail the next N requests with a chosen status (500, 429 with Retry-After,
503, ...), slow every request down, and see afterwards exactly which requests a client made.
Admin requests (`/_admin/...`) are neither failed, delayed nor logged.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from bridge.testing.kube import errors
from bridge.testing.timers import SYSTEM, Clock


@dataclass(slots=True)
class RequestRecord:
    """One API request as the server saw it; `status` is filled in once answered."""

    method: str
    path: str
    query: dict[str, str]
    started: float
    watch: bool = False
    status: int | None = None
    user_agent: str = ""
    injected: bool = False
    user: str = ""  # the authenticated (or impersonated) username; "" if refused before

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "started": self.started,
            "watch": self.watch,
            "status": self.status,
            "userAgent": self.user_agent,
            "injected": self.injected,
            "user": self.user,
        }


@dataclass(slots=True)
class FailureRule:
    remaining: int
    code: int
    retry_after: int | None = None
    path_prefix: str | None = None
    methods: frozenset[str] | None = None
    watch_only: bool = False

    def applies(self, method: str, path: str, watch: bool) -> bool:
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.methods and method not in self.methods:
            return False
        return watch or not self.watch_only


@dataclass
class Faults:
    """Thread-safe fault state: failure rules, added latency and the request log."""

    log_size: int = 10_000
    latency: float = 0.0
    # What injected latency and watch timeouts count in (a ManualClock in tests about time).
    clock: Clock = SYSTEM
    _rules: list[FailureRule] = field(default_factory=list)
    _log: deque[RequestRecord] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self,
        count: int = 1,
        code: int = 500,
        *,
        retry_after: int | None = None,
        path_prefix: str | None = None,
        methods: list[str] | None = None,
        watch_only: bool = False,
    ) -> None:
        """Answer the next `count` matching API requests with `code` instead of serving them."""
        with self._lock:
            self._rules.append(
                FailureRule(
                    count,
                    code,
                    retry_after,
                    path_prefix,
                    frozenset(m.upper() for m in methods) if methods else None,
                    watch_only,
                )
            )

    def set_latency(self, seconds: float) -> None:
        """Delay every API request by `seconds` before it is served (0 to stop)."""
        self.latency = max(0.0, float(seconds))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
        self.latency = 0.0

    def take_failure(self, method: str, path: str, watch: bool) -> errors.StatusError | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.applies(method, path, watch):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                    return errors.injected(rule.code, rule.retry_after)
        return None

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)
            while len(self._log) > self.log_size:
                self._log.popleft()

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    @staticmethod
    def now() -> float:
        return time.time()
