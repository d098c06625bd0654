"""`KubeAPIServer`: the fake kube-apiserver's lifecycle, manifests, kubeconfig and test hooks.

Owns the listening socket and the request threads: start on a given or free port, stop
within a second or two (closing watch streams and idle keep-alive connections so no thread
lingers), and simulate an outage by closing the listener and every connection, then
listening again on the same port. Also the Python and HTTP (`/_admin/...`) faces of the
fault-injection hooks. Object semantics live in `store.py`, the wire format in `handler.py`.

With `tls=True` the server is a secured one: HTTPS with a CA made at start (`certs.py`),
bearer tokens (`tokens.py`), RBAC (`rbac.py`, seeded with `bootstrap.py`'s policy), an admin
kubeconfig for a `system:masters` user, and service-account token volumes written like the
kubelet's (`projection.py`) whose token a fault can rotate.
"""

from __future__ import annotations

import base64
import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bridge.testing.kube import bootstrap, errors
from bridge.testing.kube.certs import ServingCA
from bridge.testing.kube.escalation import EscalationCheck
from bridge.testing.kube.faults import Faults, RequestRecord
from bridge.testing.kube.guard import Guard
from bridge.testing.kube.handler import Backend, KubeRequestHandler, StreamTracker
from bridge.testing.kube.jsonvalue import load_yaml_all
from bridge.testing.kube.projection import write_projection
from bridge.testing.kube.rbac import RBACAuthorizer
from bridge.testing.kube.resources import NAMESPACES, SERVICE_ACCOUNTS
from bridge.testing.kube.store import Store
from bridge.testing.kube.tokens import TokenAuthority
from bridge.testing.kube.users import MASTERS, UserInfo
from bridge.testing.timers import SYSTEM, Clock, DelayedCall

JSON = dict[str, Any]

log = logging.getLogger(__name__)

_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_HANDSHAKE_TIMEOUT = 10.0  # a client that opens a connection and says nothing does not hold a thread forever
ADMIN_USER = "kubernetes-admin"


@dataclass(slots=True)
class _Projection:
    """A service-account token volume this server wrote and may rotate."""

    namespace: str
    name: str
    token: str


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its connections and threads, so it can cut and join them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[KubeRequestHandler], ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ssl_context = ssl_context
        self._tracked_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._conn_threads: set[threading.Thread] = set()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out in separate sends; without NODELAY, Nagle plus the client's
        # delayed ACK adds ~40 ms to every response.
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"fake-kube-conn-{client_address[1]}",
            daemon=True,
        )
        with self._tracked_lock:
            self._connections.add(request)
            self._conn_threads.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                request = self._handshake(request)
            self.finish_request(request, client_address)
        except OSError:
            pass  # the peer went away, failed the TLS handshake, or we cut the connection on purpose
        except Exception:
            log.exception("fake kube-apiserver connection from %s failed", client_address)
        finally:
            self.shutdown_request(request)
            with self._tracked_lock:
                self._connections.discard(request)
                self._conn_threads.discard(threading.current_thread())

    def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        assert self.ssl_context is not None
        wrapped = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._tracked_lock:
            # The raw socket object is detached now; cutting must reach the wrapped one.
            self._connections.discard(raw)
            self._connections.add(wrapped)
        wrapped.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            wrapped.do_handshake()
        except (OSError, ssl.SSLError):
            with self._tracked_lock:
                self._connections.discard(wrapped)
            wrapped.close()
            raise
        wrapped.settimeout(None)
        return wrapped

    def cut_connections(self) -> None:
        with self._tracked_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_threads(self, deadline: float) -> bool:
        while True:
            with self._tracked_lock:
                threads = [t for t in self._conn_threads if t is not threading.current_thread()]
            if not threads:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            threads[0].join(min(remaining, 0.1))


