"""The DNS transport: UDP and TCP listeners answering from the current `Table`.

Over our 600-line mark: the UDP and TCP loops share one per-query path (`_handle`: table,
cache, recursion check, autopath, forwarding) and its per-thread counters; the TCP
connection handling (the last third) is the candidate to move out next.

`DnsServer` serves the table of the catalog it was last given (`publish`) on the sockets
it binds in `start()` (`listeners.py`) or is handed by `workers.py`; questions outside our
zones are answered from the cache (`cache.py`) or go to the forwarder (`forwarder.py`) for
clients that may recurse (`recursion.py`), or are REFUSED when there is no upstream
(checklist 57).
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bridge.catalog.model import Catalog, ServiceKey
from bridge.config import DnsSettings, parse_hostport
from bridge.dns import listeners, metrics, slow_path, udp_batch
from bridge.dns.autopath import Autopath
from bridge.dns.cache import AnswerCache, cache_key
from bridge.dns.consul_domain import ConsulOptions
from bridge.dns.forward_zones import ForwardZones, zones_from
from bridge.dns.forwarder import MAX_IN_FLIGHT, Forwarder
from bridge.dns.loop import LoopGuard, new_token
from bridge.dns.metrics import Counts
from bridge.dns.packet import TCP_LIMIT, client_udp_limit, header_only
from bridge.dns.records import NOT_OURS, Rcode
from bridge.dns.recursion import ClientNetworks
from bridge.dns.respond import CHASE
from bridge.dns.table import Table
from bridge.dns.upstream import (
    Upstream,
    format_upstream,
    is_local_address,
    parse_upstream,
    read_resolv_conf,
    search_domains,
    upstreams_from,
)

UDP_BUFFER = 4096  # larger queries are not legitimate; a cut datagram parses as FORMERR
TCP_READ = 65536
TCP_MAX_PENDING = 1 << 20  # reply bytes queued for a client that does not read: then close
JOIN_TIMEOUT = 1.0

_ANSWERED, _DROPPED, _TRUNCATED, _ERRORS, _NANOS = metrics.ANSWERED, metrics.DROPPED, \
    metrics.TRUNCATED, metrics.ERRORS, metrics.NANOS
_RCODE_NAMES = {Rcode.NOERROR: "noerror", Rcode.FORMERR: "formerr",
                Rcode.SERVFAIL: "servfail", Rcode.NXDOMAIN: "nxdomain",
                Rcode.NOTIMP: "notimp", Rcode.REFUSED: "refused"}

# Called with (query packet, over TCP) for a question that is not ours: the reply, or None.
Outside = Callable[[bytes, bool], bytes | None]
T = TypeVar("T")
_now = time.perf_counter_ns
_DONTWAIT = socket.MSG_DONTWAIT
_UNASKED = object()  # `_handle`'s reply when the table has not been asked yet
_NXDOMAIN = int(Rcode.NXDOMAIN)
# Replies that do not end an autopath walk (CoreDNS: `plugin.ClientWrite` is false).
_WALK_ON = frozenset((int(Rcode.NXDOMAIN), int(Rcode.SERVFAIL), int(Rcode.REFUSED),
                      int(Rcode.FORMERR), int(Rcode.NOTIMP)))


class _Walk:
    """An autopath walk under way: the client's query, where its reply goes, what is left."""

    __slots__ = ("candidates", "client", "counted", "first", "packet", "peer", "started",
                 "table", "tcp")

    def __init__(self, table: Table, packet: bytes, first: bytes, tcp: bool, client: Any,
                 peer: Any, started: int, candidates: list[bytes]) -> None:
        self.table, self.packet, self.first, self.tcp = table, packet, first, tcp
        self.client, self.peer, self.started = client, peer, started
        self.candidates = candidates
        self.counted = False  # a TCP connection's pending reply counted


class _Connection:
    __slots__ = ("address", "closing", "events", "inbox", "last", "outbox", "pending", "sock")

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.last = time.monotonic()
        self.closing = False  # the client half-closed: finish writing, then close
        self.pending = 0  # forwarded queries whose reply has not come back yet
        self.events = selectors.EVENT_READ  # what the selector watches; 0 = unregistered


