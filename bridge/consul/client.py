"""py-consul, configured from settings, with its errors mapped to ours.

This is the only module that imports `consul`. The client is built with every value given
explicitly (py-consul would otherwise read CONSUL_* variables itself, behind the settings'
back, and let the environment override a configured token). The token travels in the
X-Consul-Token header, never in a URL, and error messages are redacted all the same.

Reads (blocking queries among them) and writes (transactions) go through two HTTP
sessions, so that `close()` can cut every read in flight at once, while a transaction
in flight is left to complete: Consul applies it whole or not at all either way.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import urllib.parse
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import consul
import requests
from consul.base import Response
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ConsulException, NotFound
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from bridge.config import ConsulSettings, token
from bridge.consul.access import TLS, ConsulAccess
from bridge.consul.login import LOGIN, ConsulLogin
from bridge.errors import Conflict, Denied, Rejected, Transient, Unavailable
from bridge.outage import Clock, Outage

if TYPE_CHECKING:  # urllib3 defines them for type checkers only
    from urllib3._base_connection import BaseHTTPConnection, BaseHTTPSConnection


class TxnRolledBack(Conflict):
    """Consul rolled a transaction back: `errors` are its (OpIndex, What) pairs, the
    operations that failed and Consul's text for each."""

    def __init__(self, errors: list[tuple[int, str]], detail: str) -> None:
        super().__init__(f"txn rolled back: {detail}")
        self.errors = errors


class TxnRefused(Rejected):
    """Consul refused a transaction as a whole (a 4xx other than 409 and 429): `status`
    says why (400: a body it cannot decode, 403: the token, 413: too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# A 429 says "later" (Consul's rate limits; its connection limit): with no Retry-After
# to say how much later, this much.
THROTTLED_RETRY = 1.0


def retry_after(header: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent, not a number, or not positive."""
    try:
        value = float(header) if header else 0.0
    except ValueError:
        return None
    return value if value > 0 else None


LEADER_PATH = "/v1/status/leader"
PROBE_TIMEOUT = 2.0  # seconds: the leader is answered from memory


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "********") if secret else text


