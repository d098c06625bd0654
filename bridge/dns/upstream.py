"""The sidecar resolver: names outside our zones go to upstream servers.

`upstreams_from` decides which upstreams (configured, else resolv.conf's minus this
server); `Forwarder` sends queries to them on a thread of its own and hands each reply
back. With no upstream the server answers REFUSED (checklist 57).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import heapq
import ipaddress
import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bridge.dns.packet import question_end

log = logging.getLogger(__name__)

DNS_PORT = 53
MAX_IN_FLIGHT = 1024
MAX_REPLY = 65535
Upstream = tuple[str, int]  # (IP literal, port)
Done = Callable[[bytes | None], None]


# --- which upstreams ------------------------------------------------------------------------

def parse_upstream(text: str) -> Upstream:
    """`1.2.3.4`, `1.2.3.4:5353`, `[fd00::1]:53`, `fd00::1` -> (ip, port). IP literals only."""
    value = text.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", value)
    if match:
        host, port = match.group(1), match.group(2)
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"upstream {text!r}: not an IP address (names would need a resolver)"
                         ) from None
    number = DNS_PORT if port is None else int(port)
    if not 0 < number < 65536:
        raise ValueError(f"upstream {text!r}: port must be 1-65535")
    return str(address) if not getattr(address, "scope_id", None) else host, number


def nameservers(resolv_conf: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf text, in order (comments ignored)."""
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(fields[1])
                found.append(fields[1])
    return found


def is_self(address: str, port: int, listen_host: str, listen_port: int,
            is_local: Callable[[str], bool] | None = None) -> bool:
    """True when `address:port` is this server listening on `listen_host:listen_port`.

    `is_local(address)` says whether an address belongs to this host: with a wildcard
    listener, every local address at our port is us.
    """
    if port != listen_port:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    try:
        listen = ipaddress.ip_address(listen_host) if listen_host else None
    except ValueError:
        listen = None
    if listen is None or listen.is_unspecified:
        return ip.is_loopback or ip.is_unspecified or bool(is_local and is_local(address))
    if listen.is_loopback and ip.is_loopback:
        return True  # 127.0.0.x: on a pod's loopback, another resolver at our port is us
    return ip == listen


