"""A query packet read where it must be read fast: header, question name, OPT record.

One walker reads the question name for the table, the server and the forwarder
(`walk_name`: uncompressed names only, as every query a stub resolver sends); the OPT
record that may end a query is read by `read_opt`. Anything they refuse is left to the
full parser of the slow path (`slow_path.py`). `header_only` is the reply to a packet
that has nothing else to be answered with. Header flags and size limits live here too.
"""

from __future__ import annotations

import struct

from bridge.dns.query import Name
from bridge.dns.records import Rcode

HEADER = struct.Struct(">HHHHH")  # after the ID: flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
CLASS_IN = 1
MIN_UDP_PAYLOAD = 512  # plain DNS, and the least a client with EDNS is held to (RFC 6891)
DEFAULT_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation on every path
TCP_LIMIT = 65535


def walk_name(data: bytes, at: int = 12) -> tuple[int, list[int]] | None:
    """Walk the uncompressed name that starts at `at`: (where it ends, after its root
    label; where each label starts), or None when it is cut short, compressed, uses a
    reserved label type or is longer than 255 bytes."""
    size = len(data)
    offsets: list[int] = []
    pos = at
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            return pos + 1, offsets
        if length > 63 or pos + length - at >= 254:
            return None  # compression pointer, reserved label type, or too long
        offsets.append(pos)
        pos += length + 1


def labels_at(data: bytes, offsets: list[int]) -> Name:
    """The labels `walk_name` found, as text (Latin-1: one character per byte)."""
    return tuple(data[at + 1:at + 1 + data[at]].decode("latin-1") for at in offsets)


def question_end(packet: bytes) -> int:
    """Where the first question of `packet` ends (after type and class), or 0."""
    walked = walk_name(packet)
    if walked is None or walked[0] + 4 > len(packet):
        return 0
    return walked[0] + 4


def read_opt(packet: bytes, at: int) -> tuple[int, bool] | None:
    """(UDP payload size, DO bit) of a well-formed version-0 OPT record at `at` that ends
    the packet; None for anything else."""
    if len(packet) < at + 11 or packet[at] or packet[at + 1] or packet[at + 2] != 41:
        return None
    if packet[at + 6]:
        return None  # EDNS version > 0: the slow path answers BADVERS (55)
    if at + 11 + ((packet[at + 9] << 8) | packet[at + 10]) != len(packet):
        return None
    return (packet[at + 3] << 8) | packet[at + 4], bool(packet[at + 7] & 0x80)


def client_udp_limit(packet: bytes) -> int:
    """The largest UDP reply the client of a one-question query takes: its EDNS payload
    size, at least 512."""
    end = question_end(packet)
    opt = read_opt(packet, end) if end and packet[10:12] == b"\x00\x01" else None
    return MIN_UDP_PAYLOAD if opt is None else max(MIN_UDP_PAYLOAD, opt[0])


def header_only(packet: bytes, rcode: Rcode) -> bytes | None:
    """A reply with no sections (FORMERR, NOTIMP, SERVFAIL), or None if it must be dropped.

    Needs a readable header; never answers a response (QR set), so two servers cannot be
    made to bounce packets at each other.
    """
    if len(packet) < 12 or packet[2] & 0x80:
        return None
    flags = QR | ((packet[2] & 0x79) << 8) | (packet[3] & 0x10) | (int(rcode) & 0xF)
    return packet[:2] + HEADER.pack(flags, 0, 0, 0, 0)