class _CuttableAdapter(HTTPAdapter):
    """An HTTPAdapter that remembers the connections it opens, so `cut()` can end the
    requests in flight on them: closing a requests Session only closes idle ones."""

    def __init__(self, server_name: str = "") -> None:
        self._opened: weakref.WeakSet[BaseHTTPConnection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._server_name = server_name
        super().__init__()  # calls init_poolmanager

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._server_name:
            # Consul's certificate names e.g. server.dc1.consul, not the address dialled: ask
            # for that name (SNI) and check the certificate against it, as consul's tls_server_name.
            kwargs.update(server_hostname=self._server_name, assert_hostname=self._server_name)
        super().init_poolmanager(*args, **kwargs)
        self._track(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        new = proxy not in self.proxy_manager
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if new:
            self._track(manager)
        return manager

    def _remember(self, conn: BaseHTTPConnection) -> None:
        with self._lock:
            self._opened.add(conn)

    def _track(self, manager: PoolManager) -> None:
        remember = self._remember

        class Plain(HTTPConnectionPool):
            def _new_conn(self) -> BaseHTTPConnection:
                conn = super()._new_conn()
                remember(conn)
                return conn

        class Tls(HTTPSConnectionPool):
            def _new_conn(self) -> BaseHTTPSConnection:
                conn = super()._new_conn()
                remember(conn)
                return conn

        manager.pool_classes_by_scheme = {"http": Plain, "https": Tls}

    def cut(self) -> None:
        """End every request in flight (its caller gets a connection error), close all."""
        with self._lock:
            opened = list(self._opened)
        for conn in opened:
            sock = getattr(conn, "sock", None)  # None while not connected
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.close()


class ConsulClient:
    """The calls the bridge makes, each returning plain JSON values."""

    def __init__(self, settings: ConsulSettings, *, clock: Clock | None = None) -> None:
        """`clock`: what the outage (`bridge/outage.py`) reads; the system's by default."""
        self._settings = settings
        self._token = token(settings)
        self.access = ConsulAccess()
        # Set by a login (login.py): gives the token to use, and replaces one Consul lost.
        self.credentials: Credentials | None = None
        self.login: ConsulLogin | None = None
        if settings.auth_method:
            self.login = ConsulLogin(self, settings)
            self.credentials = self.login
        self._reads = _CuttableAdapter(settings.tls_server_name)
        self._writes = _CuttableAdapter(settings.tls_server_name)
        self._c = self._connect(settings, self._reads)
        self._w = self._connect(settings, self._writes)
        self.wait = f"{settings.wait}s"
        # Every call below goes through it: while Consul is down, only the probe is sent.
        self.outage = Outage("consul", self._probe_leader, probe_name=f"GET {LEADER_PATH}",
                             clock=clock)

    @property
    def settings(self) -> ConsulSettings:
        return self._settings

    def _connect(self, settings: ConsulSettings, adapter: HTTPAdapter) -> consul.Consul:
        url = urllib.parse.urlparse(settings.address)
        verify: bool | str = settings.ssl_verify
        if settings.ca_cert and settings.ssl_verify:
            verify = settings.ca_cert
        cert = None
        if settings.client_cert:
            cert = (settings.client_cert, settings.client_key) if settings.client_key \
                else settings.client_cert
        c = consul.Consul(
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if url.scheme == "https" else 8500),
            scheme=url.scheme or "http",
            verify=verify,
            cert=cert,
            dc=settings.datacenter or None,
        )
        session: requests.Session = c.http.session
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # In a header, not py-consul's ?token= query parameter, which ends up in access logs.
        c.token = None
        if self._token:
            session.headers["X-Consul-Token"] = self._token
        return c

    def _probe_leader(self) -> None:
        """The outage's probe: Consul is back when it names a leader (with none it answers
        "" and every write and consistent read fails)."""
        http = self._c.http
        try:
            response = http.session.get(http.uri(LEADER_PATH), verify=http.verify, cert=http.cert,
                                        timeout=PROBE_TIMEOUT)
        except requests.RequestException as exc:
            raise Unavailable(f"{LEADER_PATH}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            text = _redact(response.text.strip()[:200], self._token)
            raise Unavailable(f"{LEADER_PATH}: {response.status_code} {text}")
        if response.status_code == 200 and response.text.strip() in ('""', ""):
            raise Unavailable(f"{LEADER_PATH}: no cluster leader")

    def problems(self) -> list[str]:
        """What Consul refuses us (TLS, permissions), one line each; for readiness."""
        return self.access.problems()

    def _use_token(self, secret: str) -> None:
        self._token = secret
        for c in (self._c, self._w):
            c.http.session.headers["X-Consul-Token"] = secret

    def close(self) -> None:
        """Cut every read in flight (blocking queries end at once with a Transient error);
        a transaction in flight completes. Calls after this fail or open new connections."""
        self.outage.close()
        self._reads.cut()
        self._writes.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` with its errors made ours. With a login, a token Consul no
        longer knows (deleted, expired) is replaced by a new login and the call made again."""
        credentials = self.credentials
        if credentials is None:
            return self._call_once(what, fn, *args, **kwargs)
        used = credentials.token()
        if used != self._token:
            self._use_token(used)
        try:
            return self._call_once(what, fn, *args, **kwargs)
        except TokenLost:
            self._use_token(credentials.lost(used))
            return self._call_once(what, fn, *args, **kwargs)

    def _call_once(self, what: str, fn: Any, *args: Any, refusal_5xx: bool = False, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, reported to the outage (`bridge/outage.py`), which may
        refuse it unsent. `refusal_5xx`: a 5xx is the server's answer (a login refused)."""
        self.outage.admit()
        try:
            result = self._request(what, fn, *args, refusal_5xx=refusal_5xx, **kwargs)
        except Unavailable as exc:
            self.outage.failed(exc)
            raise
        except BaseException:
            self.outage.succeeded()  # an answer, if not the one hoped for
            raise
        self.outage.succeeded()
        return result

    def _request(self, what: str, fn: Any, *args: Any, refusal_5xx: bool = False, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ACLPermissionDenied as exc:
            message = _redact(str(exc), self._token)
            if "ACL not found" in message and self.credentials is not None:  # a login replaces it
                raise TokenLost(f"{what}: {message} (the token is unknown to Consul)") from None
            self.access.refused(_kind(what), message)
            raise Denied(f"{what}: {message}") from None
        except (ACLDisabled, BadRequest) as exc:
            raise Rejected(f"{what}: {_redact(str(exc), self._token)}") from None
        except ConsulException as exc:
            message = _redact(str(exc), self._token)
            if message.startswith("429"):
                # py-consul keeps no headers here: come back no sooner than a second.
                raise Transient(f"{what}: {message}", THROTTLED_RETRY) from None
            if message[:1] == "4":
                raise Rejected(f"{what}: {message}") from None
            if message[:1] == "5" and not refusal_5xx:
                raise Unavailable(f"{what}: {message}") from None
            raise Transient(f"{what}: {message}") from None
        except requests.exceptions.SSLError as exc:
            reason = tls_refusal(exc, self._settings)
            self.access.refused(TLS, reason)
            raise Denied(f"{what}: {reason}") from None
        except requests.RequestException as exc:
            # The exception text quotes the URL, and the URL can carry the token.
            raise Unavailable(f"{what}: {type(exc).__name__}") from None
        except (ValueError, TypeError) as exc:
            raise Transient(f"{what}: bad response: {type(exc).__name__}") from None
        self.access.allowed(TLS)
        self.access.allowed(_kind(what))
        return result

    def acl_login(self, method: str, bearer_token: str) -> tuple[str, str]:
        """`/v1/acl/login` through auth method `method`: the new token's (secret, accessor).
        Raises Denied if Consul refuses the login (logged once), Transient if it cannot be asked."""
        try:
            answer = self._call_once(LOGIN, self._w.acl.login, method, bearer_token, refusal_5xx=True)
        except TokenLost as exc:  # here: Consul does not know the auth method
            message = _redact(str(exc).removeprefix(f"{LOGIN}: ").removesuffix(" (the token is unknown to Consul)"),
                              bearer_token)
            self.access.refused(LOGIN, message)
            raise Denied(f"{LOGIN}: {message}") from None
        except Transient as exc:
            message = _redact(str(exc), bearer_token)
            if not re.match(rf"{LOGIN}: 5\d\d ", message):
                raise type(exc)(message, exc.retry_after) from None  # Unavailable stays so
            # The auth method's validator refused the bearer token (Consul answers 500).
            self.access.refused(LOGIN, message.removeprefix(f"{LOGIN}: "))
            raise Denied(message) from None
        if not isinstance(answer, dict) or not answer.get("SecretID"):
            raise Transient(f"{LOGIN}: no token in the answer")
        return str(answer["SecretID"]), str(answer.get("AccessorID") or "")

    def acl_logout(self, secret: str) -> None:
        """`/v1/acl/logout` of the login token `secret`."""
        self._call_once("acl logout", self._w.acl.logout, secret)

    def services(self, index: int | None, *, not_on_node: str = "") -> tuple[int, dict[str, list[str]]]:
        """Blocking read of every service name and its tags; with `not_on_node`, only the
        names that have an instance on some other node."""
        filter_expr = f'Node != "{not_on_node}"' if not_on_node else None
        idx, data = self._call("catalog services", self._c.catalog.services,
                               index=index, wait=self.wait if index else None, filter_expr=filter_expr)
        return int(idx), data or {}

    def health_service(self, name: str, index: int | None,
                       passing: bool) -> tuple[int, list[dict[str, Any]]]:
        """Blocking read of one service's instances with their checks."""
        idx, data = self._call(f"health service {name}", self._c.health.service, name,
                               index=index, wait=self.wait if index else None,
                               passing=passing)
        return int(idx), data or []

    def node_services(self, node: str) -> dict[str, Any] | None:
        """Services on one node (None if the node does not exist)."""
        _, data = self._call(f"catalog node {node}", self._c.catalog.node, node)
        return data

    def node_checks(self, node: str) -> list[dict[str, Any]]:
        _, data = self._call(f"health node {node}", self._c.health.node, node)
        return data or []

    def txn(self, operations: list[dict[str, Any]], *, timeout: float | None = None
            ) -> list[dict[str, Any]]:
        """Apply operations atomically, waiting `timeout` seconds at most for the answer
        (default: the client's). Raises TxnRolledBack (with Consul's per-operation errors)
        when Consul rolled the transaction back, TxnRefused when it refused the request as
        a whole."""
        http = self._w.http

        def put() -> Response:
            # py-consul's put() has no per-call timeout; the same request, with one.
            response = http.response(http.session.put(
                http.uri("/v1/txn"), data=json.dumps(operations), verify=http.verify,
                cert=http.cert, timeout=timeout or http.connections_timeout))
            if response.code == 403:  # "ACL not found" (a login replaces it) or "Permission denied"
                raise ACLPermissionDenied(response.body)
            if response.code == 409 and "Permission denied" in str(response.body):
                raise _TxnDenied(response.body)  # not a success of the call: keep it refused
            if response.code >= 500:  # as py-consul's own calls raise it: an outage's
                raise ConsulException(f"{response.code} {response.body}")
            return response

        try:
            response = self._call("txn", put)
        except _TxnDenied as exc:
            detail = _txn_errors(_redact(str(exc), self._token))
            self.access.refused("txn", detail)
            raise Denied(f"txn rolled back: {detail}") from None
        if response.code == 200:
            return (json.loads(response.body) or {}).get("Results") or []
        body = _redact(str(response.body), self._token)
        if response.code == 409:
            try:
                errors = [(int(e["OpIndex"]), str(e.get("What") or ""))
                          for e in json.loads(body).get("Errors") or []]
                detail = "; ".join(f"op {index}: {what}" for index, what in errors)
            except (ValueError, AttributeError, KeyError, TypeError):
                errors, detail = [], body.strip()
            raise TxnRolledBack(errors, detail)
        if response.code == 429:
            raise Transient(f"txn: {response.code} {body.strip()}",
                            retry_after((response.headers or {}).get("Retry-After")) or THROTTLED_RETRY)
        raise TxnRefused(response.code, f"txn: {response.code} {body.strip()}")

    # Sessions and KV: the leader's claim on bridge/clusters/<cluster_id> (bridge/ha/).

    def session_create(self, *, name: str, ttl: int, lock_delay: int) -> str:
        """A session that lives by its TTL alone: no node checks, so it neither dies with
        the agent it was made through nor outlives a bridge that stopped renewing it."""
        return str(self._call("session create", self._c.session.create, name=name, checks=[],
                              ttl=ttl, lock_delay=lock_delay, behavior="release"))

    def session_renew(self, session_id: str) -> bool:
        """Extends the session's TTL; False when Consul no longer knows the session."""

        def renew() -> bool:
            try:
                return self._c.session.renew(session_id) is not None
            except NotFound:
                return False

        return bool(self._call("session renew", renew))

    def session_destroy(self, session_id: str) -> None:
        """Ends a session; the keys it holds are released (lock-delay applies to them)."""
        self._call("session destroy", self._c.session.destroy, session_id)

    def kv_get(self, key: str) -> dict[str, Any] | None:
        """One key's entry (Value as bytes, Session, LockIndex, ...), None if absent."""
        _, entry = self._call(f"kv get {key}", self._c.kv.get, key)
        return entry

    def kv_list(self, prefix: str, index: int | None) -> tuple[int, list[dict[str, Any]]]:
        """Blocking read of every entry under `prefix`."""
        idx, entries = self._call(f"kv list {prefix}", self._c.kv.get, prefix, recurse=True,
                                  index=index, wait=self.wait if index else None)
        return int(idx), entries or []

    def kv_acquire(self, key: str, value: bytes, session_id: str) -> bool:
        """Writes `key` and takes its lock for the session; False if another session holds
        it or the key is in its lock-delay."""
        return bool(self._call(f"kv acquire {key}", self._c.kv.put, key, value, acquire=session_id))

    def kv_release(self, key: str, value: bytes, session_id: str) -> bool:
        """Writes `key` and gives up the session's lock on it (no lock-delay follows)."""
        return bool(self._call(f"kv release {key}", self._c.kv.put, key, value, release=session_id))

    # What a cluster owns, found by its marks, for `bridge purge` (bridge/purge.py).

    def nodes_with_meta(self, key: str, value: str) -> list[dict[str, Any]]:
        """Every node whose node meta `key` is `value` (`?node-meta=key:value`)."""
        _, data = self._call("catalog nodes", self._c.catalog.nodes, node_meta={key: value})
        return data or []

    def service_names(self, filter_expr: str) -> list[str]:
        """The names of the services with an instance matching `filter_expr` (bexpr over
        the catalog's service nodes)."""
        _, data = self._call("catalog services", self._c.catalog.services, filter_expr=filter_expr)
        return sorted(data or {})

    def service_nodes(self, name: str, filter_expr: str) -> list[dict[str, Any]]:
        """`/v1/catalog/service/<name>`: its instances matching `filter_expr`."""
        _, data = self._call(f"catalog service {name}", self._c.catalog.service, name,
                             filter_expr=filter_expr)
        return data or []

    def sessions(self) -> list[dict[str, Any]]:
        """Every session in the datacenter (those the token may read)."""
        _, data = self._call("session list", self._c.session.list)
        return data or []


class TokenLost(Denied):
    """Consul does not know the token (`ACL not found`): deleted, expired, or never made."""


class Credentials(Protocol):
    """Where the token comes from when the bridge logs in (login.py)."""

    def token(self) -> str:
        """The token to send; logs in first if there is none. Raises Denied if it cannot."""
        ...

    def current(self) -> str:
        """The token held now, "" if none: never logs in, never waits (for an event loop)."""
        ...

    def lost(self, secret: str) -> str:
        """Consul no longer knows `secret`: a new token (by a new login, unless another call
        already made one). Raises Denied if the login fails."""
        ...


class _TxnDenied(Exception):
    """A transaction Consul rolled back because the token lacks a permission (409)."""


def _txn_errors(body: str) -> str:
    """Consul's per-operation errors of a rolled-back transaction, on one line."""
    try:
        errors = json.loads(body).get("Errors") or []
        return "; ".join(f"op {e.get('OpIndex')}: {e.get('What')}" for e in errors)
    except (ValueError, AttributeError):
        return body.strip()


def _kind(what: str) -> str:
    """The kind of call `what` names, as refusals are held: "health service web" -> "health service"."""
    return " ".join(what.split()[:2])


_SSL_REASON = re.compile(r"\[SSL: \w+\] (.+?)\s*\(_ssl\.c")
_NAME_REASON = re.compile(r"CertificateError\(.(hostname .+? doesn.t match .+?).\)")


def tls_refusal(exc: Exception, settings: ConsulSettings) -> str:
    """Why the TLS handshake with Consul failed, with the setting that would fix it.

    Only the TLS library's reason is quoted: the exception text also carries the URL."""
    text = str(exc)
    found = _SSL_REASON.search(text) or _NAME_REASON.search(text)
    reason = found.group(1).strip() if found else "TLS error"
    if "mismatch" in reason or "doesn't match" in reason:
        return (f"its certificate does not name the address we dial or consul.tls_server_name "
                f"({reason}); set consul.tls_server_name (CONSUL_TLS_SERVER_NAME) to a name it holds")
    if "certificate verify failed" in reason:
        return (f"its certificate is not trusted ({reason}); set consul.ca_cert (CONSUL_CACERT) "
                f"to the CA that signed it")
    # Consul ends a handshake it refuses with an alert, which the client reads, or sees the
    # connection closed first ("EOF occurred"): the reason varies, so it is not quoted.
    if not settings.client_cert:
        return ("the TLS handshake failed: Consul verifies incoming connections and we sent no "
                "client certificate; set consul.client_cert and consul.client_key "
                "(CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY)")
    return (f"the TLS handshake failed: Consul does not accept the client certificate "
            f"{settings.client_cert}; it must be signed by a CA Consul trusts")
