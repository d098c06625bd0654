"""The DNS transport: UDP and TCP listeners serving the current `Table`.

Threading model (who owns what):

- The caller of `publish()` (the reconcile loop) builds a new `Table` from a `Catalog` in
  its own thread, then assigns it to `self._table`: a single reference assignment, atomic
  under the GIL. Readers load `self._table` once per packet and never lock, so a packet is
  answered entirely from one table; an old table lives until its last reader drops it.
- One thread per UDP socket runs the hot loop: recvfrom -> `Table.respond` (header and
  question scan, one dict look-up, byte patching) -> sendto. Blocking sockets, no per-packet
  allocation beyond the reply. `recvfrom` and `sendto` release the GIL, so the loop
  overlaps with other threads' work while waiting. More readers would only contend for the
  GIL; scaling past one core means SO_REUSEPORT sockets in worker processes (a later step;
  the table is cheap to rebuild per process from the same catalog).
- One thread owns every TCP connection: a selector loop that accepts, reads 2-byte-framed
  queries (several per connection, answered in order), writes replies as the socket
  allows, and closes connections idle longer than `tcp_idle_timeout`.
- Counters are per thread (each thread writes only its own), summed when `stats` is read.
- `stop()` clears `_serving`, wakes every loop (an empty datagram to each UDP socket, a
  byte on the TCP loop's wake-up socket pair), joins the threads and closes the sockets.

Nothing a client sends can stop a loop: `Table.respond` does not raise for any input (a
fuzz test checks it), and each loop still catches everything around it, counts it as an
error and answers SERVFAIL when the header allows. Packets without a readable header, and
responses (QR set), are dropped and counted.

Questions outside our zones go to `outside` (the seam for the upstream forwarder of a
later issue); without one they are answered REFUSED (checklist 57).
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence

from bridge.catalog.model import Catalog
from bridge.config import DnsSettings, parse_hostport
from bridge.dns.answer import NotOurs, Rcode
from bridge.dns.table import DEFAULT_UDP_PAYLOAD, Table, header_only

UDP_BUFFER = 4096  # larger queries are not legitimate; a cut datagram parses as FORMERR
TCP_READ = 65536
TCP_MAX_PENDING = 1 << 20  # reply bytes queued for a client that does not read: then close
JOIN_TIMEOUT = 1.0

# What a thread counts, by index into its list (a list is the cheapest counter to bump).
_QUERIES, _ANSWERED, _DROPPED, _TRUNCATED, _ERRORS, _CONNECTIONS = range(6)
_RCODE_NAMES = {Rcode.NOERROR: "noerror", Rcode.FORMERR: "formerr",
                Rcode.SERVFAIL: "servfail", Rcode.NXDOMAIN: "nxdomain",
                Rcode.NOTIMP: "notimp", Rcode.REFUSED: "refused"}

# Called with (query packet, over TCP) for a question that is not ours: the reply, or None.
Outside = Callable[[bytes, bool], bytes | None]


class _Counters:
    __slots__ = ("n", "rcodes")

    def __init__(self) -> None:
        self.n = [0] * 6
        self.rcodes = [0] * 16


class _Connection:
    __slots__ = ("closing", "inbox", "last", "outbox", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.last = time.monotonic()
        self.closing = False  # the client half-closed: finish writing, then close


class DnsServer:
    """Serves the cluster zone over UDP and TCP on one host and port."""

    def __init__(self, settings: DnsSettings, *, udp_payload: int = DEFAULT_UDP_PAYLOAD,
                 tcp_idle_timeout: float = 10.0, max_tcp_connections: int = 512,
                 ns_addresses: Sequence[str] | None = None,
                 outside: Outside | None = None) -> None:
        self.settings = settings
        self.host, self.port = parse_hostport(settings.listen)
        self.udp_payload = udp_payload
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        if ns_addresses is None:
            # The apex NS glue and ns.dns.<zone> (43, 44) need an address clients can use:
            # the listen address if it is one, else none until configured.
            ns_addresses = () if _wildcard(self.host) else (self.host,)
        self.ns_addresses = tuple(ns_addresses)
        self._outside = outside
        self._table = self._build(Catalog())  # not ready: SERVFAIL until the first publish
        self._serving = False
        self._udp: list[socket.socket] = []
        self._tcp: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._counters: list[_Counters] = []
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    # --- publishing ---------------------------------------------------------------------

    def _build(self, catalog: Catalog) -> Table:
        return Table(catalog, self.settings.zone, self.settings.ttl,
                     ns_addresses=self.ns_addresses, udp_payload=self.udp_payload)

    def publish(self, catalog: Catalog) -> Table:
        """Build the table for `catalog` in the caller's thread, then swap it in atomically."""
        table = self._build(catalog)
        self._table = table
        return table

    @property
    def table(self) -> Table:
        return self._table

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind UDP and TCP on the same port (port 0: a free one) and start serving."""
        if self._serving:
            raise RuntimeError("already started")
        udp, tcp = self._bind()
        self._udp, self._tcp = [udp], [tcp]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._serving = True
        for sock in self._udp:
            counters = _Counters()
            self._counters.append(counters)
            self._spawn(self._serve_udp, sock, counters, f"dns-udp-{sock.getsockname()[1]}")
        counters = _Counters()
        self._counters.append(counters)
        self._spawn(self._serve_tcp, self._tcp, counters, f"dns-tcp-{self.port}")

    def _spawn(self, target: Callable[..., None], sock: object, counters: _Counters,
               name: str) -> None:
        # Daemon threads: a wedged loop must never keep the process from exiting.
        thread = threading.Thread(target=target, args=(sock, counters), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        info = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_DGRAM,
                                  flags=socket.AI_PASSIVE)
        family, _, _, _, address = info[0]
        # With port 0 the kernel picks the UDP port; TCP must get the same number, which
        # another process may hold: then try again with a new pick.
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp = _socket(family, socket.SOCK_DGRAM, address)
            bound = udp.getsockname()
            try:
                tcp = _socket(family, socket.SOCK_STREAM, (address[0], bound[1], *address[2:]))
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            tcp.listen(128)
            tcp.setblocking(False)
            self.port = bound[1]
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")  # pragma: no cover

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound socket; UDP and TCP share each pair."""
        seen: dict[tuple[str, int], None] = {}
        for sock in self._udp + self._tcp:
            with contextlib.suppress(OSError):
                host, port = sock.getsockname()[:2]
                seen[(host, port)] = None
        return list(seen)

    def stop(self) -> None:
        """Stop serving: wake and join every thread (within about a second), close sockets."""
        if not self._serving:
            return
        self._serving = False
        for sock in self._udp:
            _wake_udp(sock)
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in [*self._udp, *self._tcp, self._wake_r, self._wake_w]:
            if sock is not None:
                sock.close()
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
        totals = [0] * 6
        rcodes = [0] * 16
        for counters in list(self._counters):
            totals = [a + b for a, b in zip(totals, counters.n, strict=True)]
            rcodes = [a + b for a, b in zip(rcodes, counters.rcodes, strict=True)]
        out = {"queries": totals[_QUERIES], "answered": totals[_ANSWERED],
               "dropped": totals[_DROPPED], "truncated": totals[_TRUNCATED],
               "errors": totals[_ERRORS], "tcp_connections": totals[_CONNECTIONS]}
        for code, name in _RCODE_NAMES.items():
            out[name] = rcodes[code]
        return out

    # --- handling one packet -------------------------------------------------------------

    def _handle(self, packet: bytes, tcp: bool, counters: _Counters) -> bytes | None:
        """Table reply, else the outside handler's, else REFUSED; never raises."""
        table = self._table
        try:
            reply = table.respond(packet, tcp)
            if isinstance(reply, NotOurs):
                reply = self._outside(packet, tcp) if self._outside else table.refuse(packet, tcp)
        except Exception:
            counters.n[_ERRORS] += 1
            reply = header_only(packet, Rcode.SERVFAIL)
        if reply is None:
            counters.n[_DROPPED] += 1
        return reply

    # --- UDP ------------------------------------------------------------------------------

    def _serve_udp(self, sock: socket.socket, counters: _Counters) -> None:
        recvfrom, sendto, handle = sock.recvfrom, sock.sendto, self._handle
        n, rcodes = counters.n, counters.rcodes
        while self._serving:
            try:
                packet, peer = recvfrom(UDP_BUFFER)
            except OSError:
                if not self._serving:
                    break
                n[_ERRORS] += 1  # e.g. ICMP errors reported on the socket; keep serving
                continue
            if not packet:
                continue  # stop()'s wake-up, or an empty datagram: nothing to answer
            n[_QUERIES] += 1
            reply = handle(packet, False, counters)
            if reply is None:
                continue
            try:
                sendto(reply, peer)
            except OSError:
                n[_DROPPED] += 1
                continue
            n[_ANSWERED] += 1
            rcodes[reply[3] & 0xF] += 1
            if reply[2] & 0x02:
                n[_TRUNCATED] += 1

    # --- TCP ------------------------------------------------------------------------------

    def _serve_tcp(self, listeners: list[socket.socket], counters: _Counters) -> None:
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
                                sock.recv(64)
                        elif key.data is None:
                            self._accept(sock, selector, connections, counters)
                        else:
                            self._service(key.data, mask, selector, connections, counters)
                    except Exception:
                        counters.n[_ERRORS] += 1
                        if key.data is not None:
                            self._close(key.data, selector, connections)
                self._expire(selector, connections)
        finally:
            for connection in list(connections.values()):
                self._close(connection, selector, connections)
            selector.close()

    def _accept(self, listener: socket.socket, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection], counters: _Counters) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                counters.n[_ERRORS] += 1  # e.g. out of file descriptors: try later
                return
            counters.n[_CONNECTIONS] += 1
            if len(connections) >= self.max_tcp_connections:
                counters.n[_DROPPED] += 1
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock)
            connections[sock] = connection
            selector.register(sock, selectors.EVENT_READ, connection)

    def _service(self, connection: _Connection, mask: int, selector: selectors.BaseSelector,
                 connections: dict[socket.socket, _Connection], counters: _Counters) -> None:
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

    def _answer_frames(self, connection: _Connection, counters: _Counters) -> None:
        inbox = connection.inbox
        n, rcodes = counters.n, counters.rcodes
        while len(inbox) >= 2:
            size = (inbox[0] << 8) | inbox[1]
            if len(inbox) < 2 + size:
                break
            packet = bytes(inbox[2:2 + size])
            del inbox[:2 + size]
            n[_QUERIES] += 1
            reply = self._handle(packet, True, counters)
            if reply is None:
                continue
            connection.outbox += len(reply).to_bytes(2, "big") + reply
            n[_ANSWERED] += 1
            rcodes[reply[3] & 0xF] += 1
            if reply[2] & 0x02:
                n[_TRUNCATED] += 1

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
        if connection.closing and not connection.outbox:
            self._close(connection, selector, connections)
            return
        want = (0 if connection.closing else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if connection.outbox else 0)
        if selector.get_key(connection.sock).events != want:
            selector.modify(connection.sock, want, connection)

    def _expire(self, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection]) -> None:
        cutoff = time.monotonic() - self.tcp_idle_timeout
        for connection in [c for c in connections.values() if c.last < cutoff]:
            self._close(connection, selector, connections)

    @staticmethod
    def _close(connection: _Connection, selector: selectors.BaseSelector,
               connections: dict[socket.socket, _Connection]) -> None:
        connections.pop(connection.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(connection.sock)
        with contextlib.suppress(OSError):
            connection.sock.close()


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: not a wildcard


def _socket(family: int, kind: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                # Room for bursts while the reader thread waits for the GIL.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if family == socket.AF_INET6 and ipaddress.ip_address(address[0]).is_unspecified:
            # `::` also serves IPv4 (mapped addresses), like `0.0.0.0` plus `::`.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _wake_udp(sock: socket.socket) -> None:
    """Send an empty datagram to a UDP socket so that its blocked recvfrom returns."""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return
    family = sock.family
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as waker:
        waker.sendto(b"", (host, port))
