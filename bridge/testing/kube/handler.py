"""HTTP routing and wire format: turns kube-apiserver REST requests into store calls.

Owns everything a client sees on the wire: URL layout (core `/api/v1/...` and group
`/apis/<group>/<version>/...`, cluster-wide and namespaced), verbs and their status codes,
query parameters, content negotiation (JSON, YAML request bodies, Table responses), Status
error bodies, and the chunked newline-delimited JSON of watches. The store decides; this
module only translates.

Every request runs on its own thread (ThreadingHTTPServer), so a long watch never blocks
other requests. A watch thread waits on its watcher's queue with a short timeout, which lets
it notice `timeoutSeconds`, a client that went away, and server shutdown promptly.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from bridge.testing.kube import discovery, errors, openapi, protobuf, reviews, tables
from bridge.testing.kube.errors import StatusError
from bridge.testing.kube.escalation import current_user
from bridge.testing.kube.faults import Faults, RequestRecord
from bridge.testing.kube.guard import OPEN_USER, Guard
from bridge.testing.kube.jsonvalue import load_yaml
from bridge.testing.kube.resources import ResourceType, by_path
from bridge.testing.kube.store import APPLY_PATCH, PATCH_TYPES, Store
from bridge.testing.kube.users import UserInfo
from bridge.testing.kube.watchers import ERROR, Watcher, WatchEvent

JSON = dict[str, Any]

log = logging.getLogger(__name__)

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_WATCH_POLL = 0.2  # how often an idle watch checks its deadline, its client and shutdown
_ENDPOINTS_WARNING = '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'


class StreamTracker:
    """Counts watch streams still writing, so a graceful stop can let them finish first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0

    def __enter__(self) -> None:
        with self._cond:
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)


@dataclass
class Backend:
    """What the request handler needs from the server that owns it."""

    store: Store
    faults: Faults
    stopping: threading.Event
    streams: StreamTracker
    address: Callable[[], str]
    # Returns (status, body, action to run once the response is written).
    admin: Callable[[str, str, JSON], tuple[int, JSON, Callable[[], None] | None]]
    guard: Guard = field(default_factory=lambda: Guard(None, None))


def parse_bool(name: str, value: str | None) -> bool:
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.bad_request(f'{name}: Invalid value: "{value}": strconv.ParseBool: parsing "{value}": invalid syntax')


