"""Transport-neutral request and response values passed between the HTTP layer and endpoints.

The transport parses bytes into a Request and writes a Response back; endpoints never
touch sockets. The only transport state an endpoint sees is `Request.conn`, which a
blocking query polls (when woken) to notice that its connection was closed under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.testing.consul.wire import dumps


class ConnectionState(Protocol):
    """What endpoints may ask of the underlying connection."""

    @property
    def closed(self) -> bool: ...


class _Detached:
    closed = False


DETACHED: ConnectionState = _Detached()


@dataclass
class Request:
    method: str
    path: str
    raw_query: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: bytes = b""
    conn: ConnectionState = DETACHED

    def has(self, name: str) -> bool:
        """Whether a query parameter is present at all (Go: `_, ok := query[name]`)."""
        return name in self.query

    def get(self, name: str) -> str:
        """First value of a query parameter, "" when absent (Go: `query.Get(name)`)."""
        values = self.query.get(name)
        return values[0] if values else ""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Run by the transport once the response is on the wire (e.g. an outage that would
    # otherwise cut the connection carrying its own acknowledgement).
    on_sent: Callable[[], None] | None = None

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        self.headers.append((name, value))

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def json_response(req: Request, obj: Any, status: int = 200) -> Response:
    """A JSON body exactly as Consul's `marshalJSON` would write it (`?pretty` indents)."""
    body = dumps(obj, pretty=req.has("pretty"))
    return Response(status, body, [("Content-Type", "application/json")])


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    """A plain-text error body; Go's sniffing labels it text/plain; charset=utf-8."""
    response = Response(status, text.encode("utf-8"), list((headers or {}).items()))
    if text:
        response.set_header("Content-Type", "text/plain; charset=utf-8")
    return response


def empty_response(status: int = 200) -> Response:
    """Handlers that return (nil, nil) in Consul: status line, no body, no Content-Type."""
    return Response(status)
