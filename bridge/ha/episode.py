"""Failures logged once per episode: one line when a run of failures starts, one when it ends.

A lease renewed every two seconds against an API server that is down would otherwise log a
line every two seconds; the first error says what is wrong, the recovery says it is over.
"""

from __future__ import annotations

import logging

from bridge.errors import Denied, Unavailable


class Episode:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failing = False
        self._quiet = False

    def failed(self, exc: BaseException) -> None:
        if self.failing:
            self._log.debug("%s still failing: %s", self._what, exc)
            return
        self.failing = True
        # A refusal (RBAC, an ACL, a TLS handshake) was logged once by the client that met
        # it, and a server that does not answer by its outage (bridge/outage.py).
        level = logging.DEBUG if isinstance(exc, Denied | Unavailable) else logging.WARNING
        self._quiet = level == logging.DEBUG  # then so is the recovery: the other said it
        self._log.log(level, "%s failing: %s", self._what, exc)

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            self._log.log(logging.DEBUG if self._quiet else logging.INFO, "%s recovered", self._what)