class KubeAPIServer:
    """An in-process, real-HTTP fake of kube-apiserver for tests and demos.

    Usage::

        server = KubeAPIServer()               # port 0 picks a free port
        server.start()                         # returns once listening
        server.load_manifests("cluster.yaml")  # create-or-replace, controllers run
        server.write_kubeconfig("kubeconfig")  # for kubectl and the official client
        server.stop()                          # within a second or two

    `store` gives direct access to the objects; the fault hooks (`fail_next`, `set_latency`,
    `begin_outage`, `compact`, `emit_bookmark`, `drop_watches`, `requests`,
    `rotate_service_account_tokens`) are also served as JSON under `/_admin/` for
    out-of-process users of the CLI.

    `tls=True` makes it authenticate and authorize (see the module docstring); `clock` is
    what token grace periods are measured on, `token_grace` their default length in seconds.
    Admin endpoints of a TLS server (POST, JSON): `/_admin/rotate-token` {directory?,
    graceSeconds?}, `/_admin/write-serviceaccount` {directory, serviceAccount: "NS/NAME"},
    `/_admin/tokens` {user, groups?} or {serviceAccount: "NS/NAME"} -> {token}.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: Store | None = None,
        seed: int | None = None,
        history_size: int = 10_000,
        watch_capacity: int = 10_000,
        tls: bool = False,
        clock: Clock = SYSTEM,
        token_grace: float = 10.0,
    ) -> None:
        self.store = (
            store if store is not None else Store(seed=seed, history_size=history_size, watch_capacity=watch_capacity)
        )
        self.token_grace = token_grace
        self._ca: ServingCA | None = None
        self._authority: TokenAuthority | None = None
        self._admin_token = ""
        self._projections: dict[Path, _Projection] = {}
        self.guard = Guard(None, None)
        if tls:
            self._ca = ServingCA(host)
            self._authority = TokenAuthority(self.store, clock=clock.now)
            authorizer = RBACAuthorizer(self.store)
            self.guard = Guard(self._authority, authorizer)
            self.store.admission.append(EscalationCheck(authorizer))
            for obj in bootstrap.policy():
                self.store.apply(obj)
            self._admin_token = self._authority.issue_user_token(UserInfo(ADMIN_USER, (MASTERS,)))
        self.faults = Faults(clock=clock)
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._streams = StreamTracker()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._retired: list[_HTTPServer] = []
        self._reopen = DelayedCall(clock)
        self._started = False

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        """Bind and serve in background threads; returns once the socket is listening."""
        with self._lock:
            if self._started:
                raise RuntimeError("KubeAPIServer already started")
            self._started = True
            self._stopping.clear()
            self._listen()
        return self

    def _handler_class(self) -> type[KubeRequestHandler]:
        backend = Backend(
            self.store,
            self.faults,
            self._stopping,
            self._streams,
            lambda: f"{self._host}:{self._port}",
            self._admin,
            self.guard,
        )
        return type("BoundKubeRequestHandler", (KubeRequestHandler,), {"backend": backend})

    def _listen(self) -> None:
        deadline = time.monotonic() + 3.0
        while True:
            try:
                context = self._ca.server_context() if self._ca is not None else None
                httpd = _HTTPServer((self._host, self._port), self._handler_class(), context)
                break
            except OSError as exc:
                # Reopening after an outage: the old socket may linger for a moment.
                if exc.errno != errno.EADDRINUSE or not self._port or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._serve_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-kube-{self._port}", daemon=True
        )
        self._serve_thread.start()

    def _close(self, httpd: _HTTPServer, *, abrupt: bool, deadline: float) -> None:
        httpd.shutdown()
        httpd.server_close()
        self.store.drop_watches(abrupt=abrupt)
        if not abrupt:
            # Let watch streams write their terminating chunk before connections are cut.
            self._streams.wait_idle(max(0.0, min(1.0, deadline - time.monotonic())))
        httpd.cut_connections()

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and all connections and watches; join threads within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping.set()
            self._reopen.cancel()
            httpd, self._httpd = self._httpd, None
            retired, self._retired = self._retired, []
        if httpd is not None:
            self._close(httpd, abrupt=False, deadline=deadline)
        self.store.drop_watches()
        for server in [*retired, *([httpd] if httpd else [])]:
            server.cut_connections()
            if not server.join_threads(deadline):
                log.warning("fake kube-apiserver: request threads still running after stop()")
        if self._serve_thread is not None:
            self._serve_thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> KubeAPIServer:
        return self.start() if not self._started else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self._host, self._port)

    @property
    def url(self) -> str:
        """Where clients connect; a wildcard bind address is reached through loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._host, self._host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self._port}"

    # --- authentication ------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self._ca is not None

    @property
    def ca_pem(self) -> bytes:
        """The PEM of the CA that signed the serving certificate (TLS servers only)."""
        return self._secured()[0].ca_pem

    @property
    def admin_token(self) -> str:
        """The bearer token of `kubernetes-admin` (group `system:masters`)."""
        self._secured()
        return self._admin_token

    def _secured(self) -> tuple[ServingCA, TokenAuthority]:
        if self._ca is None or self._authority is None:
            raise RuntimeError("this KubeAPIServer was started without tls=True")
        return self._ca, self._authority

    def issue_token(self, user: str, groups: Iterable[str] = (), *, uid: str = "") -> str:
        """A bearer token that authenticates as `user` in `groups` (plus system:authenticated)."""
        return self._secured()[1].issue_user_token(UserInfo(user, tuple(groups), uid))

    def service_account_token(self, namespace: str, name: str, *, audiences: Iterable[str] | None = None) -> str:
        """A signed service-account JWT for an existing ServiceAccount."""
        authority = self._secured()[1]
        if audiences is None:
            return authority.issue_service_account_token(namespace, name)[0]
        return authority.issue_service_account_token(namespace, name, audiences=audiences)[0]

    def write_service_account(self, directory: str | Path, namespace: str, name: str) -> Path:
        """Write `token`, `ca.crt` and `namespace` into `directory` as the kubelet projects them.

        The namespace and ServiceAccount are created if missing (a pod could not run as an
        account that does not exist). Returns the directory.
        """
        authority = self._secured()[1]
        with self.store.lock:
            if self.store.find(NAMESPACES, None, namespace) is None:
                self.store.create(NAMESPACES, None, {"metadata": {"name": namespace}})
            if self.store.find(SERVICE_ACCOUNTS, namespace, name) is None:
                self.store.create(SERVICE_ACCOUNTS, namespace, {"metadata": {"name": name}})
        token = authority.issue_service_account_token(namespace, name)[0]
        target = Path(directory).resolve()
        self._publish(target, namespace, token)
        with self._lock:
            self._projections[target] = _Projection(namespace, name, token)
        return target

    def _publish(self, target: Path, namespace: str, token: str) -> None:
        files = {"ca.crt": self._secured()[0].ca_pem, "namespace": namespace.encode(), "token": token.encode()}
        write_projection(target, files)

    def rotate_service_account_tokens(
        self, directory: str | Path | None = None, *, grace_seconds: float | None = None
    ) -> int:
        """Fault: write a new token into each service-account volume (or just `directory`).

        The old token keeps working for `grace_seconds` (default `token_grace`; 0 refuses it
        at once), as a projected token does until its expiry. Returns how many were rotated.
        """
        authority = self._secured()[1]
        grace = self.token_grace if grace_seconds is None else grace_seconds
        wanted = Path(directory).resolve() if directory is not None else None
        with self._lock:
            targets = [(path, p) for path, p in self._projections.items() if wanted in (None, path)]
        if wanted is not None and not targets:
            raise KeyError(f"no service-account volume was written to {wanted}")
        for path, projection in targets:
            token = authority.issue_service_account_token(projection.namespace, projection.name)[0]
            self._publish(path, projection.namespace, token)
            authority.retire(projection.token, grace)
            with self._lock:
                self._projections[path] = _Projection(projection.namespace, projection.name, token)
        return len(targets)

    # --- objects -------------------------------------------------------------------------

    def apply(self, obj: JSON) -> JSON:
        """Create or replace one object as a user would (controllers run before it returns)."""
        return self.store.apply(obj)

    def load_manifests(self, source: str | Path | Iterable[str | Path]) -> list[JSON]:
        """Create-or-replace every object in multi-document YAML (text, file, directory, list).

        Namespaces go first so a file may define a namespace after objects that live in it;
        `kind: List` documents are expanded. Returns the stored objects in load order.
        """
        documents: list[Any] = []
        for text in _manifest_texts(source):
            documents.extend(load_yaml_all(text))
        objects: list[JSON] = []
        for doc in documents:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ValueError(f"manifest document is not an object: {doc!r}")
            if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
                objects.extend(doc.get("items") or [])
            else:
                objects.append(doc)
        ordered = [o for o in objects if o.get("kind") == "Namespace"]
        ordered += [o for o in objects if o.get("kind") != "Namespace"]
        stored = []
        for obj in ordered:
            try:
                stored.append(self.store.apply(obj))
            except errors.StatusError as exc:
                meta = obj.get("metadata") or {}
                exc.add_note(
                    f"while loading {obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name', '')}".replace(
                        " /", " "
                    )
                )
                raise
        return stored

    def write_kubeconfig(
        self, path: str | Path, *, namespace: str = "default", context: str = "fake-kube", token: str | None = None
    ) -> Path:
        """Write a kubeconfig that kubectl and the official client use as is.

        On a TLS server it trusts the server's CA and, unless `token` says otherwise, signs in
        as the `system:masters` admin.
        """
        cluster: JSON = {"server": self.url}
        if self._ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(self._ca.ca_pem).decode()
        if token is None:
            token = self._admin_token or "fake-token"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
            "users": [{"name": context, "user": {"token": token}}],
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    # --- test hooks ----------------------------------------------------------------------

    def compact(self, upto: int | str | None = None) -> int:
        """Forget the change history up to `upto` (default: all); older watches/lists get 410."""
        return self.store.compact(upto)

    def emit_bookmark(self) -> int:
        """Send a BOOKMARK now to every watch that allows them; returns how many got one."""
        return self.store.emit_bookmark()

    def drop_watches(self, *, abrupt: bool = False) -> int:
        """End all watch streams: cleanly (terminating chunk) or by resetting the connection."""
        return self.store.drop_watches(abrupt=abrupt)

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
        """Answer the next `count` matching API requests with an error Status of `code`."""
        self.faults.fail_next(
            count, code, retry_after=retry_after, path_prefix=path_prefix, methods=methods, watch_only=watch_only
        )

    def set_latency(self, seconds: float) -> None:
        self.faults.set_latency(seconds)

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """The request log (API requests only, oldest first)."""
        return self.faults.requests()

    def clear_requests(self) -> None:
        self.faults.clear_requests()

    @property
    def in_outage(self) -> bool:
        with self._lock:
            return self._started and self._httpd is None and not self._stopping.is_set()

    def begin_outage(self, seconds: float | None = None) -> None:
        """Refuse connections: close the listener and cut every connection and watch.

        With `seconds`, listening resumes on the same port after that long; otherwise call
        `end_outage()`.
        """
        self._reopen.cancel()
        with self._lock:
            httpd, self._httpd = self._httpd, None
            if httpd is not None:
                self._retired.append(httpd)
        if httpd is not None:
            self._close(httpd, abrupt=True, deadline=time.monotonic())
        if seconds is not None:
            self._reopen.schedule(seconds, self.end_outage)

    def end_outage(self) -> None:
        """Listen again on the same port (no-op if not in an outage or stopped)."""
        self._reopen.cancel()
        with self._lock:
            if self._httpd is None and self._started and not self._stopping.is_set():
                self._listen()

    # --- HTTP admin API -----------------------------------------------------------------

    def _admin(self, method: str, action: str, body: JSON) -> tuple[int, JSON, Callable[[], None] | None]:
        if method == "GET" and action == "state":
            return (
                200,
                {
                    "resourceVersion": self.store.resource_version,
                    "compactedResourceVersion": str(self.store.compacted_resource_version),
                    "watchers": self.store.watcher_count(),
                    "latency": self.faults.latency,
                    "tls": self.tls,
                },
                None,
            )
        if method == "GET" and action == "requests":
            return 200, {"items": [r.to_json() for r in self.requests]}, None
        if method == "DELETE" and action == "requests":
            self.clear_requests()
            return 200, {}, None
        if method != "POST":
            raise errors.method_not_allowed()
        if action == "compact":
            upto = body.get("resourceVersion")
            return 200, {"compactedResourceVersion": str(self.compact(upto))}, None
        if action == "bookmark":
            return 200, {"watchers": self.emit_bookmark()}, None
        if action == "drop-watches":
            return 200, {"dropped": self.drop_watches(abrupt=bool(body.get("abrupt")))}, None
        if action == "fail":
            self.fail_next(
                int(body.get("count", 1)),
                int(body.get("code", 500)),
                retry_after=body.get("retryAfter"),
                path_prefix=body.get("pathPrefix"),
                methods=body.get("methods"),
                watch_only=bool(body.get("watchOnly")),
            )
            return 200, {}, None
        if action == "latency":
            self.set_latency(float(body.get("seconds", 0)))
            return 200, {"latency": self.faults.latency}, None
        if action == "reset":
            self.clear_faults()
            return 200, {}, None
        if action == "outage":
            seconds = float(body.get("seconds", 0))
            if seconds <= 0:
                raise errors.bad_request("outage needs seconds > 0 (the admin API is down too)")
            # Start the outage only after this response has been written.
            return 200, {"seconds": seconds}, lambda: self.begin_outage(seconds)
        if action == "apply":
            return 200, self.apply(body), None
        if action == "load":
            loaded = self.load_manifests(str(body.get("manifests", "")))
            return 200, {"items": loaded}, None
        if action in ("rotate-token", "tokens", "write-serviceaccount"):
            if not self.tls:
                raise errors.bad_request(f"{action} needs a server started with TLS")
            return 200, self._admin_auth(action, body), None
        raise errors.path_not_found()

    def _admin_auth(self, action: str, body: JSON) -> JSON:
        if action == "rotate-token":
            grace = body.get("graceSeconds")
            try:
                rotated = self.rotate_service_account_tokens(
                    body.get("directory"), grace_seconds=None if grace is None else float(grace)
                )
            except KeyError as exc:
                raise errors.bad_request(str(exc.args[0])) from None
            return {"rotated": rotated}
        if action == "write-serviceaccount":
            directory, account = body.get("directory"), str(body.get("serviceAccount", ""))
            namespace, _, name = account.partition("/")
            if not directory or not namespace or not name:
                raise errors.bad_request("write-serviceaccount takes directory and serviceAccount NAMESPACE/NAME")
            return {"directory": str(self.write_service_account(directory, namespace, name))}
        # tokens: a bearer token for a user, or for a service account given as NAMESPACE/NAME.
        if body.get("serviceAccount"):
            namespace, _, name = str(body["serviceAccount"]).partition("/")
            return {"token": self.service_account_token(namespace, name)}
        if not body.get("user"):
            raise errors.bad_request("tokens takes user (and groups) or serviceAccount NAMESPACE/NAME")
        return {"token": self.issue_token(str(body["user"]), [str(g) for g in body.get("groups") or []])}


def _manifest_texts(source: str | Path | Iterable[str | Path]) -> list[str]:
    if isinstance(source, Path):
        return _read_path(source)
    if isinstance(source, str):
        single_line = "\n" not in source.strip()
        if single_line and source.strip() and Path(source).exists():
            return _read_path(Path(source))
        if single_line and ":" not in source:
            # No YAML object fits on one line without a colon: this was meant as a path.
            raise FileNotFoundError(f"manifest file not found: {source}")
        return [source]
    texts: list[str] = []
    for item in source:
        texts.extend(_manifest_texts(item))
    return texts


def _read_path(path: Path) -> list[str]:
    if path.is_dir():
        return [p.read_text() for p in sorted(path.iterdir()) if p.suffix in _MANIFEST_SUFFIXES]
    return [path.read_text()]
