"""The reference path: a query parsed whole with dnslib, answered, encoded with dnslib.

Every packet the fast path (`respond.py`) does not take comes here: several questions, an
opcode other than QUERY, a class other than IN, EDNS version above 0, a compressed
question, malformed bytes. It is plain rather than quick, and it is the reference: tests
compare the fast path's replies with its replies for every name of sample catalogs. Also
here: the reply for an ExternalName chased through the upstream (27, 28), our CNAME chain
joined with the upstream's records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import dnslib

from bridge.dns.packet import CLASS_IN, MIN_UDP_PAYLOAD, TCP_LIMIT, header_only
from bridge.dns.query import Name
from bridge.dns.records import (
    AAAA,
    CNAME,
    NOT_OURS,
    NS,
    PTR,
    REFUSED,
    SOA,
    SRV,
    A,
    NotOurs,
    QType,
    Rcode,
    Record,
    Response,
    shuffled,
)

# (question name, qtype) -> the response of the zone that holds the name, or NOT_OURS.
Answer = Callable[[Sequence[str | bytes], int], Response | NotOurs]


def parse(data: bytes) -> dnslib.DNSRecord | None:
    """A whole message, or None when dnslib cannot read it."""
    try:
        return dnslib.DNSRecord.parse(data)
    except Exception:  # dnslib raises assorted types for assorted garbage
        return None


def respond_slow(packet: bytes, tcp: bool, answer: Answer, *, forwarding: bool,
                 udp_payload: int, refuse: bool = False) -> bytes | NotOurs | None:
    """The reply to any packet: bytes, NOT_OURS for a question we do not serve, or None to
    drop it. `refuse` answers REFUSED instead of asking `answer`; `forwarding` sets RA."""
    if len(packet) < 12 or packet[2] & 0x80:
        return None  # no header to answer to, or a response: drop (counted by server)
    if (packet[2] >> 3) & 0xF:
        return header_only(packet, Rcode.NOTIMP)  # only QUERY is implemented
    query = parse(packet)
    if query is None:
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
        response = answer(question.qname.label, question.qtype)
        if isinstance(response, NotOurs):
            return NOT_OURS
        response = shuffled(response)
    reply.header.aa = int(response.authoritative)
    reply.header.ra = int(forwarding)
    reply.header.rcode = int(response.rcode) & 0xF
    records = [[_dnslib_rr(r) for r in section]
               for section in (response.answer, response.authority, response.additional)]
    edns = None
    if opt is not None:
        edns = dnslib.EDNS0(udp_len=udp_payload, ext_rcode=int(response.rcode) >> 4,
                            flags="do" if opt.edns_do else "")
    return _pack_within(reply, records, edns, _limit(opt, tcp, udp_payload))


def chased(query: dnslib.DNSRecord, response: Response, upstream: dnslib.DNSRecord, tcp: bool,
           *, forwarding: bool, udp_payload: int) -> bytes:
    """The reply to `query` (one question) for an ExternalName chased upstream: our CNAME
    chain (`response`), then the upstream's answer for its target (NOERROR or NXDOMAIN).

    TC is copied from the upstream's reply (28); the rcode is the upstream's (RFC 6604: the
    rcode of the last name). The reply is cut to the client's size like any other.
    """
    opts = [rr for rr in query.ar if rr.rtype == QType.OPT]
    opt = opts[0] if opts else None
    header = dnslib.DNSHeader(id=query.header.id, bitmap=0, qr=1, aa=1,
                              ra=int(forwarding), rd=query.header.rd,
                              cd=query.header.cd, rcode=upstream.header.rcode)
    out = dnslib.DNSRecord(header, q=query.questions[0])
    sections = [[_dnslib_rr(r) for r in response.answer] + list(upstream.rr),
                [rr for rr in upstream.auth if rr.rtype != QType.OPT], []]
    edns = None
    if opt is not None:
        edns = dnslib.EDNS0(udp_len=udp_payload, flags="do" if opt.edns_do else "")
    packed = _pack_within(out, sections, edns, _limit(opt, tcp, udp_payload))
    if upstream.header.tc:
        packed = packed[:2] + bytes([packed[2] | 0x02]) + packed[3:]
    return packed


def cnamed(packet: bytes, found: bytes, limit: int) -> bytes | None:
    """`found`, the reply for another name, as the reply to `packet` (autopath): a CNAME
    from the asked name to the name of the first answer record that is not the asked one,
    with that record's TTL, put first; the question set back to the asked one; the rest as
    found (CoreDNS autopath's `cnamer`). Cut to `limit` bytes. None if either is unreadable.
    """
    query, reply = parse(packet), parse(found)
    if query is None or reply is None or len(query.questions) != 1:
        return None
    asked = query.questions[0].qname
    answers = list(reply.rr)
    for rr in answers:
        if rr.rname != asked:
            answers.insert(0, dnslib.RR(asked, QType.CNAME, ttl=rr.ttl,
                                        rdata=dnslib.CNAME(rr.rname)))
            break
    reply.header.id = query.header.id
    reply.questions = [query.questions[0]]
    opts = [rr for rr in reply.ar if rr.rtype == QType.OPT]
    rest = [rr for rr in reply.ar if rr.rtype != QType.OPT]
    return _pack_within(reply, [answers, list(reply.auth), rest], opts[0] if opts else None,
                        limit)


def _limit(opt: dnslib.RR | None, tcp: bool, udp_payload: int) -> int:
    if tcp:
        return TCP_LIMIT
    if opt is not None:
        return max(MIN_UDP_PAYLOAD, min(opt.edns_len, udp_payload))
    return MIN_UDP_PAYLOAD


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
