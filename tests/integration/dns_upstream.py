"""A tiny real DNS server for the forwarding tests: the bridge's upstream resolver.

UDP and TCP on one port of 127.0.0.1 (port 0: a free one), built on dnspython, which the
bridge's server does not use. It answers the names it is given and NXDOMAIN (with an SOA)
for the rest, and records every query it sees and every reply it sends, so tests can check
what was forwarded and that it came back untouched. Faults, switchable while it runs:

- `udp_limit`: UDP replies larger than this (or than the client's EDNS size, or 512) are
  sent truncated: TC set, no records, as most servers do; TCP gets everything.
- `tcp=False`: no TCP listener (connections are refused).
- `delay`: seconds to wait before answering a name (a timer: other queries go on).
- `drop`: names never answered (the forwarder times out).
- `stop()`: everything closed; `dead_address()` is a port where nothing listens.
- `port=`: listen on a given port (to bring back an upstream that was down).

Never sleeps: delays are `threading.Timer`s, and readers block on their sockets.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SOA = "example. 300 IN SOA ns.example. hostmaster.example. 1 7200 1800 86400 300"


class UpstreamServer:
    def __init__(self, records: dict[str, Iterable[str]] | None = None, *, tcp: bool = True,
                 udp_limit: int | None = None, port: int = 0) -> None:
        """`records`: name -> zone-file lines without the owner, e.g. `"300 A 192.0.2.1"`."""
        self.rrsets: dict[str, list[dns.rrset.RRset]] = {}
        for name, lines in (records or {}).items():
            for line in lines:
                self.add(name, line)
        self.udp_limit = udp_limit
        self.delay: dict[str, float] = {}
        self.drop: set[str] = set()
        self.queries: list[tuple[str, int, str]] = []  # (lower-case name, qtype, udp|tcp)
        self.replies: list[tuple[str, str, bytes]] = []  # (name, udp|tcp, wire) as sent
        self._lock = threading.Lock()
        self._running = True
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self.udp, self.tcp = self._bind(tcp, port)
        self.port = self.udp.getsockname()[1]
        self._start(self._serve_udp)
        if self.tcp is not None:
            self._start(self._serve_tcp)

    @staticmethod
    def _bind(tcp: bool, port: int = 0) -> tuple[socket.socket, socket.socket | None]:
        """UDP on a free port (or `port`), and TCP on the same one (taken? then another
        port, unless `port` was given)."""
        for _ in range(50 if not port else 1):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", port))
            if not tcp:
                return udp, None
            stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                stream.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                stream.close()
                udp.close()
                if port:
                    raise
                continue
            stream.listen(16)
            return udp, stream
        raise OSError("no port free for both UDP and TCP")

    @property
    def address(self) -> str:
        """HOST:PORT, as `dns.upstreams` takes it."""
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, line: str) -> None:
        ttl, rdtype, *rdata = line.split(None, 2)
        rrset = dns.rrset.from_text(name, int(ttl), "IN", rdtype, *rdata)
        self.rrsets.setdefault(dns.name.from_text(name).to_text().lower(), []).append(rrset)

    def seen(self, name: str) -> int:
        """How many queries for `name` (any type, any transport) arrived."""
        wanted = dns.name.from_text(name).to_text().lower()
        with self._lock:
            return sum(1 for asked, _, _ in self.queries if asked == wanted)

    def last_reply(self, name: str) -> bytes:
        wanted = dns.name.from_text(name).to_text().lower()
        with self._lock:
            return next(wire for asked, _, wire in reversed(self.replies) if asked == wanted)

    def stop(self) -> None:
        self._running = False
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", ("127.0.0.1", self.port))  # wakes the UDP reader
        if self.tcp is not None:
            with contextlib.suppress(OSError):
                self.tcp.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.tcp.close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(2)
        with contextlib.suppress(OSError):
            self.udp.close()

    def __enter__(self) -> UpstreamServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- serving ------------------------------------------------------------------------

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _answer(self, data: bytes, transport: str) -> tuple[str, bytes] | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text().lower()
        with self._lock:
            self.queries.append((name, question.rdtype, transport))
        if name in self.drop:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        found = self.rrsets.get(name, [])
        if not found:
            response.set_rcode(dns.rcode.NXDOMAIN)
        for rrset in found:
            if rrset.rdtype in (question.rdtype, dns.rdatatype.CNAME) or \
                    question.rdtype == dns.rdatatype.ANY:
                response.answer.append(rrset)
        if not response.answer:
            response.authority.append(dns.rrset.from_text(*_soa()))
        limit = 65535
        if transport == "udp":
            limit = max(512, query.payload if query.edns >= 0 else 512)
            if self.udp_limit is not None:
                limit = min(limit, self.udp_limit)
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        with self._lock:
            self.replies.append((name, transport, wire))
        return name, wire

    def _later(self, name: str, send, wire: bytes) -> None:
        delay = self.delay.get(name, 0)
        if delay:
            timer = threading.Timer(delay, self._safe, (send, wire))
            timer.daemon = True
            timer.start()
        else:
            self._safe(send, wire)

    @staticmethod
    def _safe(send, wire: bytes) -> None:
        with contextlib.suppress(OSError):
            send(wire)

    def _serve_udp(self) -> None:
        while self._running:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            if not self._running:
                return
            answered = self._answer(data, "udp")
            if answered is not None:
                name, wire = answered
                self._later(name, lambda w, p=peer: self.udp.sendto(w, p), wire)

    def _serve_tcp(self) -> None:
        assert self.tcp is not None
        while self._running:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self._connections.append(conn)
            self._start(self._serve_connection, conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            while self._running:
                header = _read(conn, 2)
                if header is None:
                    return
                data = _read(conn, struct.unpack(">H", header)[0])
                if data is None:
                    return
                answered = self._answer(data, "tcp")
                if answered is not None:
                    name, wire = answered
                    self._later(name, lambda w: conn.sendall(struct.pack(">H", len(w)) + w), wire)


def _soa() -> tuple[str, int, str, str, str]:
    name, ttl, rdclass, rdtype, rdata = SOA.split(None, 4)
    return name, int(ttl), rdclass, rdtype, rdata


def _read(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def dead_address() -> str:
    """HOST:PORT of a UDP and TCP port on 127.0.0.1 where nothing listens (refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
