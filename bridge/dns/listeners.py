"""The DNS server's listening sockets: UDP and TCP on one port, for IPv4 and IPv6.

A wildcard listen host (`0.0.0.0`, `::`, or empty as in `:53`) serves IPv4 and IPv6: one
`::` socket with IPV6_V6ONLY off where the system allows it, else a `::` and a `0.0.0.0`
socket, else IPv4 alone. An explicit host binds just that address. UDP and TCP always
share the port (port 0: a free one, the same for every socket). `bind` makes the sockets;
the server (`server.py`) or its worker processes (`workers.py`) serve them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import NamedTuple


class Listeners(NamedTuple):
    udp: list[socket.socket]
    tcp: list[socket.socket]  # listening, non-blocking
    port: int  # the port bound (the one picked, for port 0)


def bind(host: str, port: int) -> Listeners:
    """New UDP and TCP sockets for `host:port`, the first way that works (see above)."""
    plans = _plans(host)
    for number, plan in enumerate(plans):
        try:
            return _bind_plan(plan, port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE or number == len(plans) - 1:
                raise
    raise OSError("nothing to bind")  # pragma: no cover


def _plans(host: str) -> list[list[tuple[int, str, str]]]:
    """Ways to bind, best first: lists of (family, host, IPv6 mode) to bind together."""
    if not is_wildcard(host) and host:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = info[0]
        return [[(int(family), str(address[0]), "")]]
    plans: list[list[tuple[int, str, str]]] = []
    if socket.has_ipv6:
        plans.append([(socket.AF_INET6, "::", "dual")])
        plans.append([(socket.AF_INET, "0.0.0.0", ""), (socket.AF_INET6, "::", "v6only")])
    plans.append([(socket.AF_INET, "0.0.0.0", "")])
    return plans


def _bind_plan(plan: list[tuple[int, str, str]], wanted: int) -> Listeners:
    # With port 0 the kernel picks the port of the first socket; the others must get the
    # same number, which another process may hold: then try again with a new pick.
    attempts = 20 if wanted == 0 else 1
    for attempt in range(attempts):
        port = wanted
        udp: list[socket.socket] = []
        tcp: list[socket.socket] = []
        try:
            for family, host, mode in plan:
                udp.append(_socket(family, socket.SOCK_DGRAM, host, port, mode))
                port = udp[-1].getsockname()[1]
                tcp.append(_socket(family, socket.SOCK_STREAM, host, port, mode))
        except OSError as exc:
            for sock in udp + tcp:
                sock.close()
            if attempt == attempts - 1 or exc.errno != errno.EADDRINUSE:
                raise
            continue
        for sock in tcp:
            sock.listen(128)
            sock.setblocking(False)
        return Listeners(udp, tcp, port)
    raise OSError("no port free for both UDP and TCP")  # pragma: no cover


def addresses_of(sockets: Sequence[socket.socket]) -> list[tuple[str, int]]:
    """(host, port) of each socket bound, without repeats, in order."""
    seen: dict[tuple[str, int], None] = {}
    for sock in sockets:
        with contextlib.suppress(OSError):
            host, port = sock.getsockname()[:2]
            seen[(host, port)] = None
    return list(seen)


def is_wildcard(host: str) -> bool:
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: not a wildcard


def _socket(family: int, kind: int, host: str, port: int, mode: str) -> socket.socket:
    """A bound socket. `mode`: "dual" (IPv6 and mapped IPv4), "v6only", or "" (as is)."""
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                # Room for bursts while the reader thread waits for the GIL.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if family == socket.AF_INET6 and mode:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if mode == "dual" else 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def wake_udp(sock: socket.socket) -> None:
    """Send an empty datagram to a UDP socket so that its blocked recvfrom returns."""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return
    family = sock.family
    targets = [host]
    if ipaddress.ip_address(host.split("%", 1)[0]).is_unspecified:
        targets = ["::1", "::ffff:127.0.0.1"] if family == socket.AF_INET6 else ["127.0.0.1"]
    with socket.socket(family, socket.SOCK_DGRAM) as waker:
        for target in targets:
            try:
                waker.sendto(b"", (target, port))
                return
            except OSError:
                continue
