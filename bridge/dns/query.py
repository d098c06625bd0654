"""The question-name grammar of the cluster zone and the reverse zones (pure: no I/O).

`parse` decides what a question name *is*: the zone apex, a service, an endpoint of a
service, an SRV name, a reverse-lookup address, or something outside what we serve. It
does not know the catalog: `answer.py` decides whether the parsed name exists.
"""

from __future__ import annotations

import enum
import ipaddress
import string
from collections.abc import Sequence
from typing import NamedTuple

Name = tuple[str, ...]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_HEX = frozenset("0123456789abcdef")
IN_ADDR_ARPA: Name = ("in-addr", "arpa")
IP6_ARPA: Name = ("ip6", "arpa")


class Kind(enum.Enum):
    APEX = "apex"
    DNS_VERSION = "dns-version"
    DNS_ROOT = "dns"
    NS_HOST = "ns.dns"
    SVC_ROOT = "svc"
    POD_ROOT = "pod"
    POD = "pod-record"
    NAMESPACE = "namespace"
    SERVICE = "service"
    ENDPOINT = "endpoint"
    PROTOCOL = "protocol"
    PORT = "port"
    INVALID = "invalid"
    REVERSE = "reverse"
    REVERSE_OTHER = "reverse-other"
    OUTSIDE = "outside"


class Query(NamedTuple):
    """A parsed question name (a named tuple: see `answer.Record`).

    `name` is the name as asked. `zone` is the suffix of `name` that matched the served zone
    (the cluster zone, or `in-addr.arpa`/`ip6.arpa` for reverse names) in the client's
    spelling; () when the name is outside. The other fields are lower-cased; `port` and
    `protocol` come without their leading underscore.
    """

    kind: Kind
    name: Name
    zone: Name = ()
    namespace: str = ""
    service: str = ""
    endpoint: str = ""
    port: str = ""
    protocol: str = ""
    address: IPAddress | None = None

    @property
    def in_zone(self) -> bool:
        """True for names inside the cluster zone (reverse names are not)."""
        return self.kind not in (Kind.OUTSIDE, Kind.REVERSE, Kind.REVERSE_OTHER)


def lower(label: str) -> str:
    """ASCII-only lower case (RFC 4343): other characters never match a catalog name."""
    return label.translate(_LOWER)


def upper(label: str) -> str:
    return label.translate(_UPPER)


def labels(name: str | Sequence[str | bytes]) -> Name:
    """A name as a label tuple: from dotted text (`a.b.` or `a.b`) or a sequence of labels.

    Bytes labels (as read from the wire) are decoded as Latin-1 so that every octet maps to
    one character and encoding them back gives the same bytes.
    """
    if isinstance(name, str):
        text = name[:-1] if name.endswith(".") else name
        return tuple(text.split(".")) if text else ()
    return tuple(part.decode("latin-1") if isinstance(part, bytes) else part for part in name)


def zone_labels(zone: str) -> Name:
    """The configured zone (`cluster.local`, `cluster.local.`) as lower-case labels."""
    return tuple(lower(label) for label in labels(zone))


def text(name: Name) -> str:
    """Dotted, absolute presentation of a name (for messages and tests; no escaping)."""
    return ".".join(name) + "."


def reverse_name(address: IPAddress) -> Name:
    """The in-addr.arpa / ip6.arpa name of an address (IPv6: all 32 nibbles, checklist 32)."""
    if isinstance(address, ipaddress.IPv4Address):
        return tuple(reversed(str(address).split("."))) + IN_ADDR_ARPA
    nibbles = address.exploded.replace(":", "")
    return tuple(reversed(nibbles)) + IP6_ARPA


