"""In-cluster credentials: the service-account directory against a small HTTPS API server.

The server here is a stand-in for the parts of kube-apiserver these tests touch: TLS with
a certificate from its own CA (trustme), bearer tokens it accepts or answers 401 for, and
RBAC refusals as 403 with the Status body kube-apiserver sends
(staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go, forbidden():
`<resource> is forbidden: User "<user>" cannot <verb> resource "<resource>" in API group ""
at the cluster scope` or `... in the namespace "<ns>"`).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from bridge import config
from bridge.errors import ConfigError, Denied, Transient
from bridge.kube.client import SERVICES, KubeClient
from bridge.kube.objects import service_from_raw
from bridge.kube.watch import Reflector
from tests.conftest import eventually

USER = "system:serviceaccount:bridge:bridge"


class FakeAPIServer:
    """HTTPS; accepts the bearer tokens in `tokens`; `deny` refuses every authenticated
    request with a 403; `seen` records (method, path, authorization) of each request."""

    def __init__(self, ca: trustme.CA) -> None:
        self.tokens: set[str] = set()
        self.deny = False
        self.seen: list[tuple[str, str, str]] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, method: str = "GET") -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self.seen if r[0] == method]

    def stop(self) -> None:
        self.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Failure", "message": message, "reason": reason,
                                   "code": code})

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                url = urlsplit(self.path)
                with server._lock:
                    server.seen.append((method, url.path, auth))
                if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in server.tokens:
                    self._status(401, "Unauthorized", "Unauthorized")
                    return
                query = parse_qs(url.query)
                watching = query.get("watch") == ["true"]
                parts = url.path.strip("/").split("/")  # api v1 [namespaces ns] services
                namespace = parts[3] if len(parts) > 4 and parts[2] == "namespaces" else ""
                verb = {"POST": "create", "PUT": "update", "DELETE": "delete"}.get(
                    method, "watch" if watching else "list")
                if server.deny:
                    where = (f'in the namespace "{namespace}"' if namespace
                             else "at the cluster scope")
                    self._status(403, "Forbidden",
                                 f'{parts[-1] if not namespace else parts[4]} is forbidden: '
                                 f'User "{USER}" cannot {verb} resource "services" in API '
                                 f'group "" {where}')
                    return
                if method == "POST":
                    self._reply(201, json.loads(body))
                elif watching:
                    # One bookmark, then the watch stays open until the server stops.
                    event = {"type": "BOOKMARK", "object": {
                        "kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}}}
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()
                    server.closing.wait()
                    self.close_connection = True
                else:
                    self._reply(200, {"kind": "ServiceList", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": "7"}, "items": []})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

        return Handler


class KubeletMount:
    """A service-account directory laid out as the kubelet's atomic writer does: files are
    symlinks through `..data` to a timestamped directory, and an update swaps `..data`."""

    def __init__(self, root: Path, ca_pem: bytes) -> None:
        self.root = root
        self.generation = 0
        self.ca_pem = ca_pem

    def write(self, token: str, namespace: str = "bridge") -> None:
        self.generation += 1
        payload = self.root / f"..2025_01_01_00_00_0{self.generation}.000"
        payload.mkdir()
        (payload / "token").write_text(token)
        (payload / "ca.crt").write_bytes(self.ca_pem)
        (payload / "namespace").write_text(namespace)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(payload.name)
        os.replace(tmp, self.root / "..data")
        for name in ("token", "ca.crt", "namespace"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def server(ca):
    srv = FakeAPIServer(ca)
    yield srv
    srv.stop()


@pytest.fixture
def mount(tmp_path, ca):
    root = tmp_path / "serviceaccount"
    root.mkdir()
    m = KubeletMount(root, ca.cert_pem.bytes())
    return m


def in_cluster_settings(port: int, account_dir: Path, host: str = "127.0.0.1"):
    """Settings as a pod gets them: the API server from the kubelet's environment."""
    return config.build(
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)},
        flags={"kubernetes.service_account_dir": str(account_dir)}).kubernetes


def list_services(kube: KubeClient) -> dict:
    return kube.list_page(SERVICES, limit=500, cont=None)


def test_lists_over_https_verified_by_the_account_ca_with_its_token(server, mount):
    server.tokens = {"token-1"}
    mount.write("token-1")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    try:
        page = list_services(kube)
    finally:
        kube.close()
    assert page["kind"] == "ServiceList", page
    assert server.requests() == [("GET", "/api/v1/services", "Bearer token-1")], server.seen
    assert kube.namespace == "bridge", "the pod's namespace is read from the account directory"
    assert kube.access.problems() == []


def test_a_server_the_account_ca_did_not_sign_is_refused_before_the_token_is_sent(server, mount):
    server.tokens = {"token-1"}
    mount.write("token-1")
    mount.root.joinpath("ca.crt").resolve().write_bytes(trustme.CA().cert_pem.bytes())
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    try:
        with pytest.raises(Transient, match=r"(?i)certificate"):
            list_services(kube)
    finally:
        kube.close()
    assert server.seen == [], "no request may reach a server whose certificate did not verify"


