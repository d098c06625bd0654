"""Serving a `Table`: the reply to one query packet, from the precomputed bytes.

`Responder` is the part of `Table` that serves (`table.py` builds and updates the rest):
a fast path for the usual query, a walk of the question for what it does not find, and
the slow path (`slow_path.py`) for anything unusual. Also the queries and replies for
ExternalName targets chased through the upstream (27, 28).
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_right
from collections.abc import Callable
from typing import Any, NamedTuple

from bridge.dns import slow_path
from bridge.dns.answer import Answerer
from bridge.dns.consul_domain import ConsulAnswerer
from bridge.dns.cow_map import GONE, CowMap
from bridge.dns.encode import Entry, Rotations, Shuffled, Turns, wire
from bridge.dns.metrics import OTHER_QTYPE, count_qtype
from bridge.dns.packet import (
    CD,
    CLASS_IN,
    HEADER,
    MIN_UDP_PAYLOAD,
    RD,
    TC,
    TCP_LIMIT,
    header_only,
    labels_at,
    read_opt,
    walk_name,
)
from bridge.dns.query import Name
from bridge.dns.records import NOT_OURS, TRANSFERS, Marker, NotOurs, Rcode, Response

_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
_NO_AR = b"\x00\x00"
_ONE_AR = b"\x00\x01"
_IN = CLASS_IN.to_bytes(2, "big")
_TRANSFERS = frozenset(qtype.to_bytes(2, "big") for qtype in TRANSFERS)
_TRANSFER_TAILS = frozenset(qtype + _IN for qtype in _TRANSFERS)  # + class IN
_POD_LABEL = b"\x03pod"
_UNCOUNTED = [0] * (OTHER_QTYPE + 1)  # `respond`'s qtype counts when the caller keeps none

# What `_absent` finds for a name: answers by qtype, and the answer for any other qtype.
Found = tuple[dict[int, Entry | Shuffled], Entry]


class Chase(Marker):
    """`respond`'s answer for an ExternalName to chase through the upstream (27, 28)."""

    label = "CHASE"


CHASE = Chase()


class Zone(NamedTuple):
    """One zone a table answers: its answerer, and its name in the forms the table needs."""

    answerer: Answerer | ConsulAnswerer
    labels: Name  # lower case
    wire: bytes  # lower case
    upper: Name
    pods: bool  # `<x>.<ns>.pod.<zone>` names are answered one by one (pods insecure)


