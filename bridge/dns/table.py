"""Precomputed wire answers for one catalog, and the packet handler that serves them.

This module owns the bytes. A `Table` is built once per catalog: it asks `answer.py` every
question that can be asked about every existing name and stores each response as wire
bytes, keyed by (lower-cased question name in wire form + qtype + qclass). It never
changes afterwards except for two bounded caches of lazily encoded answers, which are
plain dict writes (atomic under the GIL), so readers share it without locks.

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

For each existing name the answerer gives the responses by qtype plus one default for
every other qtype; the table stores the former and the common qtypes under `entries`,
and the default under `defaults` (one more look-up for MX, ANY, CAA, ...). A name in the
zone that is not in the table gets the zone's negative answers, which depend only on
where the zone starts in the question (the SOA owner is a pointer there) and on the qtype
(`Answerer.names` documents this contract): they are encoded once per offset, on first
use, so no query can make the table grow beyond 254 such sets.

Anything the fast path does not recognise (several questions, opcode other than QUERY,
class other than IN, EDNS version > 0, a compressed question, malformed bytes) goes to
`respond_slow`, which parses with dnslib and encodes `answer.py`'s response with dnslib.
Tests compare the two paths for every name of a sample catalog.
"""

from __future__ import annotations

import socket
import struct
from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

import dnslib

from bridge.catalog.model import Catalog
from bridge.dns.answer import (
    AAAA,
    CNAME,
    NOT_OURS,
    NS,
    PTR,
    REFUSED,
    SOA,
    SRV,
    TXT,
    A,
    Answerer,
    Answers,
    NotOurs,
    QType,
    Rcode,
    Record,
    Response,
)
from bridge.dns.query import Name, parse, upper

# Keys stored for every existing name besides the qtypes its answers name, so that these
# common questions hit the first dictionary look-up; any other qtype of an existing name
# takes one more look-up (`defaults`). HTTPS is here because browsers and curl send it.
PRECOMPUTED_QTYPES = (QType.A, QType.AAAA, QType.SRV, QType.PTR, QType.HTTPS)
DEFAULT_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation on every path
MIN_UDP_PAYLOAD = 512
TCP_LIMIT = 65535
CLASS_IN = 1

_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
_NO_AR = b"\x00\x00"
_ONE_AR = b"\x00\x01"
_IN = b"\x00\x01"
_QR, _AA, _TC, _RD, _CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
_HEAD = struct.Struct(">HHHHH")  # flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT


class Entry(NamedTuple):
    """One precomputed response, minus the ID and the question (taken from the query).

    `heads[i]`/`heads_opt[i]` are flags + counts for i = RD | CD << 1 of the query, without
    and with our OPT record. `spots` are (body offset, question offset, length) of literal
    copies of a question suffix to re-spell. `ends` is where each RR ends in `body`, for
    truncation; `counts` the RRs per section.
    """

    heads: tuple[bytes, ...]
    heads_opt: tuple[bytes, ...]
    body: bytes
    size: int  # header + body: the response length without question and OPT
    spots: tuple[tuple[int, int, int], ...]
    ends: tuple[int, ...]
    counts: tuple[int, int, int]
    flags: int


def wire(name: Name) -> bytes:
    """A name in uncompressed wire form. Raises ValueError for an unencodable name."""
    out = bytearray()
    for label in name:
        data = label.encode("latin-1")
        if not 0 < len(data) <= 63:
            raise ValueError(f"bad label {label!r}")
        out.append(len(data))
        out += data
    out.append(0)
    if len(out) > 255:
        raise ValueError("name longer than 255 bytes")
    return bytes(out)


