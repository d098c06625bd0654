"""Requests the API server refuses (401, 403): logged once, and held for readiness.

A missing RBAC rule or a token the API server no longer accepts does not heal by retrying,
but the loops retry anyway (the rule may be added, the token rotated). So each refusal is
logged once, with the verb, resource and namespace and the server's own Status message
("services is forbidden: User ... cannot list resource ..."), then held here until the same
kind of request succeeds; `problems()` lists what is held, for `/readyz` to say what it waits
for.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What RBAC decides on: a verb on a resource in a namespace ('' for all namespaces)."""

    verb: str
    resource: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        return f"{self.verb} {self.resource} in {where}"


def _status_field(body: object, key: str) -> str:
    """One string field of a Kubernetes Status body, '' when there is none."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if isinstance(status, dict) and isinstance(status.get(key), str):
            return str(status[key])
    return ""


def status_message(body: object, fallback: str) -> str:
    """The `message` of a Kubernetes Status body, else `fallback` (the HTTP reason)."""
    return _status_field(body, "message") or fallback


def status_reason(body: object) -> str:
    """The `reason` of a Kubernetes Status body (`Invalid`, `NotFound`, ...), else ''."""
    return _status_field(body, "reason")


class Access:
    """The refused requests of one client, each with the last reason the server gave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[Request, str] = {}

    def refused(self, request: Request, status: int, message: str) -> None:
        text = f"HTTP {status}: {message}"
        with self._lock:
            if self._refused.get(request) == text:
                return
            self._refused[request] = text
        hint = " (the service account token was not accepted)" if status == 401 else ""
        log.error("kubernetes refused %s: %s%s", request, text, hint)

    def allowed(self, request: Request) -> None:
        if request not in self._refused:  # the common case, without the lock
            return
        with self._lock:
            if self._refused.pop(request, None) is None:
                return
        log.info("kubernetes now allows %s", request)

    def problems(self, *, but: Collection[str] = ()) -> list[str]:
        """One line per refused request, e.g. 'kubernetes refused list services in all
        namespaces: HTTP 403: services is forbidden: ...'; empty when none is refused.
        Requests on the resources in `but` are left out (their owner reports them)."""
        with self._lock:
            held = sorted(self._refused.items(), key=lambda item: str(item[0]))
        return [f"kubernetes refused {request}: {text}" for request, text in held
                if request.resource not in but]
