"""The Consul source's blocking reads over aiohttp: many queries in flight on one event loop.

The synchronous client (client.py) holds a thread for every request it waits on, and a
blocking query waits for minutes: one thread per Consul service. Here every query is a
coroutine on the reader's loop (reader.py) and a connection of its own, so the threads stay
few however many services Consul holds. What the synchronous client promises, this keeps:
the same settings (address, datacenter, TLS and mTLS, `tls_server_name`), the token in the
X-Consul-Token header only (from the settings or from the client's login, replaced by a new
login when Consul answers `ACL not found`), errors made ours with the same words (a 403 or a
TLS refusal logged once and held in the client's `access` for readiness), nothing secret in
a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aiohttp
import yarl
from prometheus_client import Counter

from bridge.config import ConsulSettings, token
from bridge.consul.access import TLS
from bridge.consul.client import ConsulClient, TokenLost, retry_after, tls_refusal
from bridge.errors import Denied, Rejected, Throttled, Transient, Unavailable
from bridge.outage import Outage

R = TypeVar("R")
log = logging.getLogger(__name__)

# A blocking query is answered after at most wait + wait/16 (Consul's jitter); a read
# silent for longer than that and a margin is a connection that died unnoticed.
_READ_MARGIN = 15.0
_CONNECT_TIMEOUT = 10.0
# Reads without an index (each service's first, and after an index reset) answer at once:
# at most this many at a time, so thousands of services are not one burst of connections
# (a listen backlog overflows, Consul's connection limit per client trips). The blocking
# reads that follow reuse their connections and are not limited.
FIRST_READS = 32
# Consul's 429 for a connection over its `limits.http_max_conns_per_client` (go-connlimit).
CONNECTION_LIMIT = "too many concurrent connections"
# How long a query Consul refused a connection waits before it asks again: a refusal frees
# nothing, and thousands of queries retrying each second would only add to the storm.
CONNECTION_LIMIT_RETRY = 30.0

CONNECTIONS_REFUSED = Counter("bridge_consul_connections_refused_total",
                              "Consul blocking reads refused for the agent's connection limit per client")


def _ssl_context(settings: ConsulSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ca_cert or None)
    if not settings.ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert:
        context.load_cert_chain(settings.client_cert, settings.client_key or None)
    return context


class ConsulReads:
    """Blocking reads of the catalog, as coroutines; `open()` and `close()` on the loop."""

    def __init__(self, client: ConsulClient) -> None:
        settings = client.settings
        self._client = client
        self._settings = settings
        self._static_token = "" if client.credentials is not None else token(settings)
        self._base = settings.address.rstrip("/")
        self._https = urllib.parse.urlparse(settings.address).scheme == "https"
        self._wait = f"{settings.wait}s"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT,
                                              sock_read=settings.wait * 17 / 16 + _READ_MARGIN)
        self._session: aiohttp.ClientSession | None = None
        self._first_reads: asyncio.Semaphore | None = None
        self._limit_reported = False
        self._filtered: set[str] = set()  # reads Consul answered with results its ACLs hid
        # Consul's outage (bridge/outage.py), shared with every other call to Consul: its
        # calls block (the probe), so they run on a thread of their own, and only while
        # Consul is failing. Every query waits through an outage on that one thread.
        self._outage: Outage | None = getattr(client, "outage", None)
        self._outage_pool: ThreadPoolExecutor | None = None
        self._outage_wait: asyncio.Future[None] | None = None
        self._closing = threading.Event()
        # A login is a synchronous call (client.py): made on a thread of its own, rarely.
        self._login_pool: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        # One connection per query in flight, none refused for lack of a slot: a query that
        # queued for one would go unanswered for as long as another blocks (minutes).
        connector = aiohttp.TCPConnector(limit=0, ssl=_ssl_context(self._settings) if self._https else False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              auto_decompress=True, trust_env=False)
        self._first_reads = asyncio.Semaphore(FIRST_READS)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._login_pool is not None:
            self._login_pool.shutdown(wait=False, cancel_futures=True)
        self._closing.set()
        if self._outage_pool is not None:
            self._outage_pool.shutdown(wait=False, cancel_futures=True)

    async def pause(self, seconds: float) -> None:
        """A query's wait before it retries: `seconds`, and while Consul is in an outage
        until the outage lets requests go again (`Outage.pause`, which runs the probe). The
        queries share one such wait, so thousands of them cost one thread and no requests."""
        outage = self._outage
        if outage is None or not outage.failing:
            await asyncio.sleep(seconds)
            return
        if self._outage_wait is None or self._outage_wait.done():
            self._outage_wait = asyncio.get_running_loop().run_in_executor(
                self._outage_thread(), outage.pause, seconds, self._closing)
        await asyncio.shield(self._outage_wait)

    def _outage_thread(self) -> ThreadPoolExecutor:
        if self._outage_pool is None:
            self._outage_pool = ThreadPoolExecutor(1, thread_name_prefix="consul-outage")
        return self._outage_pool

    async def services(self, index: int | None, *, not_on_node: str = "") -> tuple[int, dict[str, list[str]]]:
        """Blocking read of every service name and its tags; with `not_on_node`, only the
        names that have an instance on some other node."""
        params = {"filter": f'Node != "{not_on_node}"'} if not_on_node else {}
        idx, data = await self._get("catalog services", "/v1/catalog/services", params, index)
        return idx, data or {}

    async def health_service(self, name: str, index: int | None) -> tuple[int, list[dict[str, Any]]]:
        """Blocking read of one service's instances with their checks (passing or not)."""
        path = "/v1/health/service/" + urllib.parse.quote(name, safe="")
        idx, data = await self._get(f"health service {name}", path, {}, index)
        return idx, data or []

    async def _get(self, what: str, path: str, params: dict[str, str], index: int | None) -> tuple[int, Any]:
        """GET with Consul's blocking-query parameters; with a login, a token Consul no
        longer knows is replaced by a new login and the read made again (as client.py)."""
        query = dict(params)
        if self._settings.datacenter:
            query["dc"] = self._settings.datacenter
        if self._settings.stale:
            query["stale"] = ""
        if self._settings.cached:
            query["cached"] = ""
        if index:
            query["index"] = str(index)
            query["wait"] = self._wait
        if index:
            return await self._get_token(what, path, query)
        assert self._first_reads is not None, "open() first"
        async with self._first_reads:
            return await self._get_token(what, path, query)

    async def _get_token(self, what: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        credentials = self._client.credentials
        if credentials is None:
            return await self._get_once(what, path, query, self._static_token)
        used = credentials.current() or await self._blocking(credentials.token)
        try:
            return await self._get_once(what, path, query, used)
        except TokenLost:
            return await self._get_once(what, path, query, await self._blocking(credentials.lost, used))

    async def _blocking(self, fn: Callable[..., R], *args: Any) -> R:
        if self._login_pool is None:
            self._login_pool = ThreadPoolExecutor(1, thread_name_prefix="consul-login")
        return await asyncio.get_running_loop().run_in_executor(self._login_pool, fn, *args)

    async def _get_once(self, what: str, path: str, query: dict[str, str], secret: str) -> tuple[int, Any]:
        assert self._session is not None, "open() first"
        url = self._base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"X-Consul-Token": secret} if secret else {}
        access = self._client.access
        kind = " ".join(what.split()[:2])
        outage = self._outage
        if outage is not None and outage.failing:  # refused unsent while parked
            await asyncio.get_running_loop().run_in_executor(self._outage_thread(), outage.admit)
        try:
            async with self._session.get(yarl.URL(url, encoded=True), headers=headers,
                                         server_hostname=self._settings.tls_server_name or None) as response:
                body = await response.text()
                status = response.status
                index_header = response.headers.get("X-Consul-Index")
                retry_header = response.headers.get("Retry-After")
                filtered = response.headers.get(FILTERED_HEADER) == "true"
        except aiohttp.ClientSSLError as exc:
            reason = tls_refusal(exc, self._settings)
            access.refused(TLS, reason)
            raise Denied(f"{what}: {reason}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The exception text quotes the URL; nothing of it is kept.
            unavailable = Unavailable(f"{what}: {type(exc).__name__}")
            if outage is not None:
                outage.failed(unavailable)
            raise unavailable from None
        text = body.replace(secret, "********") if secret else body
        if outage is not None:
            if status >= 500:
                outage.failed(Unavailable(f"{what}: {status} {text[:200].strip()}"))
            else:
                outage.succeeded()  # an answer, if not the one hoped for
        if status == 403:
            if "ACL not found" in text and self._client.credentials is not None:
                raise TokenLost(f"{what}: {text} (the token is unknown to Consul)")
            access.refused(kind, text)
            raise Denied(f"{what}: {text}")
        if status == 429 and CONNECTION_LIMIT in text:
            CONNECTIONS_REFUSED.inc()
            if not self._limit_reported:
                self._limit_reported = True
                log.error("consul refuses this bridge more connections (%s): the bridge holds one per "
                          "blocking query, one per Consul service; raise limits.http_max_conns_per_client "
                          "on the agent it talks to above the number of services plus 20. Refused "
                          "queries ask again every %.0fs", text.strip(), CONNECTION_LIMIT_RETRY)
            raise Throttled(f"{what}: {status} {text.strip()}", CONNECTION_LIMIT_RETRY)
        if status >= 500:
            raise Unavailable(f"{what}: {status} {text}", retry_after(retry_header))
        if status == 429:
            raise Transient(f"{what}: {status} {text}", retry_after(retry_header))
        if status != 200:
            raise Rejected(f"{what}: {status} {text}")
        try:
            value = json.loads(body)
            returned = int(index_header or "")
        except ValueError:
            raise Transient(f"{what}: bad response: no JSON body or no X-Consul-Index") from None
        access.allowed(TLS)
        access.allowed(kind)
        self._note_filtered(what, filtered)
        return returned, value

    def _note_filtered(self, what: str, filtered: bool) -> None:
        """Consul does not refuse a read our token may only partly see: it leaves out what
        the token cannot read and says so in a header. A bridge must see the whole catalog
        (both roles' policies grant every service and node read), so a partial view is
        held as a refusal (logged once, on /readyz) until every read is whole again."""
        if filtered:
            self._filtered.add(what)
            self._client.access.refused(FILTERED, FILTERED_REASON)
        elif self._filtered:
            self._filtered.discard(what)
            if not self._filtered:
                self._client.access.allowed(FILTERED)


FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
FILTERED = "catalog reads"
FILTERED_REASON = (f"results hidden by ACLs ({FILTERED_HEADER}: true): the token lacks read on some "
                   'services or nodes; the bridge needs service_prefix "" read and node_prefix "" read')
