"""What an answer is made of: record types, records, responses (pure: no I/O).

The answerers (`answer.py` for the cluster zone, `consul_domain.py` for the Consul domain)
say what a name holds in these terms; the encoder (`encode.py`) writes them as bytes. Also
here, because both answerers follow it: the one zone-transfer rule (REFUSED for every name,
checklist 52).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from bridge.dns.query import Name


class QType(enum.IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    SVCB = 64
    HTTPS = 65
    IXFR = 251
    AXFR = 252
    ANY = 255


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended rcode: the low 4 bits go in the header, the rest in the OPT


# --- record data -------------------------------------------------------------------------

class _Data:
    """Record data of one type, `rtype`, named where a type is declared:
    `class A(_Address, rtype=QType.A)`. Every type is a frozen class of its own, so that
    data of two types never compare equal."""

    __slots__ = ()
    rtype: ClassVar[QType]

    def __init_subclass__(cls, rtype: QType | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if rtype is not None:
            cls.rtype = rtype


@dataclass(frozen=True, slots=True)
class _Address(_Data):
    address: str  # A: a dotted quad; AAAA: `ipaddress`'s compressed form


class A(_Address, rtype=QType.A):
    __slots__ = ()


class AAAA(_Address, rtype=QType.AAAA):
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SRV(_Data, rtype=QType.SRV):
    """A port of a service and the host serving it (RFC 2782). The target is written out
    in full on the wire, never compressed."""

    priority: int
    weight: int
    port: int
    target: Name


@dataclass(frozen=True, slots=True)
class SOA(_Data, rtype=QType.SOA):
    """The zone's start of authority; negative answers carry it (RFC 2308)."""

    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class _Target(_Data):
    target: Name  # CNAME, PTR, NS: one name


@dataclass(frozen=True, slots=True)
class TXT(_Data, rtype=QType.TXT):
    strings: tuple[str, ...]


class CNAME(_Target, rtype=QType.CNAME):
    __slots__ = ()


class PTR(_Target, rtype=QType.PTR):
    __slots__ = ()


class NS(_Target, rtype=QType.NS):
    __slots__ = ()


RData = A | AAAA | CNAME | PTR | NS | SRV | SOA | TXT


# Record, Response and Answers (and query.Query) are named tuples, not frozen dataclasses:
# a table build makes hundreds of thousands of them, and a tuple is much quicker to make.

class Record(NamedTuple):
    name: Name
    ttl: int
    data: RData

    @property
    def rtype(self) -> QType:
        return self.data.rtype


class Response(NamedTuple):
    """One answer. `chase` is an out-of-zone CNAME target left for an upstream resolver.

    `shuffle` asks the encoder to serve the answer records in a random order per query and,
    with `answer_limit` > 0, only that many of them picked at random (Consul, 61 and 66).
    """

    rcode: Rcode
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True
    chase: Name | None = None
    shuffle: bool = False
    answer_limit: int = 0


def shuffled(response: Response) -> Response:
    """The answer records of `response` in random order, cut to its `answer_limit`."""
    if not response.shuffle:
        return response
    answer = response.answer
    keep = response.answer_limit if 0 < response.answer_limit < len(answer) else len(answer)
    return Response(response.rcode, tuple(random.sample(answer, keep)), response.authority,
                    response.additional, response.authoritative, response.chase)


class Answers(NamedTuple):
    """Every response for one name: `by_type`, and `default` for any other qtype."""

    by_type: Mapping[int, Response]
    default: Response

    def get(self, qtype: int) -> Response:
        return self.by_type.get(qtype, self.default)


class Marker:
    """A value that stands for what to do instead of an answer; one object per subclass,
    compared by identity (`reply is NOT_OURS`)."""

    _made: ClassVar[dict[type, Marker]] = {}
    label: ClassVar[str] = "MARKER"

    def __new__(cls) -> Marker:
        made = Marker._made.get(cls)
        if made is None:
            made = Marker._made[cls] = super().__new__(cls)
        return made

    def __repr__(self) -> str:
        return self.label


class NotOurs(Marker):
    """The question is outside every zone we answer: forward it upstream or refuse it."""

    label = "NOT_OURS"


NOT_OURS = NotOurs()
REFUSED = Response(Rcode.REFUSED, authoritative=False)
SERVFAIL = Response(Rcode.SERVFAIL, authoritative=False)
TRANSFERS = (QType.AXFR, QType.IXFR)
# Both answerers put these in every name's answers: no zone transfers (52).
NO_TRANSFER: Mapping[int, Response] = dict.fromkeys(TRANSFERS, REFUSED)
