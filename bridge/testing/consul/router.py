"""URL routing with Go ServeMux semantics plus Consul's `wrap()` around every endpoint.

ServeMux rules: an exact pattern matches one path, a pattern ending in "/" matches a
subtree, the longest pattern wins, and a subtree root asked for without its slash is
redirected (301). Consul's wrapper then answers OPTIONS with `Allow`, rejects other
methods with 405 `method X not allowed`, adds `X-Consul-Default-ACL-Policy`, and maps
raised HTTPErrors to plain-text bodies. Unmatched paths go to Consul's Index handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bridge.testing.consul.context import Api
from bridge.testing.consul.errors import HTTPError, method_not_allowed
from bridge.testing.consul.protocol import Request, Response, empty_response, text_response

Handler = Callable[[Api, Request], Response]


@dataclass(frozen=True)
class Route:
    pattern: str
    methods: tuple[str, ...]
    handler: Handler


def route(pattern: str, *methods: str) -> Callable[[Handler], Route]:
    """Decorator turning a handler into a Route (kept next to the handler it names)."""

    def wrap(handler: Handler) -> Route:
        return Route(pattern, tuple(methods), handler)

    return wrap


class Router:
    def __init__(self, api: Api, routes: Iterable[Route]) -> None:
        self.api = api
        self.routes = {r.pattern: r for r in routes}

    def match(self, path: str) -> Route | None:
        best: Route | None = None
        for pattern, candidate in self.routes.items():
            hit = path == pattern if not pattern.endswith("/") else path.startswith(pattern)
            if hit and (best is None or len(pattern) > len(best.pattern)):
                best = candidate
        return best

    def dispatch(self, req: Request) -> Response:
        found = self.match(req.path)
        if found is None:
            if f"{req.path}/" in self.routes:
                return self._redirect(req, f"{req.path}/")
            return self._index(req)
        response = self._wrapped(found, req)
        response.set_header("X-Consul-Default-ACL-Policy", self.api.acl.default_policy)
        return response

    def _wrapped(self, found: Route, req: Request) -> Response:
        if req.method == "OPTIONS":
            response = empty_response()
            response.set_header("Allow", ",".join(["OPTIONS", *found.methods]))
            return response
        try:
            if req.method not in found.methods:
                raise method_not_allowed(req.method, list(found.methods))
            return found.handler(self.api, req)
        except HTTPError as exc:
            return text_response(exc.status, exc.body, exc.headers)

    @staticmethod
    def _redirect(req: Request, location: str) -> Response:
        if req.raw_query:
            location = f"{location}?{req.raw_query}"
        body = f'<a href="{location}">Moved Permanently</a>.\n\n' if req.method in ("GET", "HEAD") else ""
        response = text_response(301, body)
        if body:
            response.set_header("Content-Type", "text/html; charset=utf-8")
        response.set_header("Location", location)
        return response

    @staticmethod
    def _index(req: Request) -> Response:
        """Consul's `Index` handler for every path no endpoint claims."""
        if req.path != "/":
            if "/v1/" in req.path:
                return text_response(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
            return text_response(
                404, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
            )
        return text_response(
            200,
            "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart.",
        )
