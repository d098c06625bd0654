"""The operational HTTP endpoint: /healthz, /readyz and /metrics.

`/healthz` answers 200 while the process serves at all. `/readyz` answers 200 only once
both sources have listed completely and DNS is bound, so a Service in front of several
bridges never routes DNS to one that would answer SERVFAIL; while not ready it answers
503 and says what it is waiting for. `/metrics` is the Prometheus text format.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(self, host: str, port: int, waiting_for: Callable[[], list[str]]) -> None:
        self._waiting_for = waiting_for
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.address: tuple[str, int] = self._server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http",
                                        daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        waiting_for = self._waiting_for

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    missing = waiting_for()
                    if missing:
                        body = ("not ready: waiting for " + ", ".join(missing) + "\n").encode()
                        self._send(503, body, "text/plain; charset=utf-8")
                    else:
                        self._send(200, b"ready\n", "text/plain; charset=utf-8")
                elif path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
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
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