class _Writer:
    """Encodes records after a given question, compressing only on exact-case matches."""

    def __init__(self, question: Name, question_wire: bytes) -> None:
        self.base = 12 + len(question_wire) + 4
        self.buf = bytearray()
        self.offsets: dict[Name, int] = {}
        self.question: dict[Name, int] = {}
        offset = 12
        for i, label in enumerate(question):
            self.question[question[i:]] = offset
            offset += len(label.encode("latin-1")) + 1
        self.offsets.update(self.question)
        self.spots: list[tuple[int, int, int]] = []

    def name(self, name: Name, *, compress: bool = True) -> None:
        spotted = False
        for i, label in enumerate(name):
            suffix = name[i:]
            if compress:
                pointer = self.offsets.get(suffix)
                if pointer is not None:
                    self.buf += (0xC000 | pointer).to_bytes(2, "big")
                    return
            elif not spotted and suffix in self.question:
                spotted = True
                length = len(wire(suffix))
                self.spots.append((len(self.buf), self.question[suffix], length))
            here = self.base + len(self.buf)
            if here < 0x4000:
                self.offsets.setdefault(suffix, here)
            data = label.encode("latin-1")
            if not 0 < len(data) <= 63:
                raise ValueError(f"bad label {label!r}")
            self.buf.append(len(data))
            self.buf += data
        self.buf.append(0)

    def record(self, record: Record) -> None:
        self.name(record.name)
        data = record.data
        self.buf += struct.pack(">HHI", data.rtype, CLASS_IN, record.ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"
        if isinstance(data, A):
            self.buf += socket.inet_pton(socket.AF_INET, data.address)
        elif isinstance(data, AAAA):
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


def encode(question: Name, response: Response, question_wire: bytes | None = None) -> Entry:
    """`response` as an Entry to be sent after any question of `question`'s length.

    `question` is the spelling the response was computed for (upper case in tables).
    """
    if question_wire is None:
        question_wire = wire(question)
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
    flags = _QR | (_AA if response.authoritative else 0) | (int(response.rcode) & 0xF)
    counts = (len(response.answer), len(response.authority), len(response.additional))
    heads = []
    heads_opt = []
    for variant in range(4):
        bits = flags | (_RD if variant & 1 else 0) | (_CD if variant & 2 else 0)
        heads.append(_HEAD.pack(bits, 1, *counts))
        heads_opt.append(_HEAD.pack(bits, 1, counts[0], counts[1], counts[2] + 1))
    return Entry(tuple(heads), tuple(heads_opt), bytes(body), 12 + len(body),
                 tuple(writer.spots), tuple(ends), counts, flags)


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


class Table:
    """The precomputed answers for one catalog plus the packet handler serving them."""

    def __init__(self, catalog: Catalog, zone: str, ttl: int, *,
                 ns_addresses: Sequence[str] = (),
                 udp_payload: int = DEFAULT_UDP_PAYLOAD) -> None:
        self.answerer = Answerer(catalog, zone, ttl, ns_addresses=ns_addresses)
        self.generation = catalog.generation
        self.udp_payload = max(MIN_UDP_PAYLOAD, udp_payload)
        self._opt = (_opt_record(self.udp_payload, False), _opt_record(self.udp_payload, True))
        self.zone_wire = wire(self.answerer.zone)
        self._zone_upper: Name = tuple(upper(label) for label in self.answerer.zone)
        self.entries: dict[bytes, Entry] = {}  # lower-case wire name + qtype + class
        self.defaults: dict[bytes, Entry] = {}  # lower-case wire name: any other qtype
        self.skipped: list[str] = []  # names that could not be encoded (reported, not fatal)
        self._shared: dict[tuple[int, Response], Entry] = {}
        # Absent names, by the byte offset of the zone in the name: at most 254 of them.
        self._negatives: dict[int, tuple[dict[int, Entry], Entry]] = {}
        self._refused = encode((), REFUSED)
        for name in self.answerer.names():
            self._add(name)

    def _add(self, name: Name) -> None:
        spelled = tuple(upper(label) for label in name)
        try:
            key = wire(name)
            query = parse(spelled, self.answerer.zone)
            answers = self.answerer.answers_query(query)
            if isinstance(answers, NotOurs):
                raise ValueError("listed name is not ours")
            default, by_type = self._encode_answers(spelled, key, query.zone, answers)
        except (ValueError, struct.error) as exc:
            self.skipped.append(f"{'.'.join(name)}: {exc}")
            return
        for qtype in (*PRECOMPUTED_QTYPES, *by_type):
            self.entries[key + qtype.to_bytes(2, "big") + _IN] = by_type.get(qtype, default)
        self.defaults[key] = default

    def _encode_answers(self, spelled: Name, key: bytes, zone: Name, answers: Answers
                        ) -> tuple[Entry, dict[int, Entry]]:
        prefix = len(key) - len(wire(zone))
        # Keyed by identity: the responses stay alive in `answers` for the whole loop.
        done: dict[int, Entry] = {}
        for response in (answers.default, *answers.by_type.values()):
            if id(response) not in done:
                done[id(response)] = self._encode_for(spelled, key, prefix, zone, response)
        return done[id(answers.default)], {
            qtype: done[id(response)] for qtype, response in answers.by_type.items()}

    def _encode_for(self, spelled: Name, key: bytes, prefix: int, zone: Name,
                    response: Response) -> Entry:
        """Encode, sharing pure negatives (NODATA, NXDOMAIN) between names.

        A response whose only record is the zone SOA encodes the same for every question
        whose zone starts `prefix` bytes in: its names are the zone (a pointer there) and
        `ns.dns`/`hostmaster` + zone, whose lower-case labels never match the upper-case
        question exactly, so nothing else from the question is referenced.
        """
        negative = (not response.answer and not response.additional
                    and len(response.authority) == 1 and response.authority[0].name == zone)
        if not negative:
            return encode(spelled, response, key)
        entry = self._shared.get((prefix, response))
        if entry is None:
            entry = self._shared[(prefix, response)] = encode(spelled, response, key)
        return entry

    # --- serving ------------------------------------------------------------------------

    def respond(self, packet: bytes, tcp: bool = False) -> bytes | NotOurs | None:
        """The reply to one query packet; NOT_OURS for names we do not serve; None to drop.

        Never raises for any input (checked by a fuzz test); the server still guards it.
        """
        # Fast path: one question, no answer/authority records, a query with opcode QUERY.
        if len(packet) >= 17 and packet[4:10] == _QUERY_COUNTS and not packet[2] & 0xF8:
            end = packet.find(0, 12) + 1
            # A stored key is a valid uncompressed name, so if the bytes from offset 12
            # equal one, a proper label walk ends at the same place: no walk needed here.
            entry = self.entries.get(packet[12:end].lower() + packet[end:end + 4])
            if entry is not None:
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
                head = entry.heads_opt[variant] if opt else entry.heads[variant]
                return packet[:2] + head + packet[12:qend] + entry.body + opt
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

    def _miss(self, packet: bytes, tcp: bool) -> bytes | NotOurs | None:
        scanned = self._scan(packet, tcp)
        if scanned is None:
            return self.respond_slow(packet, tcp)
        end, offsets, opt, limit = scanned
        lname = packet[12:end].lower()
        entry = self.entries.get(lname + packet[end:end + 4]) or self.defaults.get(lname)
        if entry is None:
            zone_at = end - len(self.zone_wire)
            if zone_at not in offsets or packet[zone_at:end].lower() != self.zone_wire:
                return NOT_OURS
            by_type, default = self._negative(zone_at - 12)
            entry = by_type.get((packet[end] << 8) | packet[end + 1], default)
        return self._emit(packet, end + 4, entry, opt, limit)

    def _negative(self, prefix: int) -> tuple[dict[int, Entry], Entry]:
        """Answers for an absent name whose zone starts `prefix` bytes into the name.

        `Answerer.names` promises they depend on nothing else, so a stand-in name of that
        shape is asked once and its encoding serves every absent name of the shape.
        """
        found = self._negatives.get(prefix)
        if found is None:
            question = _filler(prefix) + self._zone_upper
            answers = self.answerer.answers(question)
            assert isinstance(answers, Answers)
            default, by_type = self._encode_answers(question, wire(question), self.answerer.zone,
                                                    answers)
            found = self._negatives[prefix] = (by_type, default)
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
            head = entry.heads_opt[variant] if opt else entry.heads[variant]
            return packet[:2] + head + packet[12:qend] + body + opt
        # 56: keep the longest prefix of whole RRs that fits and set TC. Compression
        # pointers only point backwards, so every kept RR stays valid.
        keep = bisect_right(entry.ends, limit - qend - len(opt))
        answer, authority, _ = entry.counts
        an = min(answer, keep)
        ns = min(authority, keep - an)
        ar = keep - an - ns + (1 if opt else 0)
        flags = entry.flags | _TC | (_RD if variant & 1 else 0) | (_CD if variant & 2 else 0)
        cut = entry.ends[keep - 1] if keep else 0
        return packet[:2] + _HEAD.pack(flags, 1, an, ns, ar) + packet[12:qend] + \
            body[:cut] + opt

    def refuse(self, packet: bytes, tcp: bool = False) -> bytes | None:
        """REFUSED for a question that is not ours (57): the question and OPT echoed."""
        scanned = self._scan(packet, tcp)
        if scanned is None:
            reply = self.respond_slow(packet, tcp, refuse=True)
            return None if isinstance(reply, NotOurs) else reply
        end, _, opt, limit = scanned
        return self._emit(packet, end + 4, self._refused, opt, limit)

    # --- the slow path --------------------------------------------------------------------

    def respond_slow(self, packet: bytes, tcp: bool = False, *, refuse: bool = False
                     ) -> bytes | NotOurs | None:
        """The reference path, through dnslib: every unusual packet lands here.

        Same contract as `respond`; `refuse` answers REFUSED instead of asking the answerer.
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
            response = self.answerer.answer(question.qname.label, question.qtype)
            if isinstance(response, NotOurs):
                return NOT_OURS
        reply.header.aa = int(response.authoritative)
        reply.header.rcode = int(response.rcode) & 0xF
        records = [[_dnslib_rr(r) for r in section]
                   for section in (response.answer, response.authority, response.additional)]
        edns = None
        if opt is not None:
            edns = dnslib.EDNS0(udp_len=self.udp_payload, ext_rcode=int(response.rcode) >> 4,
                                flags="do" if opt.edns_do else "")
        if tcp:
            limit = TCP_LIMIT
        elif opt is not None:
            limit = max(MIN_UDP_PAYLOAD, min(opt.edns_len, self.udp_payload))
        else:
            limit = MIN_UDP_PAYLOAD
        return _pack_within(reply, records, edns, limit)


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
