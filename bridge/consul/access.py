"""What Consul refuses us: a TLS handshake it will not finish, a permission our token lacks.

Neither heals by retrying, yet the loops retry (a certificate may be mounted, a rule added),
so each refusal is logged once, with Consul's own words, and held here until the same kind
of call succeeds. `problems()` lists what is held, for readiness to say what it waits for.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

TLS = "tls"  # the one refusal every call shares


class ConsulAccess:
    """The refusals of one client, by the kind of call refused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}

    def refused(self, kind: str, reason: str) -> None:
        with self._lock:
            if self._held.get(kind) == reason:
                return
            self._held[kind] = reason
        log.error("consul refused %s: %s", kind, reason)

    def allowed(self, kind: str) -> None:
        if kind not in self._held:  # the common case, without the lock
            return
        with self._lock:
            if self._held.pop(kind, None) is None:
                return
        log.info("consul now allows %s", kind)

    def problems(self) -> list[str]:
        """One line per refusal, e.g. "consul refused txn: Permission denied: token with
        AccessorID '...' lacks permission 'service:write' on \"web\""; empty when none."""
        with self._lock:
            held = sorted(self._held.items())
        return [f"consul refused {kind}: {reason}" for kind, reason in held]