def _pick(override: T | None, setting: T) -> T:
    return setting if override is None else override


class DnsServer:
    """Serves the cluster zone (and the Consul domain) over UDP and TCP on one port.

    Settings: every field of `DnsSettings` but `workers` and the namespace filters is read
    here; constructor keywords override some of them for tests. `outside`, a synchronous
    handler, replaces the forwarder in tests. `loop_token` names the loop probes (shared by
    worker processes); `probe_loops` sends them at start (one process does).

    Threading model (who owns what):

    - The caller of `publish()` (the reconcile loop) makes the next `Table` from a `Catalog` in
      its own thread (`Table.update`: derived from the current table, re-encoding only the
      names of the services that changed; a full build when that does not pay), then assigns
      it to `self._table`: a single reference assignment, atomic under the GIL. The current
      table is never modified. Readers load `self._table` once per packet and never lock, so
      a packet is answered entirely from one table; an old table lives until its last reader
      drops it. One thread publishes at a time (`publish` is not reentrant).
    - One thread per UDP socket runs the hot loop: recvfrom -> `Table.respond` (header and
      question scan, one dict look-up, byte patching) -> sendto. Blocking sockets, no per-packet
      allocation beyond the reply. `recvfrom` and `sendto` release the GIL, so the loop
      overlaps with other threads' work while waiting. More readers would only contend for the
      GIL; scaling past one core means worker processes (`workers.py`). With the compiled
      fast path (`udp_batch.py`) the loop is a batch at a time instead: recvmmsg -> the
      table's fast path in C -> sendmmsg, the GIL released around the two system calls; the
      packets it hands back go through `_answer_udp`, the Python loop's steps.
    - One thread owns every TCP connection: a selector loop that accepts, reads 2-byte-framed
      queries (several per connection: our own answers in order, forwarded ones when they
      come back, as RFC 7766 allows), writes replies as the socket allows, and closes
      connections idle longer than `tcp_idle_timeout`.
    - Questions that are not ours, from clients in `dns.allow_recursion`: a fresh cached
      answer is given at once by the serving thread (`cache.py`); a query that is our own
      forwarded one come back gets SERVFAIL (`loop.py`); the rest goes to the forwarder
      (`forwarder.py`) with the zone group it routes to: the UDP/TCP loop hands the packet
      over and moves on; the forwarder thread sends the UDP reply itself (`sendto` on the
      listening socket is thread-safe), and queues a TCP reply for the TCP loop (a deque plus
      a byte on its wake-up socket pair), which frames it into that connection's outbox. A
      connection waiting for a forwarded reply is neither expired nor closed after a
      half-close until the reply is in. ExternalName targets outside our zones are chased the
      same way (`Table.chase_query`, `Table.chase_reply`).
    - Counters are per thread (`metrics.Counts`: each thread writes only its own), summed
      when `stats` or `metrics()` is read.
    - `stop()` clears `_serving`, wakes every loop (an empty datagram to each UDP socket, a
      byte on the TCP loop's wake-up socket pair), joins the threads and closes the sockets.

    Nothing a client sends can stop a loop: `Table.respond` does not raise for any input (a
    fuzz test checks it), and each loop still catches everything around it, counts it as an
    error and answers SERVFAIL when the header allows. Packets without a readable header, and
    responses (QR set), are dropped and counted.
    """

    def __init__(self, settings: DnsSettings, *, udp_payload: int | None = None,
                 tcp_idle_timeout: float | None = None, max_tcp_connections: int | None = None,
                 ns_addresses: Sequence[str] | None = None, outside: Outside | None = None,
                 upstreams: Sequence[str] | None = None, upstream_timeout: float | None = None,
                 pods: str | None = None, ignore_empty_service: bool | None = None,
                 consul_ttl: int | None = None, consul_datacenter: str | None = None,
                 consul_a_record_limit: int | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT, cache_clock: Callable[[], float] | None = None,
                 loop_token: str | None = None, probe_loops: bool = True) -> None:
        self.settings = settings
        self.host, self.port = parse_hostport(settings.listen)
        self.udp_payload = _pick(udp_payload, settings.udp_payload)
        self.tcp_idle_timeout = _pick(tcp_idle_timeout, settings.tcp_idle_timeout)
        self.max_tcp_connections = _pick(max_tcp_connections, settings.max_tcp_connections)
        self.upstream_timeout = _pick(upstream_timeout, settings.upstream_timeout)
        self.pods = _pick(pods, settings.pods)
        self.ignore_empty_service = _pick(ignore_empty_service, settings.ignore_empty_service)
        self.consul: ConsulOptions | None = None
        if settings.consul_domain:
            self.consul = ConsulOptions(
                settings.consul_domain,
                ttl=_pick(consul_ttl, settings.consul_ttl),
                datacenter=_pick(consul_datacenter, settings.consul_datacenter),
                a_record_limit=_pick(consul_a_record_limit, settings.consul_a_record_limit))
        if ns_addresses is None:
            # The apex NS glue and ns.dns.<zone> (43, 44) need an address clients can use:
            # the configured ones, else the listen address if it is one, else none.
            ns_addresses = settings.ns_addresses or (() if listeners.is_wildcard(self.host) else (self.host,))
        self.ns_addresses = tuple(ns_addresses)
        self._outside = outside
        self.upstreams: tuple[Upstream, ...] = ()  # the default ones: for `.`
        self.zones = ForwardZones({})
        if outside is None:
            configured = tuple(settings.upstreams if upstreams is None else upstreams)
            text = None if configured else read_resolv_conf(settings.resolv_conf)
            self.upstreams = upstreams_from(configured, text, self.host, self.port,
                                            is_local_address)
            per_zone = {zone: [parse_upstream(u) for u in listed]
                        for zone, listed in settings.forward_zones.items()}
            self.zones = ForwardZones(zones_from(per_zone, self.upstreams),
                                      settings.forward_policy)
        self.cache: AnswerCache | None = None
        if settings.cache_size > 0 and self.zones:
            self.cache = AnswerCache(settings.cache_size, serve_stale=settings.serve_stale,
                                     **({"clock": cache_clock} if cache_clock else {}))
        self.recursion = ClientNetworks(settings.allow_recursion)
        self.autopath: Autopath | None = None
        if settings.autopath:
            search = search_domains(read_resolv_conf(settings.resolv_conf) or "")
            self.autopath = Autopath(settings.zone, settings.autopath_namespace, search)
        # The packet handler the loops call: with autopath, one that walks the search path
        # after an NXDOMAIN (so the usual handler pays nothing for it).
        self._respond = self._handle if self.autopath is None else self._handle_autopath
        self.loops = LoopGuard(loop_token or new_token(), self.zones.zones)
        self._probe_loops = probe_loops
        self.max_in_flight = max_in_flight
        self._forwarder: Forwarder | None = None
        self._table = self._build(Catalog())  # not ready: SERVFAIL until the first publish
        self._serving = False
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._counters: list[Counts] = []
        self._relay = Counts("udp")  # forwarded UDP replies: written by the forwarder thread
        self._tcp_replies: collections.deque[tuple[_Connection, bytes | None, int]] = \
            collections.deque()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # --- publishing ---------------------------------------------------------------------

    def _build(self, catalog: Catalog) -> Table:
        return Table(catalog, self.settings.zone, self.settings.ttl,
                     ns_addresses=self.ns_addresses, udp_payload=self.udp_payload,
                     pods=self.pods, ignore_empty_service=self.ignore_empty_service,
                     consul=self.consul, forwarding=bool(self.zones),
                     rotate=self.settings.rotate)

    def publish(self, catalog: Catalog) -> Table:
        """Make the table for `catalog` in the caller's thread (derived from the current
        one, see `Table.update`), then swap it in atomically."""
        table = self.prepare(catalog)
        self.swap(table)
        return table

    def prepare(self, catalog: Catalog, changed: Sequence[ServiceKey] | None = None) -> Table:
        """The table for `catalog`, derived from the one served now; not served yet.
        `changed`: the keys that differ from the served catalog, if known."""
        return self._table.update(catalog, changed)

    def swap(self, table: Table) -> None:
        """Serve `table` from the next packet on (one reference assignment)."""
        self._table = table

    @property
    def table(self) -> Table:
        return self._table

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, sockets: tuple[list[socket.socket], list[socket.socket]] | None = None
              ) -> None:
        """Bind UDP and TCP on the same port (port 0: a free one) and start serving; or
        serve `sockets` (UDP, TCP listeners) bound elsewhere (`bind`), which other
        processes may serve too."""
        if self._serving:
            raise RuntimeError("already started")
        self._udp, self._tcp = self.bind() if sockets is None else sockets
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if self.zones and self._outside is None:
            self._forwarder = Forwarder(self.zones, timeout=self.upstream_timeout,
                                        max_in_flight=self.max_in_flight, cache=self.cache)
            self._forwarder.start()
            self._counters.append(self._relay)
        self._serving = True
        for sock in self._udp:
            counters = Counts("udp")
            self._counters.append(counters)
            self._spawn(self._serve_udp, sock, counters, f"dns-udp-{sock.getsockname()[1]}")
        counters = Counts("tcp")
        self._counters.append(counters)
        self._spawn(self._serve_tcp, self._tcp, counters, f"dns-tcp-{self.port}")
        if self._forwarder is not None and self._probe_loops:
            for _, query in self.loops.probe_queries():
                self._forwarder.submit(query, lambda _reply: None, bounded=False)

    def _spawn(self, target: Callable[..., None], sock: object, counters: Counts,
               name: str) -> None:
        # Daemon threads: a wedged loop must never keep the process from exiting.
        thread = threading.Thread(target=target, args=(sock, counters), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def bind(self) -> tuple[list[socket.socket], list[socket.socket]]:
        """New UDP and TCP sockets (listening) for the settings' address; `port` is set."""
        bound = listeners.bind(self.host, self.port)
        self.port = bound.port
        return bound.udp, bound.tcp

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound socket; UDP and TCP share each pair."""
        return listeners.addresses_of(self._udp + self._tcp)

    def stop(self) -> None:
        """Stop serving: wake and join every thread (within about a second), close sockets."""
        if not self._serving:
            return
        self._serving = False
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        for sock in self._udp:
            listeners.wake_udp(sock)
        self._wake_tcp()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in [*self._udp, *self._tcp]:
            sock.close()
        for pair in (self._wake_r, self._wake_w):
            if pair is not None:
                pair.close()
        self._threads.clear()
        self._udp, self._tcp = [], []

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def stats(self) -> dict[str, int]:
        """Counters summed over the serving threads (a consistent-enough snapshot)."""
        got = metrics.report(self._counters)
        totals = got.totals
        out = {"queries": sum(got.requests.values()), "answered": totals[_ANSWERED],
               "dropped": totals[_DROPPED], "truncated": totals[_TRUNCATED],
               "errors": totals[_ERRORS], "tcp_connections": totals[metrics.CONNECTIONS],
               "forwarded": totals[metrics.FORWARDED]}
        for code, name in _RCODE_NAMES.items():
            out[name] = got.responses.get(metrics.RCODES[code], 0)
        return out

    def metrics(self) -> metrics.Report:
        """Every count of this server: serving threads, forwarder, cache."""
        got = metrics.report(self._counters)
        forwarder = self._forwarder
        if forwarder is not None:
            got.stale = forwarder.stats["stale"]
            got.upstreams = {format_upstream(to): list(pair)
                             for to, pair in list(forwarder.upstream_counts.items())}
        got.totals[metrics.LOOPS] = self.loops.count
        if self.cache is not None:
            got.entries = self.cache.counts()
        return got

    # --- handling one packet -------------------------------------------------------------

    def _handle(self, packet: bytes, tcp: bool, counters: Counts, client: Any,
                peer: Any, started: int, reply: Any = _UNASKED) -> bytes | None:
        """The reply to send now, or None (dropped, or answered later by the forwarder).

        `client` and `peer` say where a later reply goes: (UDP socket, address), or
        (TCP connection, None). `started`: when the packet arrived (ns). `reply`: what the
        table said already, if the caller asked it. Never raises.
        """
        table = self._table
        try:
            if reply is _UNASKED:
                reply = table.respond(packet, tcp)
            if type(reply) is bytes:
                return reply
            if reply is NOT_OURS:
                if self._outside is not None:
                    reply = self._outside(packet, tcp)
                elif self._forwarder is not None:
                    return self._recurse(table, packet, tcp, counters, client, peer, started)
                else:
                    reply = table.refuse(packet, tcp)
            elif reply is CHASE:
                query = None
                if self._forwarder is not None and \
                        self._may_recurse(tcp, client, peer, counters):
                    query = table.chase_query(packet)
                if query is None:
                    reply = table.respond_slow(packet, tcp)  # the CNAME chain alone
                else:
                    return self._forward(table, packet, tcp, counters, client, peer, started,
                                         query)
        except Exception:
            counters.n[_ERRORS] += 1
            reply = header_only(packet, Rcode.SERVFAIL)
        if type(reply) is not bytes:
            counters.n[_DROPPED] += 1
            return None
        return reply

    # --- autopath -------------------------------------------------------------------------

    def _handle_autopath(self, packet: bytes, tcp: bool, counters: Counts, client: Any,
                         peer: Any, started: int, reply: Any = _UNASKED) -> bytes | None:
        """`_handle`, then for an NXDOMAIN of a search expansion the autopath walk."""
        reply = self._handle(packet, tcp, counters, client, peer, started, reply)
        if reply is None or len(reply) < 4 or reply[3] & 0xF != _NXDOMAIN:
            return reply
        autopath = self.autopath
        assert autopath is not None
        table = self._table
        try:
            address = client.address if tcp else peer
            namespace = autopath.namespace_of(table.answerer.index, address[0])
            candidates = autopath.candidates(packet, namespace) if namespace else None
            if not candidates:
                return reply
            return self._walk(_Walk(table, packet, reply, tcp, client, peer, started,
                                    candidates), counters)
        except Exception:
            counters.n[_ERRORS] += 1
            return reply

    def _walk(self, walk: _Walk, counters: Counts) -> bytes | None:
        """Try the walk's next candidates: the reply to send (a CNAME to what was found,
        or the first NXDOMAIN), or None while a candidate is asked upstream."""
        table, tcp = walk.table, walk.tcp
        while walk.candidates:
            query = walk.candidates.pop(0)
            got = table.respond(query, tcp)
            if got is NOT_OURS:
                got = self._outside_answer(walk, query, counters)
                if got is None:
                    return None  # asked upstream: `_walked` goes on
            if type(got) is not bytes or len(got) < 4:
                return walk.first  # a name to chase, or nothing to say: the client walks on
            if got[3] & 0xF in _WALK_ON:
                continue
            limit = TCP_LIMIT if tcp else client_udp_limit(walk.packet)
            found = slow_path.cnamed(walk.packet, got, limit)
            if found is None:
                return walk.first
            counters.n[metrics.AUTOPATH] += 1
            return found
        return walk.first

    def _outside_answer(self, walk: _Walk, query: bytes, counters: Counts) -> bytes | None:
        """A candidate outside our zones: from the cache, else asked upstream (None: the
        walk goes on in `_walked`); b"" (the walk ends) when the client may not recurse or
        nothing can be asked."""
        forwarder = self._forwarder
        if forwarder is None or not self._may_recurse(walk.tcp, walk.client, walk.peer,
                                                      counters):
            return b""
        key = cache_key(query)
        if key is not None and self.cache is not None:
            entry = self.cache.get(key, TCP_LIMIT)
            if entry is not None:
                return self.cache.reply(entry, query, key)
        group = forwarder.zones.route(query)
        if group is None or not forwarder.submit(
                query, lambda reply: self._walked(walk, reply), group=group, key=key):
            return b""  # nothing to ask: the walk ends with the first reply
        if walk.tcp and not walk.counted:
            walk.client.pending += 1
            walk.counted = True
        return None

    def _walked(self, walk: _Walk, upstream: bytes | None) -> None:
        """An upstream reply for a walk's candidate, on the forwarder thread."""
        relay = self._relay  # the forwarder thread's own counts
        reply: bytes | None = walk.first
        try:
            if upstream is not None and upstream[3] & 0xF not in _WALK_ON:
                limit = TCP_LIMIT if walk.tcp else client_udp_limit(walk.packet)
                reply = slow_path.cnamed(walk.packet, upstream, limit) or walk.first
                if reply is not walk.first:
                    relay.n[metrics.AUTOPATH] += 1
            else:
                reply = self._walk(walk, relay)
                if reply is None:
                    return  # asked upstream again
        except Exception:
            relay.n[_ERRORS] += 1
        self._deliver(reply, walk.tcp, walk.client, walk.peer, walk.started)

    def _may_recurse(self, tcp: bool, client: Any, peer: Any, counters: Counts) -> bool:
        address = client.address if tcp else peer
        if address is not None and self.recursion.allows(address[0]):
            return True
        counters.n[metrics.NOT_RECURSIVE] += 1
        return False

    def _recurse(self, table: Table, packet: bytes, tcp: bool, counters: Counts, client: Any,
                 peer: Any, started: int) -> bytes | None:
        """A name outside our zones: REFUSED for a client that may not recurse, a cached
        answer, SERVFAIL for our own query come back, else forwarded to its zone's group."""
        if not self._may_recurse(tcp, client, peer, counters):
            return table.refuse(packet, tcp)
        forwarder = self._forwarder
        assert forwarder is not None
        key = cache_key(packet)
        cache = self.cache
        if key is not None and cache is not None:
            entry = cache.get(key, TCP_LIMIT if tcp else client_udp_limit(packet))
            if entry is not None:
                counters.n[metrics.DENIAL_HITS if entry.negative else metrics.HITS] += 1
                return cache.reply(entry, packet, key)
            counters.n[metrics.MISSES] += 1
        if self.loops.came_back(packet, forwarder.sent):
            self.loops.report(packet, client.address if tcp else peer)
            return table.servfail(packet, tcp)
        group = forwarder.zones.route(packet)
        if group is None:
            return table.refuse(packet, tcp)  # no zone takes it and there is no `.`
        return self._forward(table, packet, tcp, counters, client, peer, started, None,
                             key=key)

    def _forward(self, table: Table, packet: bytes, tcp: bool, counters: Counts,
                 client: Any, peer: Any, started: int, chase: bytes | None, *,
                 key: bytes | None = None) -> bytes | None:
        """Hand `packet` (or, for an ExternalName, `chase`) to the forwarder (57, 27, 28)."""
        forwarder = self._forwarder
        assert forwarder is not None

        def done(upstream: bytes | None) -> None:  # on the forwarder thread
            if chase is not None:
                reply = table.chase_reply(packet, tcp, upstream)
            elif upstream is None:
                reply = table.servfail(packet, tcp)
            else:
                reply = upstream  # untouched apart from the ID (the forwarder restored it)
            self._deliver(reply, tcp, client, peer, started)

        fit = TCP_LIMIT if tcp or chase is not None else client_udp_limit(packet)
        sent = chase if chase is not None else packet
        if not forwarder.submit(sent, done, fit=fit,
                                key=key if chase is None else cache_key(sent)):
            return table.servfail(packet, tcp)  # too many in flight
        counters.n[metrics.FORWARDED] += 1
        if tcp:
            client.pending += 1
        return None

    def _deliver(self, reply: bytes | None, tcp: bool, client: Any, peer: Any,
                 started: int) -> None:
        """A forwarded reply, on the forwarder thread: send it (UDP) or queue it (TCP)."""
        if tcp:
            self._tcp_replies.append((client, reply, started))
            self._wake_tcp()
            return
        if reply is None:
            self._relay.n[_DROPPED] += 1
            return
        try:
            client.sendto(reply, peer)
        except OSError:
            self._relay.n[_DROPPED] += 1
            return
        self._relay.sent(reply, started, _now())

    def _wake_tcp(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # a full pair: the loop is awake anyway
                self._wake_w.send(b"x")

    # --- UDP ------------------------------------------------------------------------------

    def _serve_udp(self, sock: socket.socket, counters: Counts) -> None:
        batch = udp_batch.batcher(sock) if self.settings.compiled else None
        if batch is not None:
            self._serve_udp_batches(sock, counters, batch)
            return
        recvfrom, sendto, handle, now = sock.recvfrom, sock.sendto, self._respond, _now
        n, rcodes, qtypes, spans = counters.n, counters.rcodes, counters.qtypes, counters.spans
        nanos = _NANOS  # a local: the quickest name to read
        autopath = self.autopath is not None
        while self._serving:
            try:
                packet, peer = recvfrom(UDP_BUFFER)
            except OSError:
                if not self._serving:
                    break
                n[_ERRORS] += 1  # e.g. ICMP errors reported on the socket; keep serving
                continue
            # A batch: this datagram and every one queued behind it, timed as a whole (two
            # clock reads per batch, not per query; the compiled path times its batches so).
            started = now()
            sent = 0
            while packet:  # empty: stop()'s wake-up, or an empty datagram: nothing to answer
                # The usual answer without a call of `_handle`; anything else, and a raise,
                # go through it. The table counts the qtype (it reads it anyway).
                reply: Any
                try:
                    reply = self._table.respond(packet, False, qtypes)
                except Exception:
                    reply = _UNASKED
                if type(reply) is not bytes or autopath:
                    reply = handle(packet, False, counters, sock, peer, started, reply)
                if reply is not None:
                    try:
                        sendto(reply, peer)
                    except OSError:
                        n[_DROPPED] += 1
                    else:
                        rcodes[reply[3] & 0xF] += 1
                        if reply[2] & 0x02:
                            n[_TRUNCATED] += 1
                        sent += 1
                try:
                    packet, peer = recvfrom(UDP_BUFFER, _DONTWAIT)
                except BlockingIOError:
                    break  # nothing queued: count, then wait
                except OSError:
                    n[_ERRORS] += 1
                    break
            if sent:
                took = now() - started
                spans[took.bit_length()] += sent
                n[nanos] += took * sent

    def _serve_udp_batches(self, sock: socket.socket, counters: Counts,
                           batch: udp_batch.Batcher) -> None:
        """`_serve_udp` with the compiled fast path (`udp_batch.py`): it answers what the
        table's fast path would, and hands the rest back to be answered here."""
        serve, n, autopath = batch.serve, counters.n, self.autopath is not None
        qtypes, rcodes, spans = counters.qtypes, counters.rcodes, counters.spans
        while self._serving:
            try:
                rest = serve(self, qtypes, rcodes, n, spans, autopath)  # reads `_table` after the wait
            except OSError:
                if not self._serving:
                    break
                n[_ERRORS] += 1
                continue
            for packet, peer in rest:
                self._answer_udp(sock, counters, packet, peer)

    def _answer_udp(self, sock: socket.socket, counters: Counts, packet: bytes,
                    peer: Any) -> None:
        """One UDP query, answered and counted as `_serve_udp`'s loop does."""
        started = _now()
        counters.asked(packet)
        reply = self._respond(packet, False, counters, sock, peer, started)
        if reply is None:
            return
        try:
            sock.sendto(reply, peer)
        except OSError:
            counters.n[_DROPPED] += 1
            return
        counters.sent(reply, started, _now())

    # --- TCP ------------------------------------------------------------------------------

    def _serve_tcp(self, listeners: list[socket.socket], counters: Counts) -> None:
        selector = selectors.DefaultSelector()
        for listener in listeners:
            selector.register(listener, selectors.EVENT_READ, None)
        assert self._wake_r is not None
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        connections: dict[socket.socket, _Connection] = {}
        try:
            while self._serving:
                try:
                    events = selector.select(timeout=min(1.0, self.tcp_idle_timeout / 2))
                except OSError:
                    counters.n[_ERRORS] += 1
                    continue
                for key, mask in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        if sock is self._wake_r:
                            with contextlib.suppress(OSError):
                                sock.recv(4096)
                        elif key.data is None:
                            self._accept(sock, selector, connections, counters)
                        else:
                            self._service(key.data, mask, selector, connections, counters)
                    except Exception:
                        counters.n[_ERRORS] += 1
                        if key.data is not None:
                            self._close(key.data, selector, connections)
                self._relayed(selector, connections, counters)
                self._expire(selector, connections)
        finally:
            for connection in list(connections.values()):
                self._close(connection, selector, connections)
            selector.close()

    def _relayed(self, selector: selectors.BaseSelector,
                 connections: dict[socket.socket, _Connection], counters: Counts) -> None:
        """Put the forwarder's replies into their connections' outboxes."""
        while self._tcp_replies:
            connection, reply, started = self._tcp_replies.popleft()
            connection.pending -= 1
            if connection.sock not in connections:
                continue  # closed meanwhile
            if reply is None:
                counters.n[_DROPPED] += 1
            else:
                connection.outbox += len(reply).to_bytes(2, "big") + reply
                connection.last = time.monotonic()
                counters.sent(reply, started, _now())
            try:
                self._flush(connection, selector, connections)
            except Exception:
                counters.n[_ERRORS] += 1
                self._close(connection, selector, connections)

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection], counters: Counts) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                counters.n[_ERRORS] += 1  # e.g. out of file descriptors: try later
                return
            counters.n[metrics.CONNECTIONS] += 1
            if len(connections) >= self.max_tcp_connections:
                counters.n[_DROPPED] += 1
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock, address)
            connections[sock] = connection
            selector.register(sock, selectors.EVENT_READ, connection)

    def _service(self, connection: _Connection, mask: int, selector: selectors.BaseSelector,
                 connections: dict[socket.socket, _Connection], counters: Counts) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = connection.sock.recv(TCP_READ)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                connection.closing = True
            elif data:
                connection.last = time.monotonic()
                connection.inbox += data
                self._answer_frames(connection, counters)
        self._flush(connection, selector, connections)

    def _answer_frames(self, connection: _Connection, counters: Counts) -> None:
        inbox = connection.inbox
        while len(inbox) >= 2:
            size = (inbox[0] << 8) | inbox[1]
            if len(inbox) < 2 + size:
                break
            packet = bytes(inbox[2:2 + size])
            del inbox[:2 + size]
            started = _now()
            counters.asked(packet)
            reply = self._respond(packet, True, counters, connection, None, started)
            if reply is None:
                continue
            connection.outbox += len(reply).to_bytes(2, "big") + reply
            counters.sent(reply, started, _now())

    def _flush(self, connection: _Connection, selector: selectors.BaseSelector,
               connections: dict[socket.socket, _Connection]) -> None:
        if connection.outbox:
            try:
                sent = connection.sock.send(connection.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(connection, selector, connections)
                return
            del connection.outbox[:sent]
            if len(connection.outbox) > TCP_MAX_PENDING:
                self._close(connection, selector, connections)
                return
        if connection.closing and not connection.outbox and not connection.pending:
            self._close(connection, selector, connections)
            return
        want = (0 if connection.closing else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if connection.outbox else 0)
        if want == connection.events:
            return
        if not want:
            selector.unregister(connection.sock)  # half-closed, waiting for the forwarder
        elif not connection.events:
            selector.register(connection.sock, want, connection)
        else:
            selector.modify(connection.sock, want, connection)
        connection.events = want

    def _expire(self, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection]) -> None:
        cutoff = time.monotonic() - self.tcp_idle_timeout
        for connection in [c for c in connections.values()
                           if c.last < cutoff and not c.pending]:
            self._close(connection, selector, connections)

    @staticmethod
    def _close(connection: _Connection, selector: selectors.BaseSelector,
               connections: dict[socket.socket, _Connection]) -> None:
        connections.pop(connection.sock, None)
        if connection.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(connection.sock)
            connection.events = 0
        with contextlib.suppress(OSError):
            connection.sock.close()
