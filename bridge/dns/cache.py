"""Answers from upstreams, kept for their TTL (`AnswerCache`): positive, negative, stale.

The forwarder (`forwarder.py`) stores each upstream reply it may keep; the serving threads
answer a later identical question from here without a round trip, with the TTLs counted
down. Negative answers (NXDOMAIN, NODATA) are kept for the SOA's TTL or minimum, whichever
is less (RFC 2308). When every upstream fails, an expired answer is given once more with
TTL 30 for up to `serve_stale` seconds past its expiry (RFC 8767).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from bridge.dns.packet import CD, RD, question_end, read_opt

MAX_TTL = 3600  # a positive answer is kept at most this long (CoreDNS cache: success 3600)
MAX_NEGATIVE_TTL = 1800  # and a negative one (CoreDNS cache: denial 1800)
STALE_TTL = 30  # RFC 8767 section 4: the TTL of a stale answer
_OPT, _SOA = 41, 6
_NOERROR, _NXDOMAIN = 0, 3
_TTL = struct.Struct(">I")


class Cached(NamedTuple):
    reply: bytes  # as the upstream sent it, ID and all
    stored: float  # clock reading when stored
    ttl: int  # seconds it is fresh
    ttls: tuple[tuple[int, int], ...]  # (offset, TTL as sent) of every record but OPT
    negative: bool


def cache_key(packet: bytes) -> bytes | None:
    """What a reply depends on besides the upstream's data: the question (lower case) and
    the RD, CD, EDNS and DO bits; None for a query that is not a plain one-question query."""
    if len(packet) < 17 or packet[4:10] != b"\x00\x01\x00\x00\x00\x00" or packet[2] & 0xF8:
        return None
    end = question_end(packet)
    if not end:
        return None
    flags = (1 if packet[2] & (RD >> 8) else 0) | (2 if packet[3] & CD else 0)
    extra = packet[10:12]
    if extra == b"\x00\x01":
        opt = read_opt(packet, end)
        if opt is None:
            return None
        flags |= 4 | (8 if opt[1] else 0)
    elif extra != b"\x00\x00" or len(packet) != end:
        return None
    return packet[12:end].lower() + bytes((flags,))


def _skip_name(data: bytes, at: int) -> int:
    """Where the (possibly compressed) name at `at` ends; raises IndexError or ValueError
    for a name cut short or with a reserved label type."""
    while True:
        length = data[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            data[at + 1]  # the pointer's second byte must be there
            return at + 2
        if length & 0xC0:
            raise ValueError("reserved label type")
        at += length + 1


def lifetime(reply: bytes) -> tuple[int, tuple[tuple[int, int], ...], bool] | None:
    """(seconds it may be kept, TTL spots, negative) for a reply worth keeping, else None.

    Kept: NOERROR with answers (for the least TTL of its records), and NXDOMAIN or NODATA
    with an SOA in the authority section (for the SOA's TTL or minimum, whichever is less;
    RFC 2308 sections 3 and 5: without an SOA a negative answer is not cached). Not kept:
    truncated replies, other rcodes, TTL 0, and anything that does not parse.
    """
    if len(reply) < 12 or reply[2] & 0x02 or not reply[2] & 0x80:
        return None
    rcode = reply[3] & 0xF
    if rcode not in (_NOERROR, _NXDOMAIN):
        return None
    qdcount, ancount, nscount, arcount = struct.unpack_from(">HHHH", reply, 4)
    if qdcount != 1:
        return None
    ttls: list[tuple[int, int]] = []
    least = MAX_TTL
    negative_ttl: int | None = None
    try:
        at = _skip_name(reply, 12) + 4
        for index in range(ancount + nscount + arcount):
            at = _skip_name(reply, at)
            rtype, _, ttl, size = struct.unpack_from(">HHIH", reply, at)
            if rtype != _OPT:
                ttls.append((at + 4, ttl))
                least = min(least, ttl)
                if rtype == _SOA and ancount <= index < ancount + nscount:
                    minimum = _TTL.unpack_from(reply, at + 10 + size - 4)[0]
                    negative_ttl = min(ttl, minimum)
            at += 10 + size
        if at != len(reply):
            return None
    except (IndexError, ValueError, struct.error):
        return None
    if rcode == _NOERROR and ancount:
        return (least, tuple(ttls), False) if least > 0 else None
    if negative_ttl is None or negative_ttl <= 0:
        return None
    return min(negative_ttl, MAX_NEGATIVE_TTL), tuple(ttls), True


class AnswerCache:
    """At most `size` upstream replies by `cache_key`, each fresh for its TTL.

    One writer (the forwarder thread: `put`) and any number of readers (the serving
    threads: `get`, `stale`), without locks: every access is a single dict operation,
    atomic under the GIL. When full, the oldest entry goes (insertion order). `clock` is
    injected by tests.
    """

    def __init__(self, size: int, *, serve_stale: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.serve_stale = serve_stale
        self.clock = clock
        self._entries: dict[bytes, Cached] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> tuple[int, int]:
        """(positive, negative) entries held, expired ones included."""
        negative = sum(1 for entry in list(self._entries.values()) if entry.negative)
        return len(self._entries) - negative, negative

    def put(self, key: bytes, reply: bytes) -> bool:
        """Keep `reply` to the question of `key` if it may be kept (`lifetime`)."""
        if self.size <= 0:
            return False
        kept = lifetime(reply)
        if kept is None:
            return False
        ttl, ttls, negative = kept
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = Cached(reply, self.clock(), ttl, ttls, negative)
        return True

    def get(self, key: bytes, limit: int) -> Cached | None:
        """The fresh entry for `key` if its reply fits `limit` bytes, else None."""
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored >= entry.ttl or \
                len(entry.reply) > limit:
            return None
        return entry

    def stale(self, key: bytes) -> Cached | None:
        """An expired entry for `key` still within `serve_stale` seconds of its expiry."""
        entry = self._entries.get(key)
        if entry is None or not self.serve_stale:
            return None
        age = self.clock() - entry.stored
        if entry.ttl <= age < entry.ttl + self.serve_stale:
            return entry
        return None

    def reply(self, entry: Cached, packet: bytes, key: bytes, *, stale: bool = False) -> bytes:
        """`entry` as the reply to `packet` (whose `cache_key` is `key`): its ID and
        question spelling, every TTL counted down by the entry's age in whole seconds (or
        STALE_TTL when stale)."""
        out = bytearray(entry.reply)
        end = 12 + len(key) - 1  # the key: the question, then one byte of flags
        out[:2] = packet[:2]
        out[12:end] = packet[12:end]
        if stale:
            for at, _ in entry.ttls:
                _TTL.pack_into(out, at, STALE_TTL)
        else:
            age = int(self.clock() - entry.stored)
            for at, ttl in entry.ttls:
                _TTL.pack_into(out, at, max(0, ttl - age))
        return bytes(out)