def is_local_address(address: str) -> bool:
    """True if this host owns `address` (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def upstreams_from(configured: Iterable[str], resolv_conf_text: str | None, listen_host: str,
                   listen_port: int, is_local: Callable[[str], bool] | None = None
                   ) -> tuple[Upstream, ...]:
    """The upstreams to use: the configured ones, else resolv.conf's minus ourselves.

    `dns.upstreams` when set (HOST[:PORT], `[V6]:PORT`, or a
    bare IPv6 address; IP literals only, because resolving a resolver's name would need a
    resolver), else the `nameserver` lines of `dns.resolv_conf` minus ourselves: the address we
    listen on, if we listen at port 53 (nameserver lines have no port); with a wildcard listen
    address, any address of this host (loopback, 127.0.0.x, or an interface's); with a loopback
    one, any loopback address. None left: the server answers REFUSED (checklist 57).
    """
    explicit = tuple(parse_upstream(text) for text in configured)
    if explicit:
        return explicit
    if not resolv_conf_text:
        return ()
    out: dict[Upstream, None] = {}
    for address in nameservers(resolv_conf_text):
        if not is_self(address, DNS_PORT, listen_host, listen_port, is_local):
            out[(address, DNS_PORT)] = None
    return tuple(out)


def read_resolv_conf(path: str) -> str | None:
    """The text of a resolv.conf, or None if it cannot be read (then: no upstream)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        log.warning("cannot read %s (%s): no upstream resolver", path, exc)
        return None


# --- the forwarder ----------------------------------------------------------------------------

@dataclass(eq=False)
class _Query:
    packet: bytes  # as sent upstream: our ID
    client_id: bytes
    question: bytes  # lower case, for matching replies
    fit: int
    done: Done
    deadline: float
    attempts_left: list[Upstream]
    sockets: list[socket.socket] = field(default_factory=list)
    truncated: bytes | None = None  # a UDP reply with TC, while TCP is tried
    tcp: socket.socket | None = None
    tcp_out: bytes = b""
    tcp_in: bytearray = field(default_factory=bytearray)
    finished: bool = False


class Forwarder:
    """Forwards queries to upstream servers on its own thread.

    One thread runs a selector over every query in flight, so a slow or dead
    upstream never holds up the UDP and TCP loops, which only hand the packet over
    (`submit`, a deque append and a wake-up byte). The number in flight is bounded; past the
    bound `submit` says no and the caller answers SERVFAIL. For each query:

    - the client's packet is sent unchanged apart from a fresh random ID, from a new connected
      UDP socket (a random source port: a spoofed reply must guess both), to the first upstream;
      if no reply has come after `timeout / max(2, n)` it is also sent to the next upstream (with
      one upstream: sent again), and the first valid reply wins. A reply is valid when it comes
      from the socket's peer, has QR, our ID and the question we asked.
    - an ICMP "port unreachable" (ECONNREFUSED on the connected socket) moves on to the next
      upstream at once; when every attempt has failed, or `timeout` has passed, the answer is
      None (the server replies SERVFAIL).
    - a reply with TC is retried over TCP to the upstream that sent it (same deadline again);
      the TCP reply is used if it fits `fit` (the client's size limit), else the truncated UDP
      reply is passed on, so the client retries over TCP itself. A failed TCP retry passes the
      truncated reply on too.
    - the reply is handed back with the client's ID restored and otherwise untouched.

    `done` callbacks run on the forwarder thread and must not block; exceptions in them are
    logged and dropped.
    """

    def __init__(self, upstreams: Sequence[Upstream], *, timeout: float = 2.0,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        if not upstreams:
            raise ValueError("a forwarder needs at least one upstream")
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        # Each upstream once; a single upstream twice (one retransmission).
        self._attempts = self.upstreams if len(self.upstreams) > 1 else self.upstreams * 2
        self._step = timeout / len(self._attempts)
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._inbox: collections.deque[_Query] = collections.deque()
        self._timers: list[tuple[float, int, _Query, str]] = []
        self._seq = 0
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._running = False
        self._thread: threading.Thread | None = None
        self.stats = {"forwarded": 0, "replies": 0, "timeouts": 0, "failures": 0,
                      "tcp_retries": 0, "rejected": 0}

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

    def submit(self, packet: bytes, done: Done, *, fit: int = MAX_REPLY) -> bool:
        """Forward `packet`; `done(reply or None)` is called later on the forwarder thread.

        False (and no callback) when the forwarder is stopped, `packet` has no question
        to match replies by, or `max_in_flight` queries are in flight already.
        """
        end = question_end(packet)
        if not self._running or not end or not self._slots.acquire(blocking=False):
            self.stats["rejected"] += 1
            return False
        our_id = os.urandom(2)
        query = _Query(our_id + packet[2:], packet[:2], packet[12:end].lower(), fit, done,
                       0.0, list(self._attempts))
        self._inbox.append(query)
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
                    query, kind = key.data
                    self._guarded(query, self._udp_readable if kind == "udp" else self._tcp_event,
                                  key.fileobj if kind == "udp" else mask)
                while self._inbox:
                    query = self._inbox.popleft()
                    query.deadline = time.monotonic() + self.timeout
                    self.stats["forwarded"] += 1
                    self._guarded(query, self._start)
                self._fire_timers()
        finally:
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    self._close_all(key.data[0])
            selector.close()

    def _guarded(self, query: _Query, step: Callable[..., None], *args: object) -> None:
        """Run one step for `query`; a bug ends that query (SERVFAIL), never the loop."""
        try:
            step(query, *args)
        except Exception:
            log.exception("forwarder: unexpected error")
            self._finish(query, query.truncated)

    def _start(self, query: _Query) -> None:
        self._attempt(query)

    def _timer(self, when: float, query: _Query, what: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, query, what))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, query, what = heapq.heappop(self._timers)
            if query.finished:
                continue
            if what == "next":
                if query.tcp is None and query.attempts_left:
                    self._guarded(query, self._attempt)
            elif now >= query.deadline:
                self.stats["timeouts"] += 1
                self._finish(query, query.truncated)

    def _attempt(self, query: _Query) -> None:
        """Send the query to the next upstream (a new socket); schedule the one after."""
        while query.attempts_left:
            host, port = query.attempts_left.pop(0)
            try:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError:
                continue
            try:
                sock.setblocking(False)
                sock.connect((host, port))
                sock.send(query.packet)
            except OSError:
                sock.close()
                continue
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, (query, "udp"))
            query.sockets.append(sock)
            break
        else:
            if not query.sockets:
                self.stats["failures"] += 1
                self._finish(query, None)
            return
        if len(query.sockets) == 1:
            self._timer(query.deadline, query, "deadline")
        if query.attempts_left:
            self._timer(time.monotonic() + self._step, query, "next")

    def _udp_readable(self, query: _Query, sock: object) -> None:
        assert isinstance(sock, socket.socket)
        try:
            reply = sock.recv(MAX_REPLY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # ECONNREFUSED (nobody listens there), unreachable: drop this attempt and try
            # the next upstream now rather than when its turn comes.
            self._drop_socket(query, sock)
            if query.attempts_left:
                self._attempt(query)
            elif not query.sockets:
                self.stats["failures"] += 1
                self._finish(query, None)
            return
        if not self._matches(query, reply):
            return  # not ours (late, spoofed, or garbage): keep waiting
        if reply[2] & 0x02 and query.truncated is None:
            self._retry_tcp(query, sock.getpeername()[:2], reply)
            return
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
        if not self._matches(query, reply):
            self._finish(query, query.truncated)
        elif len(reply) <= query.fit:
            self._finish(query, reply)
        else:
            self._finish(query, query.truncated)  # the client retries over TCP itself

    def _drop_socket(self, query: _Query, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            assert self._selector is not None
            self._selector.unregister(sock)
        sock.close()
        with contextlib.suppress(ValueError):
            query.sockets.remove(sock)

    def _close_all(self, query: _Query) -> None:
        for sock in list(query.sockets):
            self._drop_socket(query, sock)
        if query.tcp is not None:
            with contextlib.suppress(KeyError, ValueError):
                assert self._selector is not None
                self._selector.unregister(query.tcp)
            query.tcp.close()
            query.tcp = None

    def _finish(self, query: _Query, reply: bytes | None) -> None:
        if query.finished:
            return
        query.finished = True
        self._close_all(query)
        self._slots.release()
        if reply is not None:
            self.stats["replies"] += 1
            reply = query.client_id + reply[2:]
        try:
            query.done(reply)
        except Exception:
            log.exception("forwarder: reply callback failed")
