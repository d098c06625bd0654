"""Precomputed wire answers for one catalog, and the packet handler that serves them.

This module owns the bytes. A `Table` holds, for one catalog, the answer to every question
that can be asked about every existing name as wire bytes. It never changes once built
except for three bounded caches of lazily encoded answers, which are plain dict writes
(atomic under the GIL), so readers share it without locks.

Storage: `defaults` maps each existing name (lower-cased, wire form) to its answer for any
qtype its answers do not name (NODATA, mostly: one shared entry); `entries` maps
(name + qtype + class) only where that qtype's answer is not the default (A, SRV, PTR...).
A lookup tries `entries` first, then `defaults`: HTTPS or MX on a name with no such record
cost one more dict look-up on the fast path, instead of a stored key per (name, qtype)
(910,000 keys for 10,000 services of 5 endpoints; about 370,000 now). A and AAAA are the
exception: stub resolvers ask both, so a name with addresses of one family has a key for
the other family's NODATA as well (the second look-up costs about a fifth of a query). Zone
transfers (AXFR, IXFR) of every existing name are REFUSED without a key of their own.
Both are layered (`_Layered`): a large `base` dict shared by the tables derived from one
another, and a small `recent` dict of what changed since (removed keys marked `_GONE`), so
that an update copies the recent changes, not the table. The fast path pays one look-up
in the small dict before the base (measured: about 400 CPU instructions of some 13,000 for
an A query, where shards by key hash cost 900). When `recent` outgrows an eighth of the
base, an update folds it into a new base (`FOLD_SHARE`). The slow path's dicts (shuffled
answers, chased names, their defaults) are `CowMap`s: shards copied on first write.

Updates (`Table.update`): the next catalog's table is derived from the previous one. The
lookup dicts are shared as described above (entries are never mutated), the answerer is
derived for the services that changed (`Answerer.derive`, copy on write as well), and
only the names those services had or have are encoded again: the service, endpoint,
`_proto` and `_port._proto` names, the reverse names of the addresses whose PTR changed,
the names of namespaces that appeared or went, ExternalName services pointing into the
zone (their answers follow their targets), and, when a changed service carries Consul
instances, the Consul names whose instances changed (the Consul answerer is made again
then). Everything else is reused. A full build is done instead when readiness changes,
when the zones are nested, when keys are not lower case, or when more than a third of the
services changed (`FULL_BUILD_SHARE`). The new table is then swapped in by the caller with
one reference assignment; a reply is always built from one table, so it never mixes
states.

SOA serial: negative answers (NXDOMAIN, NODATA) carry the zone's SOA, whose serial is the
catalog generation *of the last full build* (`Table.serial`): incremental updates keep it,
so the shared negative entries stay valid and an update never has to touch every name. A
resolver only reads the serial to decide on zone transfers, which are refused here; the
negative-caching TTL comes from the SOA's TTL and minimum, which do not change. Every
update produces one consistent table, so the serial a client sees is never mixed either.

Serving (`Table.respond`) does not parse the packet on the fast path. It checks the
header bytes, finds the question name's end, looks the key up, and returns

    query ID + precomputed flags/counts (RD and CD copied) + the query's own question bytes
    + the precomputed answer/authority/additional bytes [+ our OPT record]

Owner names in the precomputed sections are compression pointers into the question, so
the client's letter case comes back without any work (checklist 46). That works because
the question is copied byte for byte and a case-only difference never changes its length.
SRV targets may not be compressed (RFC 2782), so the zone inside them is a literal copy;
its offsets are remembered and patched with the client's spelling when it differs (47).

To know which names came from the question, entries are encoded against the question
spelled in UPPER case: `answer.py` repeats the question's spelling and writes catalog
names in lower case, so an exact-case match against an upper-case question suffix can
only be a name derived from the question. The stored bytes are then lower-cased.

A name in the zone that is not in the table gets the zone's negative answers, which
depend only on where the zone starts in the question (the SOA owner is a pointer there)
and on the qtype (`Answerer.names` documents this contract): they are encoded once per
offset, on first use, so no query can make the table grow beyond 254 such sets. The same
holds for negative answers of existing names, so those are encoded once per offset too.

Anything the fast path does not recognise (several questions, opcode other than QUERY,
class other than IN, EDNS version > 0, a compressed question, malformed bytes) goes to
`respond_slow`, which parses with dnslib and encodes `answer.py`'s response with dnslib.
Tests compare the two paths for every name of a sample catalog.

Three kinds of answer are not one stored byte string, and none of them is on the fast path
(a fast-path miss is one failed dict look-up, then `_miss`):

- Consul answers in random order (`Response.shuffle`, `consul.py`): stored as one chunk of
  bytes per record, encoded so that no record points into another (only into the
  question), and shuffled, cut to `answer_limit` and joined per query (`Shuffled`).
- Pod records (`pods="insecure"`): any address may be asked, so `<x>.<ns>.pod.<zone>` is
  answered on its first question and kept in a bounded cache.
- An ExternalName whose target is outside our zones, when the server forwards
  (`forwarding=True`): `respond` returns `CHASE` and the server asks the upstream for the
  target, then `chase_reply` joins the CNAME and the upstream's records (checklist 27, 28).

With several zones (the cluster zone, the Consul domain), the most specific zone that
contains the name answers it.
"""

from __future__ import annotations

import copy
import functools
import random
import socket
import struct
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import dnslib

from bridge.catalog.model import Catalog, Service, ServiceKey
from bridge.dns.answer import (
    AAAA,
    CNAME,
    NOT_OURS,
    NS,
    PODS_DISABLED,
    PTR,
    REFUSED,
    SOA,
    SRV,
    TXT,
    A,
    Answerer,
    Answers,
    Change,
    CowMap,
    NotOurs,
    QType,
    Rcode,
    Record,
    Response,
)
from bridge.dns.consul import ConsulAnswerer, ConsulOptions
from bridge.dns.query import Name, lower, parse, upper

# `update` builds afresh when more than this share of the services changed (and more than
# FULL_BUILD_MIN): copying the dicts and forgetting old names then costs more than it saves.
FULL_BUILD_SHARE = 1 / 3
FULL_BUILD_MIN = 64
MAX_SHARDS = 4096  # see `_shard_count`
FOLD_SHARE = 1 / 8  # see `_Layered`
FOLD_MIN = 4096
DEFAULT_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation on every path
MIN_UDP_PAYLOAD = 512
TCP_LIMIT = 65535
CLASS_IN = 1

_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
_NO_AR = b"\x00\x00"
_ONE_AR = b"\x00\x01"
_IN = b"\x00\x01"
_TRANSFERS = frozenset({b"\x00\xfb", b"\x00\xfc"})  # IXFR, AXFR: REFUSED for every name (52)
_TRANSFER_QTYPES = (QType.AXFR, QType.IXFR)
_TRANSFER_TAILS = frozenset({b"\x00\xfb\x00\x01", b"\x00\xfc\x00\x01"})  # + class IN
# qtype -> its bytes + class IN: the key suffixes a name may have in `entries`. Any other
# qtype is added when first stored (`_suffix`), so `_forget` knows every key a name can have.
_SUFFIXES: dict[int, bytes] = {int(q): int(q).to_bytes(2, "big") + b"\x00\x01"
                               for q in (QType.A, QType.AAAA, QType.AXFR, QType.IXFR)}
_QR, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_HEAD = struct.Struct(">HHHHH")  # flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
_A_HEAD = _RR_HEAD = struct.Struct(">HHIH")  # type, class, TTL, RDLENGTH
_SRV_HEAD = struct.Struct(">HHIHHHH")  # the same, then priority, weight, port
_POD_LABEL = b"\x03pod"
MAX_COMPUTED = 4096  # pod names answered on demand and kept: the cache is emptied when full
SERVFAIL = Response(Rcode.SERVFAIL, authoritative=False)


class Chase:
    """`respond`'s answer for an ExternalName to chase through the upstream (27, 28)."""

    _instance: Chase | None = None

    def __new__(cls) -> Chase:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CHASE"


CHASE = Chase()


class Shape(NamedTuple):
    """What truncating an `Entry` needs (one shared object per shape): where each RR ends
    in the body, the RRs per section, and the header flags."""

    ends: tuple[int, ...]
    counts: tuple[int, int, int]
    flags: int