class Responder:
    """The serving half of `Table`: what it reads is made by `table.py`.

    `respond` does not parse the packet on its fast path. It checks the header bytes, finds
    the question name's end, looks the key up, and returns

        query ID + precomputed flags/counts (RD and CD copied) + the query's own question bytes
        + the precomputed answer/authority/additional bytes [+ our OPT record]

    (`encode.encode` says why the precomputed bytes fit any spelling of the question). It looks
    in `entries` (name + qtype + class) first, then in `defaults` (name alone: the answer for
    any other qtype); both are `CowMap`s, read through their two dicts directly.

    What the fast path does not find goes to `_miss`, which walks the question properly and
    looks further: answers served in random order (`Shuffled`, Consul), ExternalName targets to
    chase upstream (`CHASE`), zone transfers of existing names (REFUSED), absent names of a zone
    (its negative answers), pod records (`pods="insecure"`), else NOT_OURS. Anything else
    (several questions, opcode other than QUERY, class other than IN, EDNS version > 0, a
    compressed question, malformed bytes) goes to the slow path (`slow_path.py`).

    With several zones (the cluster zone, the Consul domain), the most specific zone that
    contains the name answers it.
    """

    __slots__ = ()

    # The lookup dicts (`CowMap`s) and, for the fast path, their two dicts each.
    _entries: CowMap[bytes, Entry]
    _defaults: CowMap[bytes, Entry]
    _entries_recent: dict[bytes, Any]
    _entries_base: dict[bytes, Entry]
    _defaults_recent: dict[bytes, Any]
    _defaults_base: dict[bytes, Entry]
    # Names with shuffled or chased answers, never read by the fast path.
    _slow_defaults: CowMap[bytes, Entry]
    _shuffled: CowMap[bytes, Shuffled]
    _chases: CowMap[bytes, None]
    _special: bool  # False while the three above are empty
    _zones: tuple[Zone, ...]  # most specific first
    _opt: tuple[bytes, bytes]  # our OPT record, without and with DO
    _refused: Entry
    _servfail: Entry
    udp_payload: int
    forwarding: bool
    # Answers computed on first use (in `table.py`): a pod name's, and those of an absent
    # name of zone `index` whose zone starts `prefix` bytes in.
    _pod: Callable[[bytes], Found]
    _negative: Callable[[int, int], Found]
    answer: slow_path.Answer

    def respond(self, packet: bytes, tcp: bool = False, qtypes: list[int] = _UNCOUNTED
                ) -> bytes | NotOurs | Chase | None:
        """The reply to one query packet; NOT_OURS for names we do not serve; CHASE for an
        ExternalName whose target the upstream must resolve; None to drop. Counts the
        question's qtype in `qtypes` (the serving thread's `metrics.Counts.qtypes`), where
        the fast path reads it anyway.

        Never raises for any input (checked by a fuzz test); the server still guards it.
        """
        # Fast path: one question, no answer/authority records, a query with opcode QUERY.
        if len(packet) >= 17 and packet[4:10] == _QUERY_COUNTS and not packet[2] & 0xF8:
            end = packet.find(0, 12) + 1
            # A stored key is a valid uncompressed name, so if the bytes from offset 12
            # equal one, a proper label walk ends at the same place: no walk needed here.
            name = packet[12:end].lower()
            tail = packet[end:end + 4]
            try:
                qtypes[OTHER_QTYPE if tail[0] else tail[1]] += 1
            except IndexError:
                qtypes[OTHER_QTYPE] += 1
            key = name + tail
            entry = self._entries_recent.get(key)  # what changed lately, then the rest
            if entry is None:
                entry = self._entries_base.get(key)
            elif entry is GONE:
                entry = None
            if entry is None:
                # No entry of its own for this qtype: the name's default (class IN only;
                # transfers are REFUSED, in `_miss`).
                if not tail.endswith(_IN) or tail in _TRANSFER_TAILS:
                    return self._miss(packet, tcp)
                entry = self._defaults_recent.get(name)
                if entry is None:
                    entry = self._defaults_base.get(name)
                elif entry is GONE:
                    entry = None
                if entry is None:
                    return self._miss(packet, tcp, end)
            qend = end + 4
            count = packet[10:12]
            if count == _NO_AR and len(packet) == qend:
                opt = b""
                limit = TCP_LIMIT if tcp else MIN_UDP_PAYLOAD
            elif count == _ONE_AR and (edns := read_opt(packet, qend)) is not None:
                payload, do = edns
                opt = self._opt[do]
                # Never more than our own size, and never less than the 512 of plain DNS.
                limit = TCP_LIMIT if tcp else max(MIN_UDP_PAYLOAD, min(payload, self.udp_payload))
            else:
                return self._miss(packet, tcp)
            spots = entry.spots
            if entry.size + qend - 12 + len(opt) > limit:
                return self._emit(packet, qend, entry, opt, limit)
            if not spots:
                body = entry.body
            elif type(spots) is Rotations:
                # Rotating addresses: the rotation the query's ID picks (random per query,
                # as stub resolvers choose IDs).
                body = spots[packet[1] % len(spots)]
            else:
                return self._emit(packet, qend, entry, opt, limit)
            variant = (packet[2] & 1) | ((packet[3] >> 3) & 2)
            return packet[:2] + entry.heads[(variant | 4) if opt else variant] + \
                packet[12:qend] + body + opt
        count_qtype(qtypes, packet)
        return self._miss(packet, tcp)

    def _scan(self, packet: bytes, tcp: bool) -> tuple[int, list[int], bytes, int] | None:
        """Walk a simple query's question: (name end, label offsets, OPT, limit) or None."""
        if len(packet) < 17 or packet[4:10] != _QUERY_COUNTS or packet[2] & 0xF8:
            return None
        walked = walk_name(packet)
        if walked is None:
            return None
        end, offsets = walked
        qend = end + 4
        size = len(packet)
        if size < qend or packet[end + 2:qend] != _IN:
            return None
        count = packet[10:12]
        if count == _NO_AR and size == qend:
            return end, offsets, b"", TCP_LIMIT if tcp else MIN_UDP_PAYLOAD
        if count == _ONE_AR and (edns := read_opt(packet, qend)) is not None:
            payload, do = edns
            limit = TCP_LIMIT if tcp else max(MIN_UDP_PAYLOAD, min(payload, self.udp_payload))
            return end, offsets, self._opt[do], limit
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

    def _emit(self, packet: bytes, qend: int, entry: Entry, opt: bytes, limit: int) -> bytes:
        """The general response builder: rotation, re-spelling, truncation, OPT."""
        body = entry.body
        spots = entry.spots
        if type(spots) is Rotations:
            body, spots = spots[packet[1] % len(spots)], ()  # as on the fast path
        elif type(spots) is Turns:
            # The query's ID picks the rotation: no state to share between threads. A
            # rotation made already is read here (`Turns.turn` without the call).
            index = (packet[0] << 8) | packet[1]
            variants = spots.variants
            turned = variants[index % len(variants)] if variants else None
            if turned is None:
                entry, body, spots = spots.turn(entry, index)
            else:
                entry, body, spots = turned, turned.body, turned.spots
        if spots:
            patched = None
            for at, qoffset, length in spots:
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
        flags |= TC | (RD if variant & 1 else 0) | (CD if variant & 2 else 0)
        cut = ends[keep - 1] if keep else 0
        return packet[:2] + HEADER.pack(flags, 1, an, ns, ar) + packet[12:qend] + \
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
        flags = entry.flags | (TC if keep < len(chunks) else 0) | \
            (RD if variant & 1 else 0) | (CD if variant & 2 else 0)
        return packet[:2] + HEADER.pack(flags, 1, an, ns, ar) + packet[12:qend] + \
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

    def respond_slow(self, packet: bytes, tcp: bool = False, *, refuse: bool = False
                     ) -> bytes | NotOurs | None:
        """The reference path, through dnslib (`slow_path.py`): every unusual packet lands
        here. Same contract as `respond`, but it never returns CHASE (a chased name is
        answered with its CNAME chain only); `refuse` answers REFUSED."""
        return slow_path.respond_slow(packet, tcp, self.answer, forwarding=self.forwarding,
                                      udp_payload=self.udp_payload, refuse=refuse)

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
        response = self.answer(labels_at(packet, offsets), qtype)
        if not isinstance(response, Response) or response.chase is None:
            return None
        try:
            target = wire(response.chase)
        except ValueError:
            return None
        flags = RD | (packet[3] & 0x10)
        do = bool(opt) and bool(opt[7] & 0x80)
        return struct.pack(">HHHHHH", 0, flags, 1, 0, 0, 1) + target + \
            struct.pack(">HH", qtype, CLASS_IN) + self._opt[do]

    def chase_reply(self, packet: bytes, tcp: bool, upstream: bytes | None) -> bytes | None:
        """The client's reply: our CNAME chain, then the upstream's answer for its target
        (`slow_path.chased`); SERVFAIL when the upstream's reply is missing, unreadable, or
        neither NOERROR nor NXDOMAIN."""
        query = slow_path.parse(packet)
        reply = slow_path.parse(upstream) if upstream is not None else None
        if query is None or len(query.questions) != 1 or (upstream is not None and reply is None):
            return self.servfail(packet, tcp)
        question = query.questions[0]
        response = self.answer(question.qname.label, question.qtype)
        if not isinstance(response, Response) or response.chase is None:
            reply_bytes = self.respond_slow(packet, tcp)
            return reply_bytes if isinstance(reply_bytes, bytes) else None
        if reply is None or reply.header.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
            return self.servfail(packet, tcp)
        return slow_path.chased(query, response, reply, tcp, forwarding=self.forwarding,
                                udp_payload=self.udp_payload)
