"""Responses as wire bytes, ready to follow any question of the right shape.

`encode` turns a `Response` into an `Entry`: header flags and counts, and the answer,
authority and additional sections as bytes, to be sent after the ID and the question that
the query itself carries (`respond.py`). `encode_shuffled` makes a `Shuffled` instead, for
answers served in a random order per query (Consul). With `rotate`, an answer of several
A, AAAA or SRV records also carries its rotations (`Rotations`, `Turns`), one served per
query.
"""

from __future__ import annotations

import functools
import socket
import struct
from typing import Any, NamedTuple

from bridge.dns.packet import AA, CD, CLASS_IN, HEADER, QR, RA, RD
from bridge.dns.query import Name
from bridge.dns.records import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, QType, Record, Response

_A_HEAD = _RR_HEAD = struct.Struct(">HHIH")  # type, class, TTL, RDLENGTH
_SRV_HEAD = struct.Struct(">HHIHHHH")  # the same, then priority, weight, port

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
    offset, length) of literal copies of a question suffix to re-spell; or, for an answer
    whose records rotate, its `Rotations` or `Turns` (never empty, so the fast path looks
    at them: it serves `Rotations` itself and hands `Turns` to `Responder._emit`). Five
    fields, the rarely read ones in `shape`: a large table holds hundreds of thousands.
    """

    heads: tuple[bytes, ...]
    body: bytes
    size: int  # header + body: the response length without question and OPT
    spots: tuple[tuple[int, int, int], ...] | Rotations | Turns
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


class Rotations(tuple[bytes, ...]):
    """Every rotation of an answer of same-size records that nothing points into (A, AAAA:
    each owner a pointer to the question), as bodies: rotation k starts at record k. The
    fast path recognises the type and picks one by the query's ID (its low byte: there are
    at most 256, see `MAX_BODY_BYTES`)."""

    __slots__ = ()


class Turns(NamedTuple):
    """The rotations of an answer of `records` records that `Rotations` does not hold, one
    per query (`turn`).

    Same-size records beyond `MAX_BODY_BYTES` are cut from the answer written twice
    (`doubled`, `stride`). Others (SRV, whose glue points into the targets) have up to
    `MAX_TURNS` rotations spread over the records (`variants`, the first the answer as
    encoded), each made on first use by moving bytes (`_reordered`) and kept: a list
    slot written once, atomic under the GIL.
    """

    records: int
    stride: int  # bytes per record, for slicing; 0 with `variants`
    doubled: bytes  # the answer section twice (nothing follows it); b"" with `variants`
    variants: list[Entry | None]
    base: int  # where the body starts in a message (for the glue's pointers)

    def turn(self, entry: Entry, index: int) -> tuple[Entry, bytes, tuple[tuple[int, int, int], ...]]:
        """(entry, body, spots) of rotation `index` (any int: taken modulo)."""
        variants = self.variants
        if variants:
            slot = index % len(variants)
            variant = variants[slot]
            if variant is None:
                first = variants[0]
                assert first is not None
                variant = _reordered(first, slot * self.records // len(variants), self.base) \
                    or first  # not a shape bytes can be moved in: not rotated
                variants[slot] = variant
            return variant, variant.body, variant.spots  # type: ignore[return-value]
        at = (index % self.records) * self.stride
        return entry, self.doubled[at:at + self.records * self.stride], ()


MAX_TURNS = 8  # encoded rotations kept of an answer that cannot be sliced
MAX_TURN_BYTES = 16384  # nor more bytes of them than this (else it does not rotate)
MAX_BODY_BYTES = 4096  # rotations of addresses kept whole up to this many bytes in all
# (so at most 4096 / 16 = 256 A records: the low byte of an ID reaches every rotation)


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


def wire_length(name: Name) -> int:
    return sum(len(label) for label in name) + len(name) + 1


@functools.lru_cache(maxsize=4096)
def _heads(flags: int, counts: tuple[int, int, int]) -> tuple[bytes, ...]:
    """`Entry.heads` for these flags and counts: shared by entries."""
    heads = []
    for opt in (0, 1):
        for variant in range(4):
            bits = flags | (RD if variant & 1 else 0) | (CD if variant & 2 else 0)
            heads.append(HEADER.pack(bits, 1, counts[0], counts[1], counts[2] + opt))
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


class Writer:
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
        if type(data) is A:  # the usual record, written in one go
            self.buf += _A_HEAD.pack(1, CLASS_IN, record.ttl, 4) + \
                socket.inet_pton(socket.AF_INET, data.address)
            return
        self.buf += struct.pack(">HHI", data.rtype, CLASS_IN, record.ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"
        if type(data) is AAAA:
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
    return QR | (AA if response.authoritative else 0) | (RA if ra else 0) | \
        (int(response.rcode) & 0xF)


def encode(question: Name, response: Response, question_wire: bytes | None = None, *,
           ra: bool = False, rotate: bool = False) -> Entry:
    """`response` as an Entry to be sent after any question of `question`'s length.

    `question` is the spelling the response was computed for (upper case in tables); `ra`
    sets RA (recursion available: the server forwards what is not ours).

    `encode` turns a `Response` into an `Entry`: the header flags and counts, and the answer,
    authority and additional sections as bytes, to be sent after the ID and the question the
    query itself carries. `encode_shuffled` makes a `Shuffled` instead, for answers served in a
    random order per query (Consul). The table (`table.py`) stores them; the fast path
    (`respond.py`) sends them.

    Owner names in the sections are compression pointers into the question, so the client's
    letter case comes back without any work (checklist 46). That works because the question is
    copied byte for byte and a case-only difference never changes its length. SRV targets may
    not be compressed (RFC 2782), so the zone inside them is a literal copy; its offsets are
    kept (`spots`) and patched with the client's spelling when it differs (47).

    To know which names came from the question, responses are encoded against the question
    spelled in UPPER case: the answerers repeat the question's spelling and write catalog names
    in lower case, so an exact-case match against an upper-case question suffix can only be a
    name derived from the question. The stored bytes are then lower-cased.
    """
    if question_wire is None:
        question_wire = wire(question)
    entry = _encode(question, response, question_wire, ra)
    if rotate and len(response.answer) > 1:
        return _rotating(question, response, question_wire, entry)
    return entry


def _rotating(question: Name, response: Response, question_wire: bytes, entry: Entry
              ) -> Entry:
    """`entry` with its `Turns`, when its answers are several A, AAAA or SRV records of the
    question's name (a headless Service's addresses, its SRV records); else `entry`."""
    answer = response.answer
    rtype = answer[0].data.rtype
    if rtype not in (QType.A, QType.AAAA, QType.SRV) or \
            any(r.data.rtype != rtype or r.name != question for r in answer):
        return entry
    count = len(answer)
    ends = entry.shape.ends
    stride = ends[0]
    if rtype != QType.SRV and not entry.spots and len(ends) == count and \
            all(end == stride * (i + 1) for i, end in enumerate(ends)):
        body = entry.body
        doubled = body + body
        if count * len(body) <= MAX_BODY_BYTES:
            return entry._replace(spots=Rotations(
                doubled[k * stride:k * stride + len(body)] for k in range(count)))
        return entry._replace(spots=Turns(count, stride, doubled, [], 0))
    kept = min(count, MAX_TURNS, MAX_TURN_BYTES // max(1, len(entry.body)))
    if kept < 2:
        return entry
    variants: list[Entry | None] = [entry, *[None] * (kept - 1)]
    return entry._replace(spots=Turns(count, 0, b"", variants, 16 + len(question_wire)))


def _reordered(entry: Entry, first: int, base: int) -> Entry | None:
    """`entry` with its answer records rotated to start at record `first`, by moving bytes:
    answers that point only into the question (SRV: owner a pointer, target written out),
    then A/AAAA records whose owner points into an answer (glue: pointers moved along).
    None for any other shape."""
    body, ends = entry.body, entry.shape.ends
    count = entry.shape.counts[0]
    if entry.shape.counts[1] or len(ends) < count:
        return None
    starts = (0, *ends[:count - 1])
    chunks = [body[starts[i]:ends[i]] for i in range(count)]
    order = [*range(first, count), *range(first)]
    moved = [0] * count  # where each record starts after the rotation
    at = 0
    for i in order:
        moved[i] = at
        at += len(chunks[i])

    def record_of(offset: int) -> int:
        for i in range(count):
            if starts[i] <= offset < ends[i]:
                return i
        return -1

    rest = []
    previous = ends[count - 1]
    for end in ends[count:]:
        glue = bytearray(body[previous:end])
        previous = end
        if len(glue) < 4 or glue[0] & 0xC0 != 0xC0 or glue[2:4] not in (b"\x00\x01", b"\x00\x1c"):
            return None
        offset = ((glue[0] & 0x3F) << 8 | glue[1]) - base
        i = record_of(offset)
        if i >= 0:
            pointer = base + moved[i] + offset - starts[i]
            if pointer >= 0x4000:
                return None
            glue[0:2] = (0xC000 | pointer).to_bytes(2, "big")
        elif offset >= 0:
            return None  # points into something other than an answer
        rest.append(bytes(glue))
    spots = []
    for spot_at, qoffset, length in entry.spots:
        i = record_of(spot_at)
        if i < 0:
            return None
        spots.append((moved[i] + spot_at - starts[i], qoffset, length))
    new_ends = []
    at = 0
    for i in order:
        at += len(chunks[i])
        new_ends.append(at)
    return _entry(entry.shape.flags, entry.shape.counts, b"".join(chunks[i] for i in order) +
                  b"".join(rest), tuple(sorted(spots)), (*new_ends, *ends[count:]))


def _encode(question: Name, response: Response, question_wire: bytes, ra: bool) -> Entry:
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
    return encode_by_writer(question, question_wire, response, ra)


def encode_by_writer(question: Name, question_wire: bytes, response: Response, ra: bool
                    ) -> Entry:
    """`encode` by the general writer, record by record."""
    writer = Writer(question, question_wire)
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
        address = record.data.address  # type: ignore[union-attr]  # `encode` checked: A
        parts.append(b"\xc0\x0c" + pack(1, CLASS_IN, record.ttl, 4) + pton(af, address))
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
    writer = Writer(question, question_wire, register=False)
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


def opt_record(payload: int, do: bool) -> bytes:
    """Our OPT RR: root owner, our UDP payload size, version 0, DO echoed, no options."""
    return b"\x00\x00\x29" + payload.to_bytes(2, "big") + b"\x00\x00" + \
        (b"\x80\x00" if do else b"\x00\x00") + b"\x00\x00"