class Entry(NamedTuple):
    """One precomputed response, minus the ID and the question (taken from the query).

    `heads[i]`/`heads[4 + i]` are flags + counts for i = RD | CD << 1 of the query, without
    and with our OPT record (shared between entries). `spots` are (body offset, question
    offset, length) of literal copies of a question suffix to re-spell. Five fields, the
    rarely read ones in `shape`: a table holds some 200,000 entries.
    """

    heads: tuple[bytes, ...]
    body: bytes
    size: int  # header + body: the response length without question and OPT
    spots: tuple[tuple[int, int, int], ...]
    shape: Shape

    @property
    def ends(self) -> tuple[int, ...]:
        return self.shape.ends

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.shape.counts

    @property
    def flags(self) -> int:
        return self.shape.flags


class Shuffled(NamedTuple):
    """A response served in random order: one chunk per record, shuffled per query.

    Each chunk is `(bytes, spots)`; its names point only into the question, never into
    another chunk, so chunks can be put in any order. `spots` are (chunk offset, question
    offset, length) as in `Entry`. `limit` > 0 keeps that many answer records at most.
    """

    answers: tuple[tuple[bytes, tuple[tuple[int, int, int], ...]], ...]
    rest: tuple[tuple[bytes, tuple[tuple[int, int, int], ...]], ...]  # authority, additional
    authority: int  # how many of `rest` are authority records
    limit: int
    flags: int


def wire(name: Name) -> bytes:
    """A name in uncompressed wire form. Raises ValueError for an unencodable name."""
    for label in name:
        if not 0 < len(label) <= 63:
            raise ValueError(f"bad label {label!r}")
    # Latin-1: one byte per character, so a label's length is its string's (a character
    # above U+00FF raises UnicodeEncodeError, a ValueError).
    out = "".join([chr(len(label)) + label for label in name]).encode("latin-1") + b"\x00"
    if len(out) > 255:
        raise ValueError("name longer than 255 bytes")
    return out


@functools.lru_cache(maxsize=1024)
def _literal(name: Name) -> bytes:
    """`wire(name)`, remembered for a while: SRV targets are written literally, each one in
    a few answers of the same service (its name, its `_port._proto` names, the endpoint)."""
    return wire(name)


def _wire_length(name: Name) -> int:
    return sum(len(label) for label in name) + len(name) + 1


def _suffix(qtype: int) -> bytes:
    found = _SUFFIXES.get(qtype)
    if found is None:
        found = _SUFFIXES.setdefault(qtype, qtype.to_bytes(2, "big") + _IN)
    return found


@functools.lru_cache(maxsize=4096)
def _heads(flags: int, counts: tuple[int, int, int]) -> tuple[bytes, ...]:
    """`Entry.heads` for these flags and counts: shared by entries."""
    heads = []
    for opt in (0, 1):
        for variant in range(4):
            bits = flags | (_RD if variant & 1 else 0) | (_CD if variant & 2 else 0)
            heads.append(_HEAD.pack(bits, 1, counts[0], counts[1], counts[2] + opt))
    return tuple(heads)


def _entry(flags: int, counts: tuple[int, int, int], body: bytes,
           spots: tuple[tuple[int, int, int], ...], ends: tuple[int, ...]) -> Entry:
    size = 12 + len(body)
    if size > 256:  # CPython shares the smaller ints already
        size = _intern(size)
    return Entry(_heads(flags, counts), body, size, _intern(spots) if spots else (),
                 _intern(Shape(ends, counts, flags)))


_INTERNED: dict[Any, Any] = {}


def _intern(value: Any) -> Any:
    """One shared copy of an immutable value (entries' sizes, spots and shapes repeat)."""
    key = (type(value), value)  # a Shape equals a plain tuple of the same items
    found = _INTERNED.get(key)
    if found is None:
        if len(_INTERNED) >= 1 << 16:
            _INTERNED.clear()  # bounded: sharing is lost for a while, nothing else
        found = _INTERNED.setdefault(key, value)
    return found


