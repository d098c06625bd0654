"""Reading query packets without parsing them whole (bridge.dns.packet), without sockets.

The table, the server and the forwarder all read the question and the OPT record through
these functions; the fuzz and conformance tests cover them end to end.
"""

from __future__ import annotations

import struct

from bridge.dns.packet import client_udp_limit, labels_at, question_end, read_opt, walk_name


def query(name: bytes, *, opt: bytes = b"") -> bytes:
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 1 if opt else 0)
    return header + name + struct.pack(">HH", 1, 1) + opt


def opt_record(payload: int, *, version: int = 0, do: bool = False, rdata: bytes = b"") -> bytes:
    return b"\x00\x00\x29" + struct.pack(">HBBHH", payload, 0, version, 0x8000 if do else 0,
                                         len(rdata)) + rdata


NAME = b"\x03web\x07default\x03svc\x07cluster\x05local\x00"


def test_walk_name_finds_the_end_and_every_label():
    packet = query(NAME)
    walked = walk_name(packet)
    assert walked is not None, "a plain name"
    end, offsets = walked
    assert end == 12 + len(NAME)
    assert labels_at(packet, offsets) == ("web", "default", "svc", "cluster", "local")
    assert question_end(packet) == len(packet)


def test_walk_name_refuses_pointers_cut_names_and_names_over_255_bytes():
    assert walk_name(query(b"\x03web\xc0\x0c")) is None, "a compression pointer"
    assert walk_name(query(NAME)[:20]) is None, "cut short"
    longest = b"\x3f" + b"a" * 63  # 64 wire bytes a label
    fits = longest * 3 + b"\x3d" + b"a" * 61 + b"\x00"  # 255 bytes
    assert len(fits) == 255 and walk_name(query(fits)) is not None
    too_long = longest * 3 + b"\x3e" + b"a" * 62 + b"\x00"  # 256 bytes
    assert walk_name(query(too_long)) is None, "RFC 1035 3.1: at most 255 bytes"
    assert question_end(query(too_long)) == 0


def test_read_opt_takes_only_a_version_0_record_that_ends_the_packet():
    at = 12 + len(NAME) + 4
    assert read_opt(query(NAME, opt=opt_record(4096, do=True)), at) == (4096, True)
    assert read_opt(query(NAME, opt=opt_record(1232, rdata=b"\x00\x0a\x00\x00")), at) == \
        (1232, False), "options are allowed"
    assert read_opt(query(NAME, opt=opt_record(4096, version=1)), at) is None, \
        "EDNS version 1 is the slow path's (BADVERS)"
    assert read_opt(query(NAME, opt=opt_record(4096) + b"\x00"), at) is None, "trailing bytes"
    assert read_opt(query(NAME), at) is None, "no OPT at all"


def test_client_udp_limit_is_the_edns_payload_but_never_under_512():
    assert client_udp_limit(query(NAME)) == 512
    assert client_udp_limit(query(NAME, opt=opt_record(4096))) == 4096
    assert client_udp_limit(query(NAME, opt=opt_record(100))) == 512
    assert client_udp_limit(b"\x00" * 5) == 512, "no readable question"