def parse_int(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(
            f'{name}: Invalid value: "{value}": strconv.ParseInt: parsing "{value}": invalid syntax'
        ) from None


def table_version(accept: str) -> str | None:
    """The meta.k8s.io version of Table the client accepts, if it asked for Tables at all."""
    for clause in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in clause.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v", "v1")
    return None


def accepts_json(accept: str) -> bool:
    if not accept.strip():
        return True
    for clause in accept.split(","):
        media = clause.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*", "application/yaml"):
            return True
    return False


class KubeRequestHandler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, so it may serve many requests in turn."""

    protocol_version = "HTTP/1.1"
    backend: Backend  # set on a per-server subclass
    _record: RequestRecord | None = None  # the log entry of the request being served
    _user: UserInfo = OPEN_USER  # who the request being served acts as

    # --- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Like the apiserver, no `Server:` header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _mark(self, code: int) -> None:
        # Recorded before the response leaves, so a client that has read it sees it logged.
        if self._record is not None:
            self._record.status = code

    def _common_headers(self, content_type: str = "application/json") -> None:
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", content_type)
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", "fake-flowschema")
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", "fake-prioritylevel")

    def _send_json(
        self, code: int, body: Any, *, content_type: str = "application/json", extra: dict[str, str] | None = None
    ) -> None:
        if content_type == "application/json" and self._wants_yaml():
            data = yaml.safe_dump(body, sort_keys=False).encode()
            content_type = "application/yaml"
        else:
            data = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self._common_headers(content_type)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self._mark(code)
        self.end_headers()
        self.wfile.write(data)

    def _wants_yaml(self) -> bool:
        first = (self.headers.get("Accept") or "").split(",")[0].split(";")[0].strip().lower()
        return first == "application/yaml"

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        self._mark(code)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: StatusError) -> None:
        extra = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        self._send_json(error.code, error.to_status(), extra=extra)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _decode(self, raw: bytes) -> Any:
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if content_type == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(raw)
            except (protobuf.ProtobufError, UnicodeDecodeError) as exc:
                log.debug("protobuf body refused: %s", exc)
                raise errors.unsupported_media_type(content_type, ["application/json", "application/yaml"]) from None
        try:
            if content_type in ("application/yaml", "application/apply-patch+yaml"):
                return load_yaml(raw.decode() or "null")
            return json.loads(raw.decode() or "null")
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"error decoding request body: {exc}") from None

    # --- entry points --------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        backend = self.backend
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self._record = None
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        if path.startswith("/_admin/"):
            self._serve_admin(method, path[len("/_admin/") :], raw)
            return
        watch = query.get("watch", "") in _TRUE
        record = RequestRecord(
            method, path, query, Faults.now(), watch=watch, user_agent=self.headers.get("User-Agent", "")
        )
        self._record = record
        backend.faults.record(record)
        try:
            if backend.faults.latency:
                backend.faults.clock.sleep(backend.faults.latency, backend.stopping)
            self._user = backend.guard.admit(method, path, query, self.headers)
            record.user = self._user.name
            failure = backend.faults.take_failure(method, path, watch)
            if failure is not None:
                record.injected = True
                self._send_error(failure)
            else:
                acting = current_user.set(self._user)  # for RBAC escalation checks in the store
                try:
                    self._route(method, path, query, raw)
                finally:
                    current_user.reset(acting)
        except StatusError as exc:
            if record.status is not None:
                self.close_connection = True  # a response is already under way
                return
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer like a real server would
            log.exception("fake kube-apiserver failed on %s %s", method, self.path)
            if record.status is not None:
                # Too late for an error response (e.g. mid-watch): just drop the connection.
                self.close_connection = True
                return
            try:
                self._send_error(errors.internal_error(f"{type(exc).__name__}: {exc}"))
            except OSError:
                self.close_connection = True
        finally:
            self._record = None

    def _serve_admin(self, method: str, action: str, raw: bytes) -> None:
        try:
            body = json.loads(raw.decode() or "{}") if raw else {}
            if not isinstance(body, dict):
                raise errors.bad_request("admin requests take a JSON object")
            code, answer, after = self.backend.admin(method, action.strip("/"), body)
            self._send_json(code, answer)
            if after is not None:
                after()
        except StatusError as exc:
            self._send_error(exc)
        except (ValueError, TypeError) as exc:
            self._send_error(errors.bad_request(str(exc)))

    # --- routing -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes) -> None:
        segments = [s for s in path.split("/") if s]
        accept = self.headers.get("Accept", "")
        if path == "/version" or path == "/version/":
            self._send_json(200, discovery.SERVER_VERSION)
            return
        if path in ("/healthz", "/livez", "/readyz"):
            self._send_text(200, "ok")
            return
        if method == "GET" and path.rstrip("/") == "/openapi/v3":
            self._send_json(200, openapi.index())
            return
        if method == "GET" and path.startswith("/openapi/v3/"):
            document = openapi.lookup(path[len("/openapi/v3/") :])
            if document is None:
                self._send_text(404, "404 page not found\n")
            else:
                self._send_json(200, document)
            return
        if not segments or segments[0] not in ("api", "apis"):
            self._send_text(404, "404 page not found\n")
            return
        if method == "GET" and self._discovery(segments, accept):
            return
        if segments[0] == "api":
            if len(segments) < 3 or segments[1] != "v1":
                raise errors.path_not_found()
            group, version, rest = "", "v1", segments[2:]
        else:
            if len(segments) < 4:
                raise errors.path_not_found()
            group, version, rest = segments[1], segments[2], segments[3:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = by_path(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        rt = by_path(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise errors.path_not_found()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if rt.plural == "serviceaccounts" and subresource == "token" and name and namespace:
            if method != "POST":
                raise errors.method_not_allowed()
            answer = reviews.token_request(self.backend.guard, self.backend.store, namespace, name, self._decode(raw))
            self._send_json(201, answer)
            return
        if subresource is not None and (subresource != "status" or not rt.status_subresource):
            raise errors.path_not_found()
        if name is not None and rt.namespaced and namespace is None:
            raise errors.path_not_found()
        if name is None:
            self._collection(method, rt, namespace, query, raw, accept)
        else:
            self._item(method, rt, namespace, name, subresource, query, raw, accept)

    def _discovery(self, segments: list[str], accept: str) -> bool:
        aggregated = None
        if discovery.AGGREGATED_V2.split(";as=")[0] in accept.replace(" ", ""):
            aggregated = "v2"
        elif "v=v2beta1;as=APIGroupDiscoveryList" in accept.replace(" ", ""):
            aggregated = "v2beta1"
        if segments == ["api"]:
            if aggregated:
                ctype = discovery.AGGREGATED_V2 if aggregated == "v2" else discovery.AGGREGATED_V2BETA1
                self._send_json(200, discovery.aggregated(True, aggregated), content_type=ctype)
            else:
                self._send_json(200, discovery.api_versions(self.backend.address()))
            return True
        if segments == ["apis"]:
            if aggregated:
                ctype = discovery.AGGREGATED_V2 if aggregated == "v2" else discovery.AGGREGATED_V2BETA1
                self._send_json(200, discovery.aggregated(False, aggregated), content_type=ctype)
            else:
                self._send_json(200, discovery.api_group_list())
            return True
        if len(segments) == 2 and segments[0] == "api":
            found = discovery.api_resource_list("", segments[1])
        elif len(segments) == 2:
            found = discovery.api_group(segments[1])
        elif len(segments) == 3 and segments[0] == "apis":
            found = discovery.api_resource_list(segments[1], segments[2])
        else:
            return False
        if found is None:
            raise errors.path_not_found()
        self._send_json(200, found)
        return True

    def _headers_for(self, rt: ResourceType) -> dict[str, str] | None:
        return {"Warning": _ENDPOINTS_WARNING} if rt.plural == "endpoints" else None

    def _respond_object(self, code: int, rt: ResourceType, obj: JSON, query: dict[str, str], accept: str) -> None:
        version = table_version(accept)
        if version is not None:
            obj = tables.to_table(
                rt,
                [obj],
                {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                api_version=f"meta.k8s.io/{version}",
                include_object=query.get("includeObject", "Metadata"),
            )
        elif not accepts_json(accept):
            raise errors.not_acceptable(["application/json", "application/yaml"])
        self._send_json(code, obj, extra=self._headers_for(rt))

    def _collection(
        self, method: str, rt: ResourceType, namespace: str | None, query: dict[str, str], raw: bytes, accept: str
    ) -> None:
        store = self.backend.store
        if not rt.stored and method != "POST":
            raise errors.method_not_allowed()
        if method == "GET":
            if parse_bool("watch", query.get("watch")):
                self._watch(rt, namespace, query, accept)
                return
            listed = store.list(
                rt,
                namespace,
                label_selector=query.get("labelSelector"),
                field_selector=query.get("fieldSelector"),
                limit=parse_int("limit", query.get("limit")),
                continue_token=query.get("continue") or None,
                resource_version=query.get("resourceVersion"),
                resource_version_match=query.get("resourceVersionMatch") or None,
            )
            version = table_version(accept)
            if version is not None:
                listed = tables.to_table(
                    rt,
                    listed["items"],
                    listed["metadata"],
                    api_version=f"meta.k8s.io/{version}",
                    include_object=query.get("includeObject", "Metadata"),
                )
            elif not accepts_json(accept):
                raise errors.not_acceptable(["application/json", "application/yaml"])
            self._send_json(200, listed, extra=self._headers_for(rt))
        elif method == "POST" and not rt.stored:
            if rt.namespaced and namespace is None:
                raise errors.method_not_allowed()
            answer = reviews.create(self.backend.guard, rt, namespace, self._decode(raw), self._user)
            self._send_json(201, answer)
        elif method == "POST":
            if rt.namespaced and namespace is None:
                raise errors.method_not_allowed()
            created = store.create(rt, namespace, self._decode(raw), dry_run=query.get("dryRun") == "All")
            self._respond_object(201, rt, created, query, accept)
        elif method == "DELETE":
            if rt.namespaced and namespace is None:
                raise errors.method_not_allowed()
            deleted = store.delete_collection(
                rt, namespace, label_selector=query.get("labelSelector"), field_selector=query.get("fieldSelector")
            )
            self._send_json(200, deleted, extra=self._headers_for(rt))
        else:
            raise errors.method_not_allowed()

    def _item(
        self,
        method: str,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        subresource: str | None,
        query: dict[str, str],
        raw: bytes,
        accept: str,
    ) -> None:
        store = self.backend.store
        dry_run = query.get("dryRun") == "All"
        if not rt.stored:
            raise errors.method_not_allowed()
        if method == "GET":
            self._respond_object(200, rt, store.get(rt, namespace, name), query, accept)
        elif method == "PUT":
            obj, created = store.put(rt, namespace, name, self._decode(raw), subresource=subresource, dry_run=dry_run)
            self._respond_object(201 if created else 200, rt, obj, query, accept)
        elif method == "PATCH":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type not in PATCH_TYPES:
                raise errors.unsupported_media_type(content_type, list(PATCH_TYPES))
            if content_type == APPLY_PATCH:
                if not query.get("fieldManager"):
                    raise errors.StatusError(
                        422,
                        "Invalid",
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch",
                        {"group": "meta.k8s.io", "kind": "PatchOptions"},
                    )
                obj, created = store.server_side_apply(
                    rt, namespace, name, self._decode(raw), subresource=subresource, dry_run=dry_run
                )
                self._respond_object(201 if created else 200, rt, obj, query, accept)
                return
            obj = store.patch(
                rt, namespace, name, content_type, self._decode(raw), subresource=subresource, dry_run=dry_run
            )
            self._respond_object(200, rt, obj, query, accept)
        elif method == "DELETE" and subresource is None:
            options = self._decode(raw) if raw else {}
            if not isinstance(options, dict):
                raise errors.bad_request("DeleteOptions must be an object")
            dry_run = dry_run or options.get("dryRun") == ["All"]
            obj, finished = store.delete(
                rt, namespace, name, preconditions=options.get("preconditions"), dry_run=dry_run
            )
            if finished and not rt.returns_deleted_object:
                details: JSON = {"name": name}
                if rt.group:
                    details["group"] = rt.group
                details.update(kind=rt.plural, uid=obj["metadata"].get("uid", ""))
                self._send_json(
                    200,
                    {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details},
                    extra=self._headers_for(rt),
                )
            else:
                self._respond_object(200, rt, obj, query, accept)
        else:
            raise errors.method_not_allowed()

    # --- watch ---------------------------------------------------------------------------

    def _watch(self, rt: ResourceType, namespace: str | None, query: dict[str, str], accept: str) -> None:
        store = self.backend.store
        timeout = parse_int("timeoutSeconds", query.get("timeoutSeconds"))
        # From the request, before the watch is registered (what tests wait for).
        deadline = self.backend.faults.clock.now() + timeout if timeout else None
        send_initial = query.get("sendInitialEvents")
        watcher = store.watch(
            rt,
            namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            resource_version=query.get("resourceVersion"),
            allow_bookmarks=parse_bool("allowWatchBookmarks", query.get("allowWatchBookmarks")),
            send_initial_events=parse_bool("sendInitialEvents", send_initial) if send_initial else None,
        )
        try:
            with self.backend.streams:
                self.send_response(200)
                self._common_headers()
                for key, value in (self._headers_for(rt) or {}).items():
                    self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self._mark(200)
                self.end_headers()  # flushes: clients see the 200 before any event happens
                self._stream(watcher, deadline, table_version(accept), query.get("includeObject", "Metadata"))
        finally:
            store.unwatch(watcher)

    def _stream(self, watcher: Watcher, deadline: float | None, table: str | None, include: str) -> None:
        clock = self.backend.faults.clock
        first = True
        try:
            while True:
                wait = _WATCH_POLL
                if deadline is not None:
                    wait = max(0.0, min(wait, deadline - clock.now()))
                event = watcher.get(wait)
                if event is not None:
                    self._write_event(watcher, event, table, include, first)
                    first = first and event.type in ("BOOKMARK", ERROR)
                    continue
                if watcher.abrupt or watcher.finished:
                    break
                if self.backend.stopping.is_set():
                    watcher.close()
                    continue
                if deadline is not None and clock.now() >= deadline:
                    # A last bookmark lets the client resume from here without a relist.
                    self.backend.store.bookmark(watcher)
                    watcher.close()
                    deadline = None
                    continue
                if self._client_gone():
                    self.close_connection = True
                    return
            if watcher.abrupt:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _write_event(self, watcher: Watcher, event: WatchEvent, table: str | None, include: str, first: bool) -> None:
        obj = event.object
        if table is not None and event.type not in ("BOOKMARK", ERROR):
            obj = tables.to_table(
                watcher.rt,
                [obj],
                {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                api_version=f"meta.k8s.io/{table}",
                include_object=include,
                headers=first,
            )
        data = (json.dumps({"type": event.type, "object": obj}, separators=(",", ":")) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if isinstance(conn, ssl.SSLSocket):
                return (bool(readable) or conn.pending() > 0) and self._tls_closed(conn)
            if not readable:
                return False
            return conn.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    @staticmethod
    def _tls_closed(conn: ssl.SSLSocket) -> bool:
        # TLS cannot peek, and TLS 1.3 hides a close_notify among data records. A client may not
        # send anything else while a watch response is under way, so reading here is safe.
        timeout = conn.gettimeout()
        conn.settimeout(0.0)
        try:
            return conn.recv(1) == b""
        except ssl.SSLWantReadError:
            return False
        finally:
            conn.settimeout(timeout)