def parse(name: str | Sequence[str | bytes], zone: Name) -> Query:
    """Classify a question name against the served zone `zone` (lower-case labels).

    Grammar, read from the right of `<zone>` (kubernetes/dns specification, CoreDNS parse.go):

        <zone>                                   APEX
        dns-version.<zone>                       DNS_VERSION
        dns.<zone>, ns.dns.<zone>                DNS_ROOT, NS_HOST (the name our NS record uses)
        svc.<zone>, pod.<zone>                   SVC_ROOT, POD_ROOT
        <ns>.pod.<zone>, <a-b-c-d>.<ns>.pod.<zone>   POD (`service` holds the dashed address)
        <ns>.svc.<zone>                          NAMESPACE
        <svc>.<ns>.svc.<zone>                    SERVICE
        <endpoint>.<svc>.<ns>.svc.<zone>         ENDPOINT
        _<proto>.<svc>.<ns>.svc.<zone>           PROTOCOL (empty non-terminal above SRV names)
        _<port>._<proto>.<svc>.<ns>.svc.<zone>   PORT
        <d>.<c>.<b>.<a>.in-addr.arpa, 32 nibbles.ip6.arpa   REVERSE
        anything else inside the zone            INVALID (checklist 37, 38, 48: NXDOMAIN)

    Names are tuples of labels, leftmost first, without the root label. Labels keep the
    client's spelling so that answers can echo it (checklist 46, 47); matching lower-cases
    ASCII only, because DNS case-insensitivity is defined for ASCII letters alone (RFC 4343).
    Wildcard labels (`*`, `any`) get no special meaning (checklist 48).
    """
    asked = labels(name)
    folded = tuple(lower(label) for label in asked)
    size = len(zone)
    if len(folded) >= size and folded[len(folded) - size:] == zone:
        cut = len(asked) - size
        return _in_zone(asked, asked[cut:], folded[:cut])
    if folded[-2:] == IN_ADDR_ARPA or folded[-2:] == IP6_ARPA:
        return _reverse(asked, folded)
    return Query(Kind.OUTSIDE, asked)


def _in_zone(asked: Name, zone: Name, rest: Name) -> Query:
    """`rest` is the lower-cased part left of the zone; read it from the right."""
    n = len(rest)
    if n == 0:
        return Query(Kind.APEX, asked, zone)
    top = rest[-1]
    if n == 1 and top == "dns-version":
        return Query(Kind.DNS_VERSION, asked, zone)
    if top == "dns":
        if n == 1:
            return Query(Kind.DNS_ROOT, asked, zone)
        if rest == ("ns", "dns"):
            return Query(Kind.NS_HOST, asked, zone)
        return Query(Kind.INVALID, asked, zone)
    if top == "pod":
        if n == 1:
            return Query(Kind.POD_ROOT, asked, zone)
        if n == 2:
            return Query(Kind.POD, asked, zone, namespace=rest[0])
        if n == 3:
            return Query(Kind.POD, asked, zone, namespace=rest[1], service=rest[0])
        return Query(Kind.INVALID, asked, zone)
    if top != "svc":
        return Query(Kind.INVALID, asked, zone)
    if n == 1:
        return Query(Kind.SVC_ROOT, asked, zone)
    namespace = rest[-2]
    if n == 2:
        return Query(Kind.NAMESPACE, asked, zone, namespace=namespace)
    service = rest[-3]
    if n == 3:
        return Query(Kind.SERVICE, asked, zone, namespace=namespace, service=service)
    if n == 4:
        first = rest[0]
        if _underscored(first):
            return Query(Kind.PROTOCOL, asked, zone, namespace=namespace, service=service,
                         protocol=first[1:])
        return Query(Kind.ENDPOINT, asked, zone, namespace=namespace, service=service,
                     endpoint=first)
    if n == 5 and _underscored(rest[0]) and _underscored(rest[1]):
        # CoreDNS also accepts `http.tcp.<svc>` without underscores; the specification only
        # defines `_<port>._<proto>`, and the bare form would shadow nothing useful.
        return Query(Kind.PORT, asked, zone, namespace=namespace, service=service,
                     port=rest[0][1:], protocol=rest[1][1:])
    # Three or more labels left of the service, or two that are not `_port._proto`.
    return Query(Kind.INVALID, asked, zone)


def _underscored(label: str) -> bool:
    return len(label) > 1 and label[0] == "_"


def _reverse(asked: Name, folded: Name) -> Query:
    zone = asked[-2:]
    digits = folded[:-2]
    address: IPAddress | None = None
    if folded[-2:] == IN_ADDR_ARPA:
        if len(digits) == 4 and all(_octet(d) for d in digits):
            address = ipaddress.IPv4Address(".".join(reversed(digits)))
    elif len(digits) == 32 and all(len(d) == 1 and d in _HEX for d in digits):
        address = ipaddress.IPv6Address(int("".join(reversed(digits)), 16))
    if address is None:
        return Query(Kind.REVERSE_OTHER, asked, zone)
    return Query(Kind.REVERSE, asked, zone, address=address)


def _octet(label: str) -> bool:
    """A canonical decimal octet: `0`-`255`, no sign, no leading zero."""
    if not label or len(label) > 3 or not label.isascii() or not label.isdigit():
        return False
    return (label == "0" or label[0] != "0") and int(label) <= 255
