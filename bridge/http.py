"""The operational HTTP endpoint: /healthz, /readyz and /metrics.

`/healthz` answers 200 while every loop thread of the bridge runs, and 500 naming the
ones that died, so the kubelet restarts a bridge that can no longer keep up. `/readyz`
answers 200 only once both sources have listed completely and DNS is bound, so a Service
in front of several bridges never routes DNS to one that would answer SERVFAIL; while not
ready it answers 503 and names what it is waiting for, one line each (the composition root
decides what counts: see `App.waiting_for`). Problems that do not stop this replica
answering DNS (high availability: a cluster id claimed by another cluster) are listed after
the status, one `warning:` line each, without changing it. `/metrics` is the Prometheus
text format. `pages` adds the operator's pages (`bridge.explain.routes`: /status, /explain),
served the same way; a page that fails answers 500 and is logged, never ends the server.
The port is bound by `start()`, not by the constructor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


POLL = 0.05  # how often the serving loop looks for `stop()`: what a stop waits at most


class HealthServer:
    def __init__(self, host: str, port: int, waiting_for: Callable[[], list[str]],
                 dead: Callable[[], Mapping[str, str]] = dict,
                 warnings: Callable[[], list[str]] = list,
                 pages: Mapping[str, Callable[[dict[str, list[str]]], tuple[int, str, bytes]]]
                 | None = None) -> None:
        """`waiting_for`: what readiness still waits for; `dead`: thread name -> why it
        died, for each loop thread that did; `warnings`: what /readyz adds to its status;
        `pages`: path -> handler of the query string's values, returning (status, content
        type, body)."""
        self._host, self._port = host, port
        self._waiting_for = waiting_for
        self._dead = dead
        self._warnings = warnings
        self.pages = dict(pages or {})
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The address bound (port 0 picks one); only once started."""
        if self._server is None:
            raise RuntimeError("not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        waiting_for = self._waiting_for
        dead = self._dead
        warnings = self._warnings
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                if path == "/healthz":
                    died = dead()
                    if died:
                        body = "".join(f"thread {name} died: {why}\n"
                                       for name, why in sorted(died.items())).encode()
                        self._send(500, body, "text/plain; charset=utf-8")
                    else:
                        self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    missing = waiting_for()
                    # One line each: an API server's refusal is a sentence of its own.
                    lines = ["not ready, waiting for:", *(f"- {m}" for m in missing)] if missing else ["ready"]
                    lines += [f"warning: {w}" for w in warnings()]
                    body = "".join(f"{line}\n" for line in lines).encode()
                    self._send(503 if missing else 200, body, "text/plain; charset=utf-8")
                elif path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path in pages:
                    try:
                        code, content_type, body = pages[path](parse_qs(query))
                    except Exception:
                        log.exception("http: %s failed", path)
                        code, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
                    self._send(code, body, content_type)
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http: " + format, *args)

        return Handler

    def start(self) -> None:
        """Bind and serve."""
        server = ThreadingHTTPServer((self._host, self._port), self._handler())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(POLL,), name="http",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the port (within about `POLL`); a no-op if not started."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1)