def test_the_rotated_token_is_used_when_only_the_new_one_is_accepted(server, mount):
    server.tokens = {"token-1"}
    mount.write("token-1")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    try:
        list_services(kube)
        # The kubelet rotates; the API server stops accepting the old token at once.
        mount.write("token-2")
        server.tokens = {"token-2"}
        list_services(kube)
        mount.write("token-3")
        server.tokens = {"token-3"}
        list_services(kube)
    finally:
        kube.close()
    sent = [auth for _, _, auth in server.requests()]
    assert sent == ["Bearer token-1", "Bearer token-2", "Bearer token-3"], sent


def test_a_token_rewritten_in_place_is_reread(server, mount):
    server.tokens = {"aaaa"}
    mount.write("aaaa")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    try:
        list_services(kube)
        token = mount.root.joinpath("token").resolve()
        before = token.stat()
        token.write_text("bbbb")  # same size, same inode
        # A later write: the kernel's file clock is coarse (a tick), the test is not.
        os.utime(token, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        server.tokens = {"bbbb"}
        list_services(kube)
    finally:
        kube.close()
    assert [auth for _, _, auth in server.requests()] == ["Bearer aaaa", "Bearer bbbb"]


def test_a_token_no_longer_accepted_is_reported_once_and_cleared_by_rotation(server, mount, caplog):
    server.tokens = {"token-1"}
    mount.write("token-1")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    caplog.set_level(logging.INFO, logger="bridge")
    try:
        server.tokens = set()
        for _ in range(3):
            with pytest.raises(Denied, match="HTTP 401 Unauthorized"):
                list_services(kube)
        refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        line = refusals[0].getMessage()
        assert "list services in all namespaces" in line and "401" in line, line
        assert "token-1" not in caplog.text, "the token must never be logged"
        assert kube.access.problems() == [
            "kubernetes refused list services in all namespaces: HTTP 401: Unauthorized"]
        mount.write("token-2")
        server.tokens = {"token-2"}
        list_services(kube)
        assert kube.access.problems() == [], "a success clears the refusal"
        assert "kubernetes now allows list services in all namespaces" in caplog.text
    finally:
        kube.close()


def test_an_rbac_refusal_names_verb_resource_and_namespace_from_the_server_status(server, mount,
                                                                                    caplog):
    server.tokens = {"token-1"}
    server.deny = True
    mount.write("token-1")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    caplog.set_level(logging.INFO, logger="bridge")
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "billing",
                                                                "namespace": "consul"}}
    try:
        for _ in range(2):
            with pytest.raises(Denied, match="cannot create resource"):
                kube.write("create", "services", "consul", "billing", body)
            with pytest.raises(Denied):
                list_services(kube)
    finally:
        kube.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, f"one line per refused request, not per retry: {lines}"
    assert any(line.startswith("kubernetes refused create services in namespace consul: HTTP 403: "
                               f'services is forbidden: User "{USER}" cannot create resource')
               for line in lines), lines
    assert kube.access.problems() == [
        'kubernetes refused create services in namespace consul: HTTP 403: services is forbidden: '
        f'User "{USER}" cannot create resource "services" in API group "" in the namespace "consul"',
        'kubernetes refused list services in all namespaces: HTTP 403: services is forbidden: '
        f'User "{USER}" cannot list resource "services" in API group "" at the cluster scope',
    ]


def test_a_reflector_retries_a_refusal_without_logging_it_again(server, mount, caplog):
    server.tokens = {"token-1"}
    server.deny = True
    mount.write("token-1")
    kube = KubeClient(in_cluster_settings(server.port, mount.root))
    stop = threading.Event()
    caplog.set_level(logging.DEBUG, logger="bridge")
    reflector = Reflector(kube, SERVICES, service_from_raw, lambda: None, watch_timeout=5,
                          stop=stop)
    reflector.start()
    try:
        # Backoff from 0.2 s with full jitter: three tries take a few seconds at most.
        eventually(lambda: len(server.requests()) >= 3, timeout=30, what="three list attempts")
        assert not reflector.synced.is_set()
        assert len(kube.access.problems()) == 1, kube.access.problems()
        server.deny = False
        eventually(reflector.synced.is_set, timeout=30, what="the list after the rule is added")
        eventually(lambda: kube.access.problems() == [], what="the refusal cleared")
        loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1, f"the refusal is logged once, not per retry: {loud}"
    finally:
        stop.set()
        server.closing.set()
        reflector.thread.join(timeout=10)
        kube.close()


def test_the_process_environment_is_not_read_by_the_client(server, mount, monkeypatch):
    """The settings carry the API server; the client never consults os.environ itself."""
    server.tokens = {"token-1"}
    mount.write("token-1")
    settings = in_cluster_settings(server.port, mount.root)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "192.0.2.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")
    kube = KubeClient(settings)
    try:
        list_services(kube)
    finally:
        kube.close()
    assert len(server.requests()) == 1


def test_a_missing_token_is_a_setting_error(tmp_path):
    (tmp_path / "ca.crt").write_text("x")
    with pytest.raises(ConfigError) as info:
        KubeClient(in_cluster_settings(443, tmp_path))
    assert info.value.key == "kubernetes.service_account_dir"
    assert "token is missing or empty" in str(info.value)


def test_a_missing_service_port_is_a_setting_error(mount, ca):
    mount.write("token-1")
    settings = config.build(environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1"},
                            flags={"kubernetes.service_account_dir": str(mount.root)}).kubernetes
    with pytest.raises(ConfigError) as info:
        KubeClient(settings)
    assert info.value.key == "kubernetes.api_server"
    assert "KUBERNETES_SERVICE_PORT" in str(info.value)