class _Writer:
    """Encodes records after a given question, compressing only on exact-case matches."""

    __slots__ = ("_question", "base", "buf", "offsets", "question", "register", "spots")

    def __init__(self, question: Name, question_wire: bytes, *, register: bool = True) -> None:
        self.register = register  # False: names written are never pointed at later
        self.base = 12 + len(question_wire) + 4
        self.buf = bytearray()
        self._question = question
        # Where each suffix of the question starts: made on first need (`_suffixes`); until
        # then only the whole question, which most records are owned by.
        self.question: dict[Name, int] | None = None
        self.offsets: dict[Name, int] = {question: 12} if question else {}
        self.spots: list[tuple[int, int, int]] = []

    def _suffixes(self) -> dict[Name, int]:
        question = self._question
        found: dict[Name, int] = {}
        offset = 12
        for i, label in enumerate(question):
            found[question[i:]] = offset
            offset += len(label) + 1  # the question encoded: one byte per character
        self.question = found
        self.offsets = dict(found)  # nothing else was registered before
        return found

    def name(self, name: Name, *, compress: bool = True) -> None:
        buf, offsets = self.buf, self.offsets
        if compress:
            pointer = offsets.get(name)  # the usual case: the whole name was written before
            if pointer is not None:
                buf += (0xC000 | pointer).to_bytes(2, "big")
                return
        question = self.question
        if question is None:
            question = self._suffixes()
            offsets = self.offsets
            if compress:
                pointer = offsets.get(name)
                if pointer is not None:
                    buf += (0xC000 | pointer).to_bytes(2, "big")
                    return
        register = self.register
        if not compress:
            # A literal copy (SRV targets), written in one go. The first suffix that is the
            # question's is remembered (to re-spell); it and every shorter suffix are in
            # `offsets` already, so only the longer ones are registered.
            encoded = _literal(name)
            start = at = len(buf)
            for i, label in enumerate(name):
                suffix = name[i:] if i else name
                if suffix in question:
                    self.spots.append((at, question[suffix], len(encoded) - (at - start)))
                    break
                if register:
                    here = self.base + at
                    if here < 0x4000 and suffix not in offsets:
                        offsets[suffix] = here
                at += len(label) + 1
            buf += encoded
            return
        for i, label in enumerate(name):
            suffix = name[i:] if i else name
            if i:
                pointer = offsets.get(suffix)
                if pointer is not None:
                    buf += (0xC000 | pointer).to_bytes(2, "big")
                    return
            if register:
                here = self.base + len(buf)
                if here < 0x4000 and suffix not in offsets:
                    offsets[suffix] = here
            data = label.encode("latin-1")
            if not 0 < len(data) <= 63:
                raise ValueError(f"bad label {label!r}")
            buf.append(len(data))
            buf += data
        buf.append(0)

    def record(self, record: Record) -> None:
        self.name(record.name)
        data = record.data
        kind = type(data)
        if kind is A:  # the usual record, written in one go
            self.buf += _A_HEAD.pack(1, CLASS_IN, record.ttl, 4) + \
                socket.inet_pton(socket.AF_INET, data.address)
            return
        self.buf += struct.pack(">HHI", data.rtype, CLASS_IN, record.ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"
        if kind is AAAA:
            self.buf += socket.inet_pton(socket.AF_INET6, data.address)
        elif isinstance(data, CNAME | PTR | NS):
            self.name(data.target)
        elif isinstance(data, SRV):
            self.buf += struct.pack(">HHH", data.priority, data.weight, data.port)
            self.name(data.target, compress=False)  # RFC 2782: no compression here
        elif isinstance(data, SOA):
            self.name(data.mname)
            self.name(data.rname)
            self.buf += struct.pack(">IIIII", data.serial, data.refresh, data.retry,
                                    data.expire, data.minimum)
        elif isinstance(data, TXT):
            for text in data.strings:
                raw = text.encode("utf-8")
                if len(raw) > 255:
                    raise ValueError("TXT string longer than 255 bytes")
                self.buf.append(len(raw))
                self.buf += raw
        self.buf[at:at + 2] = (len(self.buf) - at - 2).to_bytes(2, "big")


def _flags(response: Response, ra: bool) -> int:
    return _QR | (_AA if response.authoritative else 0) | (_RA if ra else 0) | \
        (int(response.rcode) & 0xF)


def encode(question: Name, response: Response, question_wire: bytes | None = None, *,
           ra: bool = False) -> Entry:
    """`response` as an Entry to be sent after any question of `question`'s length.

    `question` is the spelling the response was computed for (upper case in tables); `ra`
    sets RA (recursion available: the server forwards what is not ours).
    """
    if question_wire is None:
        question_wire = wire(question)
    answer = response.answer
    if question and not response.authority:
        # The usual shapes, written directly (the same bytes as the general writer's).
        if not response.additional:
            if all(type(r.data) is A and (r.name is question or r.name == question)
                   for r in answer):
                return _encode_addresses(response, answer, ra)
            if len(answer) == 1 and type(answer[0].data) is PTR:
                found = _encode_ptr(question, response, ra)
                if found is not None:
                    return found
        elif answer and type(answer[0].data) is SRV:
            found = _encode_srv(question, question_wire, response, ra)
            if found is not None:
                return found
    return _encode_written(question, question_wire, response, ra)


def _encode_written(question: Name, question_wire: bytes, response: Response, ra: bool
                    ) -> Entry:
    """`encode` by the general writer, record by record."""
    writer = _Writer(question, question_wire)
    ends: list[int] = []
    for section in (response.answer, response.authority, response.additional):
        for record in section:
            writer.record(record)
            ends.append(len(writer.buf))
    body = bytearray(writer.buf)
    # Store the literal copies in lower case, the spelling of the table's keys.
    lowered = question_wire.lower()
    for at, qoffset, length in writer.spots:
        body[at:at + length] = lowered[qoffset - 12:qoffset - 12 + length]
    counts = (len(response.answer), len(response.authority), len(response.additional))
    return _entry(_flags(response, ra), counts, bytes(body), tuple(writer.spots), tuple(ends))


def _encode_addresses(response: Response, answer: tuple[Record, ...], ra: bool) -> Entry:
    """`encode` for the usual answer: A records of the question's name, nothing else (the
    same bytes as the general writer: each owner is a pointer to the question)."""
    parts = []
    ends = []
    size = 0
    pack, pton, af = _A_HEAD.pack, socket.inet_pton, socket.AF_INET
    for record in answer:
        parts.append(b"\xc0\x0c" + pack(1, CLASS_IN, record.ttl, 4) + pton(af, record.data.address))
        size += 16
        ends.append(size)
    return _entry(_flags(response, ra), (len(answer), 0, 0), b"".join(parts), (), tuple(ends))


def _encode_ptr(question: Name, response: Response, ra: bool) -> Entry | None:
    """`encode` for one PTR record of the question's name whose target shares no suffix with
    the question (it ends otherwise): the target is written out. None for anything else."""
    record = response.answer[0]
    target = record.data.target  # type: ignore[union-attr]
    if not (record.name is question or record.name == question) or not target or \
            target[-1] == question[-1]:
        return None
    literal = wire(target)
    body = b"\xc0\x0c" + _RR_HEAD.pack(QType.PTR, CLASS_IN, record.ttl, len(literal)) + literal
    return _entry(_flags(response, ra), (1, 0, 0), body, (), (len(body),))


def _encode_srv(question: Name, question_wire: bytes, response: Response, ra: bool
                ) -> Entry | None:
    """`encode` for the usual SRV answer: SRV records of the question's name (targets
    written out, RFC 2782), then A/AAAA records of those targets pointing back at them. The
    same bytes as the general writer's, as long as every target has as many labels (so no
    target is a suffix of another) and lies in the first 16 KiB; None for anything else."""
    size = len(question)
    starts = []  # where the question's suffix from label i starts in the message
    offset = 12
    for label in question:
        starts.append(offset)
        offset += len(label) + 1
    base = 16 + len(question_wire)
    parts: list[bytes] = []
    spots: list[tuple[int, int, int]] = []
    ends: list[int] = []
    # target -> (where a name pointing at it points, labels it shares with the question's end)
    seen: dict[Name, tuple[int, int]] = {}
    length = 0
    labels = -1
    for record in response.answer:
        data = record.data
        if type(data) is not SRV or not (record.name is question or record.name == question):
            return None
        target = data.target
        count = len(target)
        if labels != count:
            if labels >= 0:
                return None
            labels = count
        literal = _literal(target)
        at = length + 18  # after owner pointer, type, class, TTL, length, priority, weight, port
        known = seen.get(target)
        if known is None:
            # The longest suffix spelled exactly as the question's (the zone, usually): the
            # writer's literal copy to re-spell; a target that is all of it is pointed at
            # there, any other where it is first written.
            shared = 0
            while shared < count and shared < size and \
                    target[count - 1 - shared] == question[size - 1 - shared]:
                shared += 1
            if shared == count:
                known = (starts[size - count], shared)
            elif base + at < 0x4000:
                known = (base + at, shared)
            else:
                return None
            seen[target] = known
        shared = known[1]
        if shared:
            tail = sum(map(len, target[count - shared:])) + shared + 1
            spots.append((at + len(literal) - tail, starts[size - shared], tail))
        parts.append(b"\xc0\x0c" + _SRV_HEAD.pack(QType.SRV, CLASS_IN, record.ttl,
                                                   6 + len(literal), data.priority,
                                                   data.weight, data.port) + literal)
        length = at + len(literal)
        ends.append(length)
    for record in response.additional:
        data = record.data
        known = seen.get(record.name)
        if known is None:
            return None
        if type(data) is A:
            parts.append((0xC000 | known[0]).to_bytes(2, "big") +
                         _A_HEAD.pack(1, CLASS_IN, record.ttl, 4) +
                         socket.inet_pton(socket.AF_INET, data.address))
            length += 16
        elif type(data) is AAAA:
            parts.append((0xC000 | known[0]).to_bytes(2, "big") +
                         _A_HEAD.pack(QType.AAAA, CLASS_IN, record.ttl, 16) +
                         socket.inet_pton(socket.AF_INET6, data.address))
            length += 28
        else:
            return None
        ends.append(length)
    body = bytearray(b"".join(parts))
    lowered = question_wire.lower()  # the literal copies in lower case, as in `encode`
    for at, qoffset, tail in spots:
        body[at:at + tail] = lowered[qoffset - 12:qoffset - 12 + tail]
    counts = (len(response.answer), 0, len(response.additional))
    return _entry(_flags(response, ra), counts, bytes(body), tuple(spots), tuple(ends))


def encode_shuffled(question: Name, response: Response, question_wire: bytes, *,
                    ra: bool = False) -> Shuffled:
    """`response` as position-independent record chunks (see `Shuffled`)."""
    writer = _Writer(question, question_wire, register=False)
    lowered = question_wire.lower()
    chunks: list[tuple[bytes, tuple[tuple[int, int, int], ...]]] = []
    for section in (response.answer, response.authority, response.additional):
        for record in section:
            start, known = len(writer.buf), len(writer.spots)
            writer.record(record)
            data = bytearray(writer.buf[start:])
            spots = tuple((at - start, qoffset, length)
                          for at, qoffset, length in writer.spots[known:])
            for at, qoffset, length in spots:
                data[at:at + length] = lowered[qoffset - 12:qoffset - 12 + length]
            chunks.append((bytes(data), spots))
    answers = len(response.answer)
    return Shuffled(tuple(chunks[:answers]), tuple(chunks[answers:]), len(response.authority),
                    response.answer_limit, _flags(response, ra))


def shuffled(response: Response) -> Response:
    """The answer records of `response` in random order, cut to its `answer_limit`."""
    if not response.shuffle:
        return response
    answer = response.answer
    keep = response.answer_limit if 0 < response.answer_limit < len(answer) else len(answer)
    return Response(response.rcode, tuple(random.sample(answer, keep)), response.authority,
                    response.additional, response.authoritative, response.chase)


def _filler(length: int) -> Name:
    """Labels of '-' that occupy exactly `length` wire bytes (length >= 2)."""
    out: list[str] = []
    while length > 0:
        size = min(length - 1, 63)
        if length - (size + 1) == 1:
            size -= 1  # never leave one byte: a label needs two
        out.append("-" * size)
        length -= size + 1
    return tuple(out)


def _opt_record(payload: int, do: bool) -> bytes:
    """Our OPT RR: root owner, our UDP payload size, version 0, DO echoed, no options."""
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + b"\x00\x00" + \
        (b"\x80\x00" if do else b"\x00\x00") + b"\x00\x00"


def header_only(packet: bytes, rcode: Rcode) -> bytes | None:
    """A reply with no sections (FORMERR, NOTIMP, SERVFAIL), or None if it must be dropped.

    Needs a readable header; never answers a response (QR set), so two servers cannot be
    made to bounce packets at each other.
    """
    if len(packet) < 12 or packet[2] & 0x80:
        return None
    flags = _QR | ((packet[2] & 0x79) << 8) | (packet[3] & 0x10) | (int(rcode) & 0xF)
    return packet[:2] + _HEAD.pack(flags, 0, 0, 0, 0)


class _Zone(NamedTuple):
    """One zone the table answers: its answerer, and its name in the forms the table needs."""

    answerer: Answerer | ConsulAnswerer
    labels: Name  # lower case
    wire: bytes  # lower case
    upper: Name
    pods: bool  # `<x>.<ns>.pod.<zone>` names are answered one by one (pods insecure)


def _labels_of(name_wire: bytes) -> Name:
    """The labels of an uncompressed wire name known to be well formed."""
    out: list[str] = []
    at = 0
    while name_wire[at]:
        size = name_wire[at]
        out.append(name_wire[at + 1:at + 1 + size].decode("latin-1"))
        at += size + 1
    return tuple(out)


class _Gone:
    """Marks a key removed in a layer's `recent` dict while the base still holds it."""

    def __repr__(self) -> str:
        return "GONE"


_GONE: Any = _Gone()


class _Layered:
    """A lookup dict as `base` + `recent` changes, for `Table`'s fast path.

    Tables derived from one another share `base` (never written once shared) and copy
    `recent` on their first write. A reader looks in `recent` first: a value there wins,
    `_GONE` means absent; otherwise `base` answers. `fold` makes a new base.
    """

    __slots__ = ("base", "fresh", "owned", "recent")

    def __init__(self) -> None:
        self.base: dict[bytes, Any] = {}
        self.recent: dict[bytes, Any] = {}
        self.fresh = True  # being built: writes go straight to `base`
        self.owned = True  # `recent` is this version's own

    def derive(self) -> _Layered:
        self.fresh = self.owned = False  # both dicts are shared from now on
        new = _Layered.__new__(_Layered)
        new.base, new.recent, new.fresh, new.owned = self.base, self.recent, False, False
        return new

    def get(self, key: bytes) -> Any:
        value = self.recent.get(key)
        if value is None:
            return self.base.get(key)
        return None if value is _GONE else value

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def _writable(self) -> dict[bytes, Any]:
        if self.fresh:
            return self.base
        if not self.owned:
            self.recent = dict(self.recent)
            self.owned = True
        return self.recent

    def __setitem__(self, key: bytes, value: Any) -> None:
        self._writable()[key] = value

    def pop(self, key: bytes) -> Any:
        """Remove `key`; its value, or None if it had none."""
        value = self.get(key)
        if value is not None:
            if self.fresh:
                del self.base[key]
            elif key in self.base:
                self._writable()[key] = _GONE
            else:
                self._writable().pop(key, None)
        return value

    def fold(self) -> None:
        """`recent` merged into a new `base` (the old base stays as it is for its tables)."""
        base = dict(self.base)
        for key, value in self.recent.items():
            if value is _GONE:
                base.pop(key, None)
            else:
                base[key] = value
        self.base, self.recent, self.owned = base, {}, True

    def items(self) -> Iterator[tuple[bytes, Any]]:
        recent = self.recent
        for key, value in self.base.items():
            if key not in recent:
                yield key, value
        for key, value in recent.items():
            if value is not _GONE:
                yield key, value

    def __len__(self) -> int:
        return sum(1 for _ in self.items())


def _shard_count(services: int) -> int:
    """Shards per lookup dict: a power of two near half the number of services (shards of
    some 30 names), so that a changed service copies a few small shards."""
    return min(MAX_SHARDS, max(64, 1 << (services // 2).bit_length()))


def changed_keys(old: Mapping[ServiceKey, Service], new: Mapping[ServiceKey, Service]
                  ) -> list[ServiceKey]:
    """The keys whose service differs between two catalogs (added, removed or changed).

    Catalogs of consecutive passes list their services in the same order and keep the
    unchanged ones as the same objects: both are walked side by side (identity checks)
    while their keys agree, and only the rest is compared by key look-ups.
    """
    changed: list[ServiceKey] = []
    news, olds = iter(new.items()), iter(old.items())
    rest_new: list[tuple[ServiceKey, Service]] = []
    rest_old: list[tuple[ServiceKey, Service]] = []
    for key, service in news:
        pair = next(olds, None)
        if pair is None:
            rest_new.append((key, service))
            break
        before_key, before = pair
        if before is service and before_key is key:
            continue
        if before_key is key or before_key == key:
            if before != service:
                changed.append(key)
            continue
        rest_new.append((key, service))
        rest_old.append(pair)
        break
    rest_new += news
    rest_old += olds
    get = old.get
    for key, service in rest_new:  # none of these keys is in the walked part of `old`
        before = get(key)
        if before is not service and before != service:
            changed.append(key)
    changed += [key for key, _ in rest_old if key not in new]
    return changed


class _Settings(NamedTuple):
    """What a table is built with besides the catalog: `update` builds the next one alike."""

    zone: str
    ttl: int
    ns_addresses: tuple[str, ...]
    udp_payload: int
    pods: str
    ignore_empty_service: bool
    consul: ConsulOptions | None
    forwarding: bool


class Table:
    """The precomputed answers for one catalog plus the packet handler serving them.

    `pods`, `ignore_empty_service`: see `answer.Answerer`. `consul`: also serve the Consul
    domain (`consul.py`). `forwarding`: the server forwards names that are not ours, so
    replies say RA and ExternalName targets outside our zones are chased (`CHASE`).
    `serial`: the SOA serial, by default the catalog's generation. `update` derives the
    table of a next catalog.
    """

    # Slots: the fast path reads attributes on every query, and a slot is the quickest
    # attribute (an instance dict of more than 30 keys loses CPython's fast path). The
    # `__dict__` slot lets tests replace a method on one table.
    __slots__ = ("__dict__", "_by_id", "_chases", "_computed", "_defaults", "_defaults_base",
                 "_defaults_recent", "_entries", "_entries_base", "_entries_recent",
                 "_negatives", "_nested", "_opt", "_refused", "_servfail", "_shared",
                 "_shuffled", "_skipped", "_slow_defaults", "_special", "_zones", "answerer",
                 "catalog", "consul", "encoded", "forwarding", "generation", "incremental",
                 "serial", "settings", "udp_payload")

    def __init__(self, catalog: Catalog, zone: str, ttl: int, *,
                 ns_addresses: Sequence[str] = (),
                 udp_payload: int = DEFAULT_UDP_PAYLOAD,
                 pods: str = PODS_DISABLED,
                 ignore_empty_service: bool = False,
                 consul: ConsulOptions | None = None,
                 forwarding: bool = False,
                 serial: int | None = None) -> None:
        self.settings = _Settings(zone, ttl, tuple(ns_addresses), udp_payload, pods,
                                  ignore_empty_service, consul, forwarding)
        self.catalog = catalog
        self.generation = catalog.generation
        self.serial = (catalog.generation if serial is None else serial) & 0xFFFFFFFF
        answerer = Answerer(catalog, zone, ttl, ns_addresses=ns_addresses, pods=pods,
                            ignore_empty_service=ignore_empty_service, serial=self.serial)
        consul_answerer: ConsulAnswerer | None = None
        if consul is not None and consul.domain:
            consul_answerer = ConsulAnswerer(catalog, consul, ns_addresses=ns_addresses,
                                             serial=self.serial)
            if consul_answerer.zone == answerer.zone:
                raise ValueError("the Consul domain must differ from the cluster zone")
        self.forwarding = forwarding
        self.udp_payload = max(MIN_UDP_PAYLOAD, udp_payload)
        self._opt = (_opt_record(self.udp_payload, False), _opt_record(self.udp_payload, True))
        self._use(answerer, consul_answerer)
        # The lookup dicts: `update` shares them with the next table (`_Layered`, `CowMap`).
        # lower-case wire name + qtype + class -> the answer, where not the name's default
        self._entries = _Layered()
        # lower-case wire name -> the answer for any qtype without an entry of its own
        self._defaults = _Layered()
        # The same for names with shuffled or chased answers: never used by the fast path.
        shards = _shard_count(len(catalog.services))
        self._slow_defaults: CowMap[bytes, Entry] = CowMap(shards=shards)
        self._shuffled: CowMap[bytes, Shuffled] = CowMap(shards=shards)  # random order
        self._chases: CowMap[bytes, None] = CowMap(shards=shards)  # ExternalNames to chase
        self._special = False  # True once a name has gone to the three dicts above
        self._bind()
        self._skipped: dict[Name, str] = {}  # names that could not be encoded (not fatal)
        self._refused = encode((), REFUSED, ra=forwarding)
        self._servfail = encode((), SERVFAIL, ra=forwarding)
        # Encoded responses shared between names: (zone offset or -1, response) -> entry,
        # and the same by the response's identity (answerers hand out one object each).
        self._shared: dict[tuple[int, Response], Entry] = {(-1, REFUSED): self._refused}
        self._by_id: dict[tuple[int, int], tuple[Response, Entry]] = {}
        # Absent names, by zone and by the byte offset of the zone in the name: at most 254
        # shapes per zone.
        self._negatives: dict[tuple[int, int], tuple[dict[int, Entry | Shuffled], Entry]] = {}
        self._computed: dict[bytes, tuple[dict[int, Entry | Shuffled], Entry]] = {}
        self.incremental = False  # True when `update` derived this table from another
        self.encoded = 0  # names encoded to make this table
        for index in reversed(range(len(self._zones))):  # the more specific zone wins a name
            self._add_zone(index)

    def _use(self, answerer: Answerer, consul: ConsulAnswerer | None) -> None:
        self.answerer = answerer
        self.consul = consul
        zones = [self._zone(answerer, answerer.dynamic_pods)]
        if consul is not None:
            zones.append(self._zone(consul, False))
        self._zones = tuple(sorted(zones, key=lambda z: -len(z.labels)))  # most specific first
        # Zones inside zones (consul_domain under the cluster zone, or the reverse) may list
        # the same name twice: then the more specific zone's entries replace the other's.
        self._nested = any(inner.labels[len(inner.labels) - len(outer.labels):] == outer.labels
                           for inner in self._zones for outer in self._zones if inner is not outer)

    @staticmethod
    def _zone(answerer: Answerer | ConsulAnswerer, pods: bool) -> _Zone:
        return _Zone(answerer, answerer.zone, wire(answerer.zone),
                     tuple(upper(label) for label in answerer.zone), pods)

    def _bind(self) -> None:
        # What the fast path reads, one attribute each.
        self._entries_recent, self._entries_base = self._entries.recent, self._entries.base
        self._defaults_recent = self._defaults.recent
        self._defaults_base = self._defaults.base

    # Merged views of the lookup dicts (copies: for tests and diagnostics, not for serving).

    @property
    def entries(self) -> dict[bytes, Entry]:
        """lower-case wire name + qtype + class -> the answer, where not the default."""
        return dict(self._entries.items())

    @property
    def defaults(self) -> dict[bytes, Entry]:
        """lower-case wire name -> the answer for any qtype without an entry."""
        return dict(self._defaults.items())

    @property
    def slow_defaults(self) -> dict[bytes, Entry]:
        """`defaults` of names with shuffled or chased answers: not for the fast path."""
        return dict(self._slow_defaults.items())

    @property
    def shuffled(self) -> dict[bytes, Shuffled]:
        """Like `entries`: answers served in random order (Consul)."""
        return dict(self._shuffled.items())

    @property
    def chases(self) -> set[bytes]:
        """Like `entries`: keys of ExternalName targets to chase through the upstream."""
        return set(self._chases)

    @property
    def skipped(self) -> list[str]:
        """Names that could not be encoded, with the reason (reported, not fatal)."""
        return list(self._skipped.values())

    def _add_zone(self, index: int) -> None:
        zone = self._zones[index]
        answerer = zone.answerer
        if isinstance(answerer, Answerer):
            self._add_listed(answerer.listed(upper, zone.upper))
        else:
            for name in answerer.names():
                self._add_name(index, name)

    # --- the next catalog ---------------------------------------------------------------

    def update(self, catalog: Catalog, changed: Sequence[ServiceKey] | None = None) -> Table:
        """The table for `catalog`, derived from this one: only what changed is encoded
        again (see the module's docstring). This table does not change; the caller swaps
        the new one in. Builds afresh when deriving does not pay or does not apply.
        `changed`: the keys whose service differs from this table's catalog, when the
        caller knows them (else they are found by comparing the two catalogs).
        """
        previous = self.catalog
        if catalog is previous:
            return self
        if self._nested or catalog.ready != previous.ready \
                or (not previous.ready and not previous.services):
            # The start-up placeholder: deriving from it saves nothing, and the first real
            # catalog should carry its own generation as the serial.
            return self.rebuilt(catalog)
        old, new = previous.services, catalog.services
        if changed is None:
            changed = changed_keys(old, new)
        if len(changed) > max(FULL_BUILD_MIN, len(new) * FULL_BUILD_SHARE):
            return self.rebuilt(catalog)
        derived = self.answerer.derive(catalog, previous, changed)
        if derived is None:
            return self.rebuilt(catalog)
        answerer, change = derived
        consul = self.consul
        if consul is not None and any(ConsulAnswerer.serves(old.get(key)) or
                                      ConsulAnswerer.serves(new.get(key)) for key in changed):
            assert self.settings.consul is not None
            consul = ConsulAnswerer(catalog, self.settings.consul,
                                    ns_addresses=self.settings.ns_addresses, serial=self.serial)
        table = self._successor(catalog, answerer, consul)
        table._apply(self, change)
        for layered in (table._entries, table._defaults):
            if len(layered.recent) > max(FOLD_MIN, len(layered.base) * FOLD_SHARE):
                layered.fold()
        table._bind()
        return table

    def rebuilt(self, catalog: Catalog) -> Table:
        """A table built afresh for `catalog` with this one's settings (a new serial)."""
        return Table(catalog, **self.settings._asdict())

    def _successor(self, catalog: Catalog, answerer: Answerer, consul: ConsulAnswerer | None
                   ) -> Table:
        table = copy.copy(self)  # settings, OPT records, shared caches of entries...
        table.catalog = catalog
        table.generation = catalog.generation
        table._use(answerer, consul)
        table._entries = self._entries.derive()  # shared until written
        table._defaults = self._defaults.derive()
        table._slow_defaults = self._slow_defaults.derive()
        table._shuffled = self._shuffled.derive()
        table._chases = self._chases.derive()
        table._bind()
        table._skipped = dict(self._skipped)
        table._shared = dict(self._shared)
        table._by_id = {}
        # Absent names answer the same (same zones, serial and readiness); pod names are
        # answered from the catalog, so those are asked again.
        table._negatives = dict(self._negatives)
        table._computed = {}
        table.incremental = True
        table.encoded = 0
        return table

    def _apply(self, previous: Table, change: Change) -> None:
        """Forget and encode again the names `change` touches, and the Consul names."""
        old, new = previous.answerer, self.answerer
        zone = next(z for z in self._zones if z.answerer is new)
        for key in change.services:
            self._forget_all(old.service_names(key))
            self._add_listed(new.service_listed(key, upper, zone.upper))
        for namespace in change.namespaces:
            self._forget_all(old.namespace_names(namespace))
            self._add_listed(new.namespace_listed(namespace, upper, zone.upper))
        self._forget_all(old.reverse_names(change.addresses))
        self._add_listed(new.reverse_listed(change.addresses, upper))
        if self.consul is not None and self.consul is not previous.consul:
            assert previous.consul is not None
            index = next(i for i, z in enumerate(self._zones) if z.answerer is self.consul)
            for name, exists in self.consul.changed_names(previous.consul):
                self._forget_all((name,))
                if exists:
                    self._add_name(index, name)

    def _forget_all(self, names: Iterable[Name]) -> None:
        for name in names:
            self._skipped.pop(name, None)
            try:
                lname = wire(name)
            except ValueError:
                continue  # never stored
            self._forget(lname)

    def _forget(self, lname: bytes) -> None:
        """Remove every key of name `lname`, if it is stored (`CowMap.pop` copies only the
        shards that hold one)."""
        if self._defaults.pop(lname) is None and self._slow_defaults.pop(lname) is None:
            return  # not stored (skipped, or gone already): no key to remove
        entries, shuffled, chases = self._entries, self._shuffled, self._chases
        special = self._special  # else `shuffled` and `chases` are empty
        for suffix in tuple(_SUFFIXES.values()):
            key = lname + suffix
            entries.pop(key)
            if special:
                shuffled.pop(key)
                chases.pop(key)

    # --- encoding names -----------------------------------------------------------------

    def _answers(self, zone: _Zone, spelled: Name) -> tuple[Answers | NotOurs, Name]:
        """The answers for a name of `zone`, and the zone as the name spells it."""
        answerer = zone.answerer
        if isinstance(answerer, Answerer):
            query = parse(spelled, answerer.zone)
            return answerer.answers_query(query), query.zone
        return answerer.answers(spelled), spelled[len(spelled) - len(zone.labels):]

    def answer(self, qname: str | Sequence[str | bytes], qtype: int) -> Response | NotOurs:
        """`answer.py`'s response for a question, from the zone that holds the name."""
        for zone in self._zones:
            response = zone.answerer.answer(qname, qtype)
            if not isinstance(response, NotOurs):
                return response
        return NOT_OURS

    def _add_name(self, index: int, name: Name) -> None:
        """Encode and store one listed name, asking its zone's answerer."""
        spelled = tuple(upper(label) for label in name)
        try:
            answers, zone = self._answers(self._zones[index], spelled)
        except (ValueError, struct.error) as exc:
            self._skipped[name] = f"{'.'.join(name)}: {exc}"
            return
        if isinstance(answers, NotOurs):
            self._skipped[name] = f"{'.'.join(name)}: listed name is not ours"
            return
        self._add(spelled, zone, answers)

    def _add_listed(self, listed: Iterable[tuple[Name, Name, Answers]]) -> None:
        add = self._add
        for spelled, zone, answers in listed:
            add(spelled, zone, answers)

    def _add(self, spelled: Name, zone: Name, answers: Answers) -> None:
        """Encode and store one name: `spelled` in upper case, its zone as spelled there."""
        self.encoded += 1
        try:
            question = wire(spelled)
            default, by_type, special = self._encode_answers(spelled, question, zone, answers)
        except (ValueError, struct.error) as exc:
            name = tuple(map(lower, spelled))  # as the answerer lists it
            self._skipped[name] = f"{'.'.join(name)}: {exc}"
            return
        lname = question.lower()
        if lname in self._defaults or lname in self._slow_defaults:
            self._forget(lname)  # listed again (nested zones): the last one wins
        refused = self._refused
        if not special:  # the common case, kept lean: the build is paid on every change
            stored = [(lname + (_SUFFIXES.get(qtype) or _suffix(qtype)), entry)
                      for qtype, entry in by_type.items()
                      if entry is not default and (entry is not refused or
                                                   qtype not in _TRANSFER_QTYPES)]
            if default is not refused:  # transfers not named: the default, not REFUSED
                stored += [(lname + _SUFFIXES[qtype], default)
                           for qtype in _TRANSFER_QTYPES if qtype not in by_type]
            # Stub resolvers ask A and AAAA together: a name with addresses of one family
            # gets a key for the other too (NODATA), to answer both on the first look-up.
            a, aaaa = by_type.get(QType.A), by_type.get(QType.AAAA)
            if a is not None and aaaa is not None and (a is default) != (aaaa is default):
                stored.append((lname + _SUFFIXES[QType.AAAA if a is not default else QType.A],
                               default))
            self._defaults[lname] = default
            self._entries._writable().update(stored)
            return
        entries = self._entries
        self._special = True  # `_miss` looks in the slow dicts from now on
        self._slow_defaults[lname] = default
        for qtype in {**by_type, **dict.fromkeys(_TRANSFER_QTYPES)}:
            encoded = by_type.get(qtype, default)
            full = lname + _suffix(qtype)
            if isinstance(encoded, Shuffled):
                self._shuffled[full] = encoded
            elif self.forwarding and answers.get(qtype).chase is not None:
                self._chases[full] = None
            elif qtype in _TRANSFER_QTYPES:
                if encoded is not refused:
                    entries[full] = encoded
            elif encoded is not default:
                entries[full] = encoded

    def _encode_answers(self, spelled: Name, question: bytes, zone: Name, answers: Answers
                        ) -> tuple[Entry, dict[int, Entry | Shuffled], bool]:
        """(default, entries by qtype, special): special when an answer is served in random
        order, or (forwarding) is an ExternalName chased through the upstream."""
        prefix = len(question) - _wire_length(zone)
        forwarding = self.forwarding
        special = False
        # Keyed by identity: the responses stay alive in `answers` for the whole loop.
        done: dict[int, Entry | Shuffled] = {}
        by_type: dict[int, Entry | Shuffled] = {}
        for qtype, response in answers.by_type.items():
            entry = done.get(id(response))
            if entry is None:
                if response.shuffle:
                    special = True
                    entry = encode_shuffled(spelled, response, question, ra=forwarding)
                else:
                    entry = self._encode_for(spelled, question, prefix, zone, response)
                done[id(response)] = entry
            if forwarding and response.chase is not None:
                special = True
            by_type[qtype] = entry
        default = done.get(id(answers.default))
        if default is None or type(default) is Shuffled:
            default = self._encode_for(spelled, question, prefix, zone,
                                       shuffled(answers.default))
        assert type(default) is Entry
        return default, by_type, special

    def _encode_for(self, spelled: Name, question: bytes, prefix: int, zone: Name,
                    response: Response) -> Entry:
        """Encode, sharing pure negatives (NODATA, NXDOMAIN) and empty responses between
        names.

        A response whose only record is the zone SOA encodes the same for every question
        whose zone starts `prefix` bytes in: its names are the zone (a pointer there) and
        `ns.dns`/`hostmaster` + zone, whose lower-case labels never match the upper-case
        question exactly, so nothing else from the question is referenced. A response with
        no record at all (REFUSED) encodes the same for every question.
        """
        known = self._by_id.get((prefix, id(response)))
        if known is not None and known[0] is response:
            return known[1]
        if response.answer or response.additional:
            return encode(spelled, response, question, ra=self.forwarding)
        authority = response.authority
        if not authority:
            key = (-1, response)
        elif len(authority) == 1 and authority[0].name == zone:
            key = (prefix, response)
        else:
            return encode(spelled, response, question, ra=self.forwarding)
        entry = self._shared.get(key)
        if entry is None:
            entry = self._shared[key] = encode(spelled, response, question, ra=self.forwarding)
        if len(self._by_id) >= 4096:
            self._by_id.clear()
        self._by_id[(prefix, id(response))] = (response, entry)
        return entry

    # --- serving ------------------------------------------------------------------------

    def respond(self, packet: bytes, tcp: bool = False) -> bytes | NotOurs | Chase | None:
        """The reply to one query packet; NOT_OURS for names we do not serve; CHASE for an
        ExternalName whose target the upstream must resolve; None to drop.

        Never raises for any input (checked by a fuzz test); the server still guards it.
        """
        # Fast path: one question, no answer/authority records, a query with opcode QUERY.
        if len(packet) >= 17 and packet[4:10] == _QUERY_COUNTS and not packet[2] & 0xF8:
            end = packet.find(0, 12) + 1
            # A stored key is a valid uncompressed name, so if the bytes from offset 12
            # equal one, a proper label walk ends at the same place: no walk needed here.
            name = packet[12:end].lower()
            tail = packet[end:end + 4]
            key = name + tail
            entry = self._entries_recent.get(key)  # what changed lately, then the rest
            if entry is None:
                entry = self._entries_base.get(key)
            elif entry is _GONE:
                entry = None
            if entry is None:
                # No entry of its own for this qtype: the name's default (class IN only;
                # transfers are REFUSED, in `_miss`).
                if not tail.endswith(_IN) or tail in _TRANSFER_TAILS:
                    return self._miss(packet, tcp)
                entry = self._defaults_recent.get(name)
                if entry is None:
                    entry = self._defaults_base.get(name)
                elif entry is _GONE:
                    entry = None
                if entry is None:
                    return self._miss(packet, tcp, end)
            qend = end + 4
            count = packet[10:12]
            if count == _NO_AR and len(packet) == qend:
                opt = b""
                limit = TCP_LIMIT if tcp else MIN_UDP_PAYLOAD
            elif count == _ONE_AR and (edns := self._edns(packet, qend)) is not None:
                opt, limit = edns
                if tcp:
                    limit = TCP_LIMIT
            else:
                return self._miss(packet, tcp)
            if entry.spots or entry.size + qend - 12 + len(opt) > limit:
                return self._emit(packet, qend, entry, opt, limit)
            variant = (packet[2] & 1) | ((packet[3] >> 3) & 2)
            return packet[:2] + entry.heads[(variant | 4) if opt else variant] + \
                packet[12:qend] + entry.body + opt
        return self._miss(packet, tcp)

    def _edns(self, packet: bytes, at: int) -> tuple[bytes, int] | None:
        """(our OPT record, UDP size limit) for a well-formed version-0 OPT ending the query."""
        if len(packet) < at + 11 or packet[at] or packet[at + 1] or packet[at + 2] != 41:
            return None
        if packet[at + 6]:
            return None  # EDNS version > 0: the slow path answers BADVERS (55)
        if at + 11 + ((packet[at + 9] << 8) | packet[at + 10]) != len(packet):
            return None
        payload = (packet[at + 3] << 8) | packet[at + 4]
        # Never more than our own size, and never less than the 512 of plain DNS (RFC 6891).
        limit = max(MIN_UDP_PAYLOAD, min(payload, self.udp_payload))
        return self._opt[1 if packet[at + 7] & 0x80 else 0], limit

    def _scan(self, packet: bytes, tcp: bool) -> tuple[int, list[int], bytes, int] | None:
        """Walk a simple query's question: (name end, label offsets, OPT, limit) or None."""
        if len(packet) < 17 or packet[4:10] != _QUERY_COUNTS or packet[2] & 0xF8:
            return None
        size = len(packet)
        offsets: list[int] = []
        pos = 12
        while True:
            if pos >= size:
                return None
            length = packet[pos]
            if length == 0:
                break
            if length > 63 or pos + length - 12 >= 254:
                return None  # compression pointer, reserved label type, or too long
            offsets.append(pos)
            pos += length + 1
        end = pos + 1
        qend = end + 4
        if size < qend or packet[end + 2:qend] != _IN:
            return None
        count = packet[10:12]
        if count == _NO_AR and size == qend:
            return end, offsets, b"", TCP_LIMIT if tcp else MIN_UDP_PAYLOAD
        if count == _ONE_AR and (edns := self._edns(packet, qend)) is not None:
            return end, offsets, edns[0], TCP_LIMIT if tcp else edns[1]
        return None

    def _miss(self, packet: bytes, tcp: bool, missed: int = 0
              ) -> bytes | NotOurs | Chase | None:
        """`respond` for whatever the fast path did not answer. `missed`: where the question
        name ends if the fast path found neither an entry nor a default for it."""
        scanned = self._scan(packet, tcp)
        if scanned is None:
            return self.respond_slow(packet, tcp)
        end, offsets, opt, limit = scanned
        lname = packet[12:end].lower()
        key = lname + packet[end:end + 4]
        looked = missed == end  # the same name (a label may hold a zero byte) and key
        entry: Entry | Shuffled | None = None
        if not looked:
            entry = self._entries.get(key)
        if entry is None:
            special = self._special  # else the three dicts of special names are empty
            if special:
                entry = self._shuffled.get(key)
                if entry is None and key in self._chases:
                    return CHASE
            if entry is None:
                if not looked:
                    entry = self._defaults.get(lname)
                if entry is None and special:
                    entry = self._slow_defaults.get(lname)
                if entry is None:
                    entry = self._absent(packet, end, offsets, lname)
                    if entry is None:
                        return NOT_OURS
                elif packet[end:end + 2] in _TRANSFERS:
                    entry = self._refused  # 52, for every name that exists
        if isinstance(entry, Shuffled):
            return self._emit_shuffled(packet, end + 4, entry, opt, limit)
        return self._emit(packet, end + 4, entry, opt, limit)

    def _absent(self, packet: bytes, end: int, offsets: list[int], lname: bytes
                ) -> Entry | Shuffled | None:
        """The answer for a name no table lists: a zone's negative, a pod record, or None."""
        qtype = (packet[end] << 8) | packet[end + 1]
        for index, zone in enumerate(self._zones):
            zone_at = end - len(zone.wire)
            if zone_at < 12 or packet[zone_at:end].lower() != zone.wire or \
                    zone_at not in offsets:
                continue
            if zone.pods and offsets.index(zone_at) == 3 and \
                    packet[offsets[2]:offsets[2] + 4].lower() == _POD_LABEL:
                by_type, default = self._pod(lname)  # 50
            else:
                by_type, default = self._negative(index, zone_at - 12)
            return by_type.get(qtype, default)
        return None

    def _pod(self, lname: bytes) -> tuple[dict[int, Entry | Shuffled], Entry]:
        """Answers for `<x>.<ns>.pod.<zone>`, computed on first use and cached (bounded)."""
        found = self._computed.get(lname)
        if found is None:
            spelled = tuple(upper(label) for label in _labels_of(lname))
            query = parse(spelled, self.answerer.zone)
            answers = self.answerer.answers_query(query)
            assert isinstance(answers, Answers)
            default, by_type, _ = self._encode_answers(spelled, lname, query.zone, answers)
            if len(self._computed) >= MAX_COMPUTED:
                self._computed.clear()
            found = self._computed[lname] = (by_type, default)
        return found

    def _negative(self, index: int, prefix: int) -> tuple[dict[int, Entry | Shuffled], Entry]:
        """Answers for an absent name of zone `index` whose zone starts `prefix` bytes in.

        The answerers promise they depend on nothing else, so a stand-in name of that shape
        is asked once and its encoding serves every absent name of the shape.
        """
        found = self._negatives.get((index, prefix))
        if found is None:
            zone = self._zones[index]
            question = _filler(prefix) + zone.upper
            answers, spelled_zone = self._answers(zone, question)
            assert isinstance(answers, Answers)
            default, by_type, _ = self._encode_answers(question, wire(question), spelled_zone,
                                                       answers)
            found = self._negatives[(index, prefix)] = (by_type, default)
        return found

    def _emit(self, packet: bytes, qend: int, entry: Entry, opt: bytes, limit: int) -> bytes:
        """The general response builder: re-spelling, truncation, OPT."""
        body = entry.body
        if entry.spots:
            patched = None
            for at, qoffset, length in entry.spots:
                spelled = packet[qoffset:qoffset + length]
                if spelled != body[at:at + length]:
                    if patched is None:
                        patched = bytearray(body)
                    patched[at:at + length] = spelled
            if patched is not None:
                body = bytes(patched)
        variant = (packet[2] & 1) | ((packet[3] >> 3) & 2)
        if entry.size + qend - 12 + len(opt) <= limit:
            return packet[:2] + entry.heads[(variant | 4) if opt else variant] + \
                packet[12:qend] + body + opt
        # 56: keep the longest prefix of whole RRs that fits and set TC. Compression
        # pointers only point backwards, so every kept RR stays valid.
        ends, (answer, authority, _), flags = entry.shape
        keep = bisect_right(ends, limit - qend - len(opt))
        an = min(answer, keep)
        ns = min(authority, keep - an)
        ar = keep - an - ns + (1 if opt else 0)
        flags |= _TC | (_RD if variant & 1 else 0) | (_CD if variant & 2 else 0)
        cut = ends[keep - 1] if keep else 0
        return packet[:2] + _HEAD.pack(flags, 1, an, ns, ar) + packet[12:qend] + \
            body[:cut] + opt

    @staticmethod
    def _emit_shuffled(packet: bytes, qend: int, entry: Shuffled, opt: bytes, limit: int
                       ) -> bytes:
        """A `Shuffled` response: answers in random order (cut to its limit), then the rest."""
        answers = entry.answers
        count = entry.limit if 0 < entry.limit < len(answers) else len(answers)
        chunks = [*random.sample(answers, count), *entry.rest]
        room = limit - qend - len(opt)
        parts: list[bytes] = []
        for data, spots in chunks:
            for at, qoffset, length in spots:
                spelled = packet[qoffset:qoffset + length]
                if spelled != data[at:at + length]:
                    data = data[:at] + spelled + data[at + length:]
            room -= len(data)
            if room < 0:
                break  # 56: whole RRs only; TC below
            parts.append(data)
        keep = len(parts)
        an = min(count, keep)
        ns = min(entry.authority, keep - an)
        ar = keep - an - ns + (1 if opt else 0)
        variant = (packet[2] & 1) | ((packet[3] >> 3) & 2)
        flags = entry.flags | (_TC if keep < len(chunks) else 0) | \
            (_RD if variant & 1 else 0) | (_CD if variant & 2 else 0)
        return packet[:2] + _HEAD.pack(flags, 1, an, ns, ar) + packet[12:qend] + \
            b"".join(parts) + opt

    def refuse(self, packet: bytes, tcp: bool = False) -> bytes | None:
        """REFUSED for a question that is not ours (57): the question and OPT echoed."""
        scanned = self._scan(packet, tcp)
        if scanned is None:
            reply = self.respond_slow(packet, tcp, refuse=True)
            return reply if isinstance(reply, bytes) else None
        end, _, opt, limit = scanned
        return self._emit(packet, end + 4, self._refused, opt, limit)

    def servfail(self, packet: bytes, tcp: bool = False) -> bytes | None:
        """SERVFAIL (an upstream failed or timed out), the question and OPT echoed."""
        scanned = self._scan(packet, tcp)
        if scanned is None:
            return header_only(packet, Rcode.SERVFAIL)
        end, _, opt, limit = scanned
        return self._emit(packet, end + 4, self._servfail, opt, limit)

    # --- chasing ExternalName targets through the upstream (27, 28) ---------------------------

    def chase_query(self, packet: bytes) -> bytes | None:
        """The query to send upstream for the target of the ExternalName `packet` asks for.

        ID 0 (the forwarder sets its own), RD, the client's qtype and CD, our OPT with the
        client's DO. None if `packet` is not such a question.
        """
        scanned = self._scan(packet, False)
        if scanned is None:
            return None
        end, offsets, opt, _ = scanned
        qtype = (packet[end] << 8) | packet[end + 1]
        asked = tuple(packet[o + 1:o + 1 + packet[o]].decode("latin-1") for o in offsets)
        response = self.answer(asked, qtype)
        if not isinstance(response, Response) or response.chase is None:
            return None
        try:
            target = wire(response.chase)
        except ValueError:
            return None
        flags = _RD | (packet[3] & 0x10)
        do = bool(opt) and bool(opt[7] & 0x80)
        return struct.pack(">HHHHHH", 0, flags, 1, 0, 0, 1) + target + \
            struct.pack(">HH", qtype, CLASS_IN) + _opt_record(self.udp_payload, do)

    def chase_reply(self, packet: bytes, tcp: bool, upstream: bytes | None) -> bytes | None:
        """The client's reply: our CNAME chain, then the upstream's answer for its target.

        TC is copied from the upstream's reply (28); the rcode is the upstream's NOERROR or
        NXDOMAIN (RFC 6604: the rcode of the last name), SERVFAIL for anything else or for
        no reply at all. The reply is cut to the client's size like any other.
        """
        try:
            query = dnslib.DNSRecord.parse(packet)
            reply = dnslib.DNSRecord.parse(upstream) if upstream is not None else None
        except Exception:  # dnslib raises assorted types for assorted garbage
            reply = None
            query = None
        if query is None or len(query.questions) != 1:
            return self.servfail(packet, tcp)
        question = query.questions[0]
        response = self.answer(question.qname.label, question.qtype)
        if not isinstance(response, Response) or response.chase is None:
            reply_bytes = self.respond_slow(packet, tcp)
            return reply_bytes if isinstance(reply_bytes, bytes) else None
        if reply is None or reply.header.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
            return self.servfail(packet, tcp)
        opts = [rr for rr in query.ar if rr.rtype == QType.OPT]
        opt = opts[0] if opts else None
        header = dnslib.DNSHeader(id=query.header.id, bitmap=0, qr=1, aa=1,
                                  ra=int(self.forwarding), rd=query.header.rd,
                                  cd=query.header.cd, rcode=reply.header.rcode)
        out = dnslib.DNSRecord(header, q=question)
        sections = [[_dnslib_rr(r) for r in response.answer] + list(reply.rr),
                    [rr for rr in reply.auth if rr.rtype != QType.OPT], []]
        edns = None
        if opt is not None:
            edns = dnslib.EDNS0(udp_len=self.udp_payload, flags="do" if opt.edns_do else "")
        packed = _pack_within(out, sections, edns, self._limit(opt, tcp))
        if reply.header.tc:
            packed = packed[:2] + bytes([packed[2] | 0x02]) + packed[3:]
        return packed

    def _limit(self, opt: dnslib.RR | None, tcp: bool) -> int:
        if tcp:
            return TCP_LIMIT
        if opt is not None:
            return max(MIN_UDP_PAYLOAD, min(opt.edns_len, self.udp_payload))
        return MIN_UDP_PAYLOAD

    # --- the slow path --------------------------------------------------------------------

    def respond_slow(self, packet: bytes, tcp: bool = False, *, refuse: bool = False
                     ) -> bytes | NotOurs | None:
        """The reference path, through dnslib: every unusual packet lands here.

        Same contract as `respond` (it never returns CHASE: a chased name is answered with
        its CNAME chain only); `refuse` answers REFUSED instead of asking the answerer.
        """
        if len(packet) < 12 or packet[2] & 0x80:
            return None  # no header to answer to, or a response: drop (counted by server)
        if (packet[2] >> 3) & 0xF:
            return header_only(packet, Rcode.NOTIMP)  # only QUERY is implemented
        try:
            query = dnslib.DNSRecord.parse(packet)
        except Exception:  # dnslib raises assorted types for assorted garbage
            return header_only(packet, Rcode.FORMERR)
        opts = [rr for rr in query.ar if rr.rtype == QType.OPT]
        if not query.questions:
            return header_only(packet, Rcode.SERVFAIL)  # 54, as CoreDNS
        if len(query.questions) != 1 or len(opts) > 1:
            return header_only(packet, Rcode.FORMERR)  # RFC 9619, RFC 6891 §6.1.1
        question = query.questions[0]
        opt = opts[0] if opts else None
        header = dnslib.DNSHeader(id=query.header.id, bitmap=0, qr=1,
                                  rd=query.header.rd, cd=query.header.cd)
        reply = dnslib.DNSRecord(header, q=question)
        response: Response | NotOurs
        if opt is not None and opt.edns_ver != 0:
            response = Response(Rcode.BADVERS, authoritative=False)
        elif refuse or question.qclass != CLASS_IN:
            response = REFUSED  # 54: only class IN is served
        else:
            response = self.answer(question.qname.label, question.qtype)
            if isinstance(response, NotOurs):
                return NOT_OURS
            response = shuffled(response)
        reply.header.aa = int(response.authoritative)
        reply.header.ra = int(self.forwarding)
        reply.header.rcode = int(response.rcode) & 0xF
        records = [[_dnslib_rr(r) for r in section]
                   for section in (response.answer, response.authority, response.additional)]
        edns = None
        if opt is not None:
            edns = dnslib.EDNS0(udp_len=self.udp_payload, ext_rcode=int(response.rcode) >> 4,
                                flags="do" if opt.edns_do else "")
        return _pack_within(reply, records, edns, self._limit(opt, tcp))


def _pack_within(reply: dnslib.DNSRecord, sections: list[list[dnslib.RR]],
                 edns: dnslib.RR | None, limit: int) -> bytes:
    flat = [(i, rr) for i, section in enumerate(sections) for rr in section]

    def pack(keep: int) -> bytes:
        reply.rr, reply.auth, reply.ar = [], [], []
        for i, rr in flat[:keep]:
            (reply.rr, reply.auth, reply.ar)[i].append(rr)
        if edns is not None:
            reply.ar.append(edns)
        return bytes(reply.pack())

    packed = pack(len(flat))
    if len(packed) <= limit:
        return packed
    low, high = 0, len(flat) - 1  # the largest prefix that fits, by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if len(pack(middle)) <= limit:
            low = middle
        else:
            high = middle - 1
    reply.header.tc = 1
    return pack(low)


def _dnslib_label(name: Name) -> dnslib.DNSLabel:
    return dnslib.DNSLabel([label.encode("latin-1") for label in name])


def _dnslib_rr(record: Record) -> dnslib.RR:
    data = record.data
    rdata: dnslib.RD
    if isinstance(data, A):
        rdata = dnslib.A(data.address)
    elif isinstance(data, AAAA):
        rdata = dnslib.AAAA(data.address)
    elif isinstance(data, CNAME):
        rdata = dnslib.CNAME(_dnslib_label(data.target))
    elif isinstance(data, PTR):
        rdata = dnslib.PTR(_dnslib_label(data.target))
    elif isinstance(data, NS):
        rdata = dnslib.NS(_dnslib_label(data.target))
    elif isinstance(data, SRV):
        rdata = dnslib.SRV(data.priority, data.weight, data.port, _dnslib_label(data.target))
    elif isinstance(data, SOA):
        rdata = dnslib.SOA(_dnslib_label(data.mname), _dnslib_label(data.rname),
                           (data.serial, data.refresh, data.retry, data.expire, data.minimum))
    else:
        rdata = dnslib.TXT([s.encode("utf-8") for s in data.strings])
    return dnslib.RR(_dnslib_label(record.name), int(data.rtype), CLASS_IN, record.ttl, rdata)
