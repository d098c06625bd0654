"""The bridge's Consul token from a login: `consul.auth_method` with the service-account token.

Instead of a long-lived token in a Secret, the bridge exchanges its pod's service-account
token (`consul.login_bearer_token_file`, read again at each login: the kubelet rotates it)
for a Consul token at `/v1/acl/login`, through an auth method of type kubernetes. The first
call to Consul logs in; when Consul answers `ACL not found` (the token expired or was
deleted), the client asks for a new login and makes the call again, so no write is lost;
`stop()` logs out (`/v1/acl/logout`), so the token does not outlive the bridge. A login
Consul refuses is logged once and held in the client's `problems()`; the loops retry.

The token travels only in the X-Consul-Token header and is never logged; only its accessor
ID is (that is what Consul's own errors name).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.config import ConsulSettings
from bridge.errors import BridgeError, Denied

if TYPE_CHECKING:  # the client attaches a login to itself (client.py)
    from bridge.consul.client import ConsulClient

log = logging.getLogger(__name__)

LOGIN = "acl login"  # the kind of call its refusals are held under


class ConsulLogin:
    """Gives the client its token (Credentials, client.py); start/stop for the app."""

    def __init__(self, client: ConsulClient, settings: ConsulSettings) -> None:
        self._client = client
        self._method = settings.auth_method
        self._bearer_file = Path(settings.login_bearer_token_file)
        self._lock = threading.Lock()
        self._secret = ""
        self._accessor = ""
        self._stopped = False

    def start(self) -> None:
        """Log in now, so that a refusal shows at start; the calls retry it if it failed."""
        try:
            self.token()
        except BridgeError as exc:
            log.debug("consul login at start failed: %s", exc)  # logged once by the client

    def token(self) -> str:
        with self._lock:
            if not self._secret:
                self._login()
            return self._secret

    def current(self) -> str:
        return self._secret  # one reference read: no lock needed

    def lost(self, secret: str) -> str:
        with self._lock:
            if self._secret == secret:  # else another call has logged in again already
                log.info("consul no longer knows the login token %s (expired or deleted); logging in again",
                         self._accessor)
                self._secret = self._accessor = ""
                self._login()
            return self._secret

    def stop(self) -> None:
        """Log out, once; a failure is logged (the token then lives until its TTL)."""
        with self._lock:
            self._stopped = True
            secret, accessor, self._secret, self._accessor = self._secret, self._accessor, "", ""
        if not secret:
            return
        try:
            self._client.acl_logout(secret)
        except BridgeError as exc:
            log.warning("consul logout of token %s failed (it lapses with its TTL): %s", accessor, exc)
        else:
            log.info("consul logout: token %s deleted", accessor)

    def _login(self) -> None:
        if self._stopped:
            raise Denied("consul login: the bridge is stopping")
        try:
            bearer = self._bearer_file.read_text().strip()
        except OSError as exc:
            reason = f"cannot read consul.login_bearer_token_file {self._bearer_file}: {exc.strerror or exc}"
            self._client.access.refused(LOGIN, reason)
            raise Denied(f"{LOGIN}: {reason}") from None
        self._secret, self._accessor = self._client.acl_login(self._method, bearer)
        log.info("consul login through auth method %s: token %s", self._method, self._accessor)
