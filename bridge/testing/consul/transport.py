"""HTTP/1.1 keep-alive transport on stdlib ThreadingHTTPServer, with outage and drop support.

One thread per connection (blocking queries hold theirs for minutes). The transport
knows every live connection so that an outage or shutdown can cut them all, and it can
close its listening socket and later listen again on the same port, which is what a
client sees when an agent restarts. Responses always carry Content-Length so
connections stay reusable; a handler raising Abort drops the connection with no reply.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bridge.testing.consul.errors import Abort
from bridge.testing.consul.protocol import Request, Response
from bridge.testing.consul.tls import handshake

App = Callable[[Request], Response]
_MAX_BODY = 64 * 1024 * 1024
# Consul's answer to a connection over `limits.http_max_conns_per_client` (agent/agent.go
# passes go-connlimit's HTTPConnStateFuncWithDefault429Handler): written on the new
# connection, which is then closed.
_TOO_MANY = b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
TOO_MANY_CONNECTIONS = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_TOO_MANY), _TOO_MANY))


class Connection:
    """A live client connection; `closed` becomes true once the transport cuts it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def cut(self) -> None:
        """Shut the socket down so both a blocked read and the peer notice at once."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], transport: Transport) -> None:
        self.transport = transport
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.transport.admit(client_address[0]):
            if self.transport.ssl_context is None:  # over TLS Consul's plain 429 is noise to the client
                with contextlib.suppress(OSError):
                    request.settimeout(0.01)
                    request.sendall(TOO_MANY_CONNECTIONS)
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), name="consul-fake-conn", daemon=True
        )
        self.transport.track_thread(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.transport.release(client_address[0])

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.transport.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        try:
            secured = handshake(context, request)
        except OSError:
            return  # not TLS, or (verify_incoming) no client certificate from our CA
        try:
            super().finish_request(secured, client_address)
        finally:
            with contextlib.suppress(OSError):
                secured.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Small request/response pairs on keep-alive connections stall on Nagle +
        # delayed ACK without this; Go's net/http sets it too.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_state = self.server.transport.register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.transport.unregister(self.conn_state)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log in faults.py is the record tests use

    def version_string(self) -> str:
        return "Consul"

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go sends Date but no Server header.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.raw_requestline or self.conn_state.closed:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Bad Request")
            self.close_connection = True
            return
        except OSError:
            self.close_connection = True
            return
        request = self._build_request(body)
        try:
            response = self.server.transport.app(request)
        except Abort:
            self.close_connection = True
            self.conn_state.cut()
            return
        if self.conn_state.closed:
            self.close_connection = True
            return
        try:
            self._write(response)
        except OSError:
            self.close_connection = True
        if response.on_sent is not None:
            response.on_sent()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > _MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _build_request(self, body: bytes) -> Request:
        target = self.path
        if not target.startswith("/"):
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        raw_path, _, raw_query = target.partition("?")
        return Request(
            method=self.command,
            path=unquote(raw_path),
            raw_query=raw_query,
            query=parse_qs(raw_query, keep_blank_values=True),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
            conn=self.conn_state,
        )

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        for key, value in response.headers:
            self.send_header(key, value)
        if response.status >= 200 and response.status not in (204, 304):
            self.send_header("Content-Length", str(len(response.body)))
        if not hasattr(self, "_headers_buffer"):  # HTTP/0.9: no headers at all
            self.wfile.write(response.body)
            return
        # Headers and body go out in one write (end_headers would flush them separately).
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD" and response.body:
            self._headers_buffer.append(response.body)
        self.flush_headers()


class Transport:
    """Owns the listener, the serving thread and every connection thread."""

    def __init__(self, host: str, port: int, app: App, ssl_context: ssl.SSLContext | None = None,
                 max_conns_per_client: int = 0) -> None:
        """`max_conns_per_client`: Consul's `limits.http_max_conns_per_client`, open
        connections from one IP address beyond which a new one gets a 429 and is closed
        (0: no limit)."""
        self.host = host
        self.port = port
        self.app = app
        self.ssl_context = ssl_context  # HTTPS when set (tls.py)
        self.max_conns_per_client = max_conns_per_client
        self._lock = threading.Lock()
        self._per_client: dict[str, int] = {}
        self.refused_connections = 0
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._connections: set[Connection] = set()
        self._threads: list[threading.Thread] = []

    def admit(self, client: str) -> bool:
        """Counts a new connection from `client`; False (not counted) if over the limit."""
        with self._lock:
            open_now = self._per_client.get(client, 0)
            if self.max_conns_per_client and open_now >= self.max_conns_per_client:
                self.refused_connections += 1
                return False
            self._per_client[client] = open_now + 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            left = self._per_client.get(client, 0) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen; with port 0 the chosen port is kept for later reopening."""
        server = _Server((self.host, self.port), self)
        self.port = server.server_port
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="consul-fake-http", daemon=True
        )
        with self._lock:
            self._server, self._serve_thread = server, thread
        thread.start()

    def close_listener(self) -> None:
        """Stop accepting (new connects are refused) and cut every open connection."""
        with self._lock:
            server, thread = self._server, self._serve_thread
            self._server = self._serve_thread = None
            connections = list(self._connections)
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(2.0)
        for connection in connections:
            connection.cut()

    def reopen(self) -> None:
        """Listen again on the same host and port."""
        self.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.close_listener()
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._server is not None

    # -- bookkeeping --------------------------------------------------------------

    def register(self, sock: socket.socket) -> Connection:
        connection = Connection(sock)
        with self._lock:
            self._connections.add(connection)
            listening = self._server is not None
        if not listening:
            connection.cut()
        return connection

    def unregister(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def track_thread(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
