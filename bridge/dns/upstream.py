"""Which upstream servers names outside our zones go to, read from settings or resolv.conf.

`upstreams_from` decides the default upstreams (configured, else resolv.conf's minus this
server); `parse_upstream` reads one `HOST[:PORT]`; `search_domains` reads resolv.conf's
search list (for autopath). Per-zone upstreams are `forward_zones.py`'s; the forwarder
(`forwarder.py`) sends the queries. With no upstream the server answers REFUSED
(checklist 57).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

DNS_PORT = 53
Upstream = tuple[str, int]  # (IP literal, port)


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


def search_domains(resolv_conf: str) -> list[str]:
    """The `search` domains of a resolv.conf text (the last `search` line wins, as in
    glibc), lower case, without trailing dots."""
    found: list[str] = []
    for line in resolv_conf.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if fields and fields[0] == "search":
            found = [domain.lower().rstrip(".") for domain in fields[1:] if domain.strip(".")]
    return found


def format_upstream(address: Upstream) -> str:
    """`HOST:PORT`, `[V6]:PORT`: how logs and metric labels name an upstream."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
