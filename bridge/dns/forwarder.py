"""Queries outside our zones sent to upstream servers, on a thread of its own (`Forwarder`).

The serving threads hand a query over (`submit`) with the zone group it routes to
(`forward_zones.py`); the forwarder thread sends it to the group's upstreams, joins
identical questions already in flight to the one upstream query, keeps what may be kept
(`cache.py`), and hands each reply back. When every upstream fails, a stale cached answer
is given if there is one, else nothing (the server answers SERVFAIL).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.dns.cache import AnswerCache
from bridge.dns.forward_zones import ForwardZones, Group, Health, Upstream
from bridge.dns.packet import HEADER, question_end

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 1024
MAX_REPLY = 65535
PROBE_INTERVAL = 0.5  # CoreDNS forward: health_check 0.5s
# The health probe CoreDNS's forward sends: `. IN NS`, recursion not desired.
_PROBE_QUESTION = HEADER.pack(0, 1, 0, 0, 0) + b"\x00\x00\x02\x00\x01"
_SERVFAIL, _REFUSED = 2, 5
Done = Callable[[bytes | None], None]


@dataclass(eq=False, slots=True)
class _Waiter:
    packet: bytes  # the client's query: its ID and question spelling go into the reply
    fit: int  # the largest reply it takes
    done: Done
    bounded: bool = True  # holds one of the `max_in_flight` places


@dataclass(eq=False)
class _Query:
    """One upstream exchange, and every client query waiting for it."""

    packet: bytes  # as sent upstream: our ID
    question: bytes  # lower case, for matching replies
    key: bytes | None  # the cache key: identical questions join this exchange
    group: Group | None  # None: a health probe
    waiters: list[_Waiter]
    deadline: float = 0.0
    attempts_left: list[Health] = field(default_factory=list)
    step: float = 0.0
    sockets: dict[socket.socket, tuple[Health, float]] = field(default_factory=dict)
    truncated: bytes | None = None  # a UDP reply with TC, while TCP is tried
    tcp: socket.socket | None = None
    tcp_out: bytes = b""
    tcp_in: bytearray = field(default_factory=bytearray)
    finished: bool = False


class Forwarder:
    """Forwards queries to upstream servers on its own thread.

    One thread runs a selector over every exchange in flight, so a slow or dead upstream
    never holds up the UDP and TCP loops, which only hand the packet over (`submit`, a
    deque append and a wake-up byte). The client queries waiting are bounded; past the
    bound `submit` says no and the caller answers SERVFAIL. For each exchange:

    - a query whose cache key (question, RD, CD, EDNS, DO) matches an exchange in flight
      waits for that one: concurrent identical misses make one upstream query.
    - the first client's packet is sent unchanged apart from a fresh random ID, from a new
      connected UDP socket (a random source port: a spoofed reply must guess both), to the
      group's first upstream (`Group.order`: healthy ones first, by the policy); if no reply
      has come after `timeout / max(2, n)` it is also sent to the next (with one upstream:
      sent again), and the first valid reply wins. A reply is valid when it comes from the
      socket's peer, has QR, our ID and the question we asked.
    - an ICMP "port unreachable" (ECONNREFUSED on the connected socket) moves on to the next
      upstream at once; when every attempt has failed, or `timeout` has passed, the answer is
      a stale cached one if any (`AnswerCache.stale`), else None (the server replies
      SERVFAIL). An upstream SERVFAIL or REFUSED is passed on unless a stale answer exists.
    - health: an upstream that replies is up; one that refused, or was asked and had its
      whole turn (`timeout / n`) without replying, failed once; `MAX_FAILS` in a row and it
      is down (tried after the others) and probed every `PROBE_INTERVAL` with `. NS` until it
      answers.
    - a reply with TC is retried over TCP to the upstream that sent it (same deadline again);
      each client gets the TCP reply if it fits its size limit, else the truncated UDP reply,
      so it retries over TCP itself. A failed TCP retry passes the truncated reply on too.
    - each client gets the reply with its own ID and question spelling, otherwise untouched;
      replies that may be kept go into the cache first.

    `sent` holds (our ID + lower-case question) of every query out upstream: a query that
    arrives with one of those is our own come back (`loop.py`).

    `done` callbacks run on the forwarder thread and must not block; exceptions in them are
    logged and dropped.
    """

    def __init__(self, zones: ForwardZones, *, timeout: float = 2.0,
                 max_in_flight: int = MAX_IN_FLIGHT, cache: AnswerCache | None = None) -> None:
        if not zones:
            raise ValueError("a forwarder needs at least one upstream")
        self.zones = zones
        self.timeout = timeout
        self.cache = cache
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._inbox: collections.deque[tuple[bytes, _Waiter, Group | None, bytes | None]] = \
            collections.deque()
        self._timers: list[tuple[float, int, object, str]] = []
        self._seq = 0
        self._pending: dict[bytes, _Query] = {}  # cache key -> the exchange in flight
        self._probing: dict[Health, socket.socket | None] = {}
        self.sent: dict[bytes, int] = {}  # our ID + question of every query out upstream
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        self._thread: threading.Thread | None = None
        self.stats = {"forwarded": 0, "replies": 0, "timeouts": 0, "failures": 0,
                      "tcp_retries": 0, "rejected": 0, "joined": 0, "stale": 0}
        # Per upstream: [queries sent, failures]; written by the forwarder thread only.
        self.upstream_counts: dict[Upstream, list[int]] = {u: [0, 0] for u in zones.upstreams}

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self.zones.upstreams

    def start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="dns-forwarder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every socket; queries in flight get no callback."""
        if not self._running:
            return
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(1.0)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def submit(self, packet: bytes, done: Done, *, fit: int = MAX_REPLY,
               group: Group | None = None, key: bytes | None = None,
               bounded: bool = True) -> bool:
        """Forward `packet` to `group` (by default the one it routes to); `done(reply or
        None)` is called later on the forwarder thread. `key`: its cache key, if it has one
        (identical keys share one exchange; the reply is cached under it). `bounded=False`
        (our own probes) takes none of the `max_in_flight` places.

        False (and no callback) when the forwarder is stopped, `packet` has no question to
        match replies by, no zone takes it, or `max_in_flight` queries wait already.
        """
        if group is None:
            group = self.zones.route(packet)
        if not self._running or group is None or not question_end(packet) or \
                (bounded and not self._slots.acquire(blocking=False)):
            self.stats["rejected"] += 1
            return False
        self._inbox.append((packet, _Waiter(packet, fit, done, bounded), group, key))
        self._wake()
        return True

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the loop is awake already
            self._wake_w.send(b"\0")

    # --- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while self._running:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, mask in selector.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                        continue
                    target, kind = key.data
                    if kind == "probe":
                        self._probe_readable(target, key.fileobj)  # type: ignore[arg-type]
                    elif kind == "udp":
                        self._guarded(target, self._udp_readable, key.fileobj)
                    else:
                        self._guarded(target, self._tcp_event, mask)
                while self._inbox:
                    self._take(*self._inbox.popleft())
                self._fire_timers()
        finally:
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    target, kind = key.data
                    if kind == "probe":
                        key.fileobj.close()  # type: ignore[union-attr]
                    else:
                        self._close_all(target)
            selector.close()

    def _take(self, packet: bytes, waiter: _Waiter, group: Group | None, key: bytes | None
              ) -> None:
        """A submitted query: join the identical exchange in flight, or start one."""
        if key is not None:
            joined = self._pending.get(key)
            if joined is not None and not joined.finished:
                joined.waiters.append(waiter)
                self.stats["joined"] += 1
                return
        end = question_end(packet)
        query = _Query(os.urandom(2) + packet[2:], packet[12:end].lower(), key, group, [waiter])
        if key is not None:
            self._pending[key] = query
        query.deadline = time.monotonic() + self.timeout
        self._timer(query.deadline, query, "deadline")
        ours = query.packet[:2] + query.question
        self.sent[ours] = self.sent.get(ours, 0) + 1
        self.stats["forwarded"] += 1
        assert group is not None
        order = group.order()
        # Each upstream once; a single upstream twice (one retransmission).
        query.attempts_left = order if len(order) > 1 else order * 2
        query.step = self.timeout / len(query.attempts_left)
        self._guarded(query, self._attempt)

    def _guarded(self, query: _Query, step: Callable[..., None], *args: object) -> None:
        """Run one step for `query`; a bug ends that query (SERVFAIL), never the loop."""
        try:
            step(query, *args)
        except Exception:
            log.exception("forwarder: unexpected error")
            self._finish(query, query.truncated)

    def _timer(self, when: float, target: object, what: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, target, what))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, target, what = heapq.heappop(self._timers)
            if what == "probe":
                assert isinstance(target, Health)
                self._probe(target)
                continue
            assert isinstance(target, _Query)
            if target.finished:
                continue
            if what == "next":
                if target.tcp is None and target.attempts_left:
                    self._guarded(target, self._attempt)
            elif now >= target.deadline:
                self.stats["timeouts"] += 1
                self._finish(target, target.truncated)

    def _attempt(self, query: _Query) -> None:
        """Send the query to the next upstream (a new socket); schedule the one after."""
        while query.attempts_left:
            health = query.attempts_left.pop(0)
            sock = self._send(health.address, query.packet)
            if sock is None:
                self._failed(health)
                continue
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, (query, "udp"))
            query.sockets[sock] = (health, time.monotonic())
            self.upstream_counts.setdefault(health.address, [0, 0])[0] += 1
            break
        else:
            if not query.sockets:
                self.stats["failures"] += 1
                self._finish(query, None)
            return
        if query.attempts_left:
            self._timer(time.monotonic() + query.step, query, "next")

    @staticmethod
    def _send(address: Upstream, packet: bytes) -> socket.socket | None:
        host, port = address
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_DGRAM)
        except OSError:
            return None
        try:
            sock.setblocking(False)
            sock.connect((host, port))
            sock.send(packet)
        except OSError:
            sock.close()
            return None
        return sock

    def _failed(self, health: Health) -> None:
        self.upstream_counts.setdefault(health.address, [0, 0])[1] += 1
        if health.failed():
            self._probing.setdefault(health, None)
            self._timer(time.monotonic() + PROBE_INTERVAL, health, "probe")

    def _udp_readable(self, query: _Query, sock: object) -> None:
        assert isinstance(sock, socket.socket)
        try:
            reply = sock.recv(MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ECONNREFUSED (nobody listens there), unreachable: drop this attempt and try
            # the next upstream now rather than when its turn comes.
            health = query.sockets[sock][0]
            self._drop_socket(query, sock)
            self._failed(health)
            if query.attempts_left:
                self._attempt(query)
            elif not query.sockets:
                self.stats["failures"] += 1
                self._finish(query, None)
            return
        if not self._matches(query, reply):
            return  # not ours (late, spoofed, or garbage): keep waiting
        query.sockets.pop(sock)[0].answered()
        self._forget(sock)
        if reply[2] & 0x02 and query.truncated is None:
            self._retry_tcp(query, sock.getpeername()[:2], reply)
            sock.close()
            return
        sock.close()
        self._finish(query, reply)

    def _matches(self, query: _Query, reply: bytes) -> bool:
        return len(reply) >= 12 and reply[:2] == query.packet[:2] and bool(reply[2] & 0x80) \
            and reply[12:12 + len(query.question)].lower() == query.question

    def _retry_tcp(self, query: _Query, peer: tuple[str, int], truncated: bytes) -> None:
        self.stats["tcp_retries"] += 1
        query.truncated = truncated
        for sock in list(query.sockets):
            self._drop_socket(query, sock)
        query.attempts_left.clear()
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in peer[0] else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError:
            self._finish(query, truncated)
            return
        sock.setblocking(False)
        result = sock.connect_ex(peer)
        if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            self._finish(query, truncated)
            return
        query.tcp = sock
        query.tcp_out = len(query.packet).to_bytes(2, "big") + query.packet
        query.deadline = time.monotonic() + self.timeout
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_WRITE, (query, "tcp"))
        self._timer(query.deadline, query, "deadline")

    def _tcp_event(self, query: _Query, mask: int) -> None:
        sock = query.tcp
        assert sock is not None and self._selector is not None
        if mask & selectors.EVENT_WRITE:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._finish(query, query.truncated)
                return
            try:
                sent = sock.send(query.tcp_out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._finish(query, query.truncated)
                return
            query.tcp_out = query.tcp_out[sent:]
            if not query.tcp_out:
                self._selector.modify(sock, selectors.EVENT_READ, (query, "tcp"))
            return
        try:
            data = sock.recv(MAX_REPLY + 2)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish(query, query.truncated)
            return
        query.tcp_in += data
        if len(query.tcp_in) < 2:
            return
        size = (query.tcp_in[0] << 8) | query.tcp_in[1]
        if len(query.tcp_in) < 2 + size:
            return
        reply = bytes(query.tcp_in[2:2 + size])
        self._finish(query, reply if self._matches(query, reply) else query.truncated)

    # --- health probes ------------------------------------------------------------------------

    def _probe(self, health: Health) -> None:
        """Ask a down upstream `. NS` again (the last probe unanswered is dropped)."""
        old = self._probing.pop(health, None)
        if old is not None:
            self._forget(old)
            old.close()
        if not health.down or not self._running:
            return
        sock = self._send(health.address, os.urandom(2) + _PROBE_QUESTION)
        self._probing[health] = sock
        if sock is not None:
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, (health, "probe"))
        self._timer(time.monotonic() + PROBE_INTERVAL, health, "probe")

    def _probe_readable(self, health: Health, sock: socket.socket) -> None:
        try:
            reply = sock.recv(MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # refused: still down; the next probe comes with its timer
        if len(reply) >= 12 and reply[2] & 0x80:
            health.answered()
            self._probing.pop(health, None)
            self._forget(sock)
            sock.close()

    # --- ending an exchange -------------------------------------------------------------------

    def _forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            assert self._selector is not None
            self._selector.unregister(sock)

    def _drop_socket(self, query: _Query, sock: socket.socket) -> None:
        self._forget(sock)
        sock.close()
        query.sockets.pop(sock, None)

    def _close_all(self, query: _Query) -> None:
        for sock in list(query.sockets):
            self._drop_socket(query, sock)
        if query.tcp is not None:
            self._forget(query.tcp)
            query.tcp.close()
            query.tcp = None

    def _finish(self, query: _Query, reply: bytes | None) -> None:
        if query.finished:
            return
        query.finished = True
        now = time.monotonic()
        for health, sent_at in list(query.sockets.values()):
            if now - sent_at >= query.step * 0.999:  # had its whole turn: a failure
                self._failed(health)
        self._close_all(query)
        if query.key is not None and self._pending.get(query.key) is query:
            del self._pending[query.key]
        sent = query.packet[:2] + query.question
        count = self.sent.get(sent, 0)
        if count > 1:
            self.sent[sent] = count - 1
        elif count:
            del self.sent[sent]
        stale = None
        if query.key is not None and self.cache is not None:
            if reply is not None and not reply[2] & 0x02 and reply[3] & 0xF not in \
                    (_SERVFAIL, _REFUSED):
                self.cache.put(query.key, reply)
            elif reply is None or reply[3] & 0xF in (_SERVFAIL, _REFUSED):
                stale = self.cache.stale(query.key)
        if reply is not None:
            self.stats["replies"] += 1
        for waiter in query.waiters:
            if waiter.bounded:
                self._slots.release()
            if stale is not None:
                assert self.cache is not None and query.key is not None
                self.stats["stale"] += 1
                answer: bytes | None = self.cache.reply(stale, waiter.packet, query.key,
                                                        stale=True)
            else:
                answer = self._for(waiter, reply, query.truncated)
            try:
                waiter.done(answer)
            except Exception:
                log.exception("forwarder: reply callback failed")

    @staticmethod
    def _for(waiter: _Waiter, reply: bytes | None, truncated: bytes | None) -> bytes | None:
        """`reply` for one client: its ID and question spelling; the truncated UDP reply
        instead when the whole one is larger than the client takes."""
        if reply is not None and len(reply) > waiter.fit and truncated is not None:
            reply = truncated
        if reply is None:
            return None
        end = question_end(waiter.packet)
        return waiter.packet[:2] + reply[2:12] + waiter.packet[12:end] + reply[end:]
