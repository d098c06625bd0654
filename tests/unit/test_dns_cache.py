"""The answer cache (`cache.py`) on its own, with an injected clock.

RFC 2308 (negative caching: the SOA's TTL or minimum, whichever is less; no SOA, no
caching), RFC 8767 (serve-stale: expired answers given with TTL 30 for a while), TTLs
counted down in the answers, the bound on entries, and the cache key.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from bridge.dns.cache import MAX_NEGATIVE_TTL, MAX_TTL, STALE_TTL, AnswerCache, cache_key, lifetime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(name: str = "www.example.com.", qtype: str = "A", **kwargs) -> bytes:
    return dns.message.make_query(name, qtype, **kwargs).to_wire()


def reply_to(packet: bytes, *answer: str, rcode: int = dns.rcode.NOERROR,
             soa: str | None = None, tc: bool = False) -> bytes:
    """A reply to `packet`: answer lines `NAME TTL TYPE DATA`, optionally an SOA line."""
    msg = dns.message.make_response(dns.message.from_wire(packet))
    msg.set_rcode(rcode)
    for line in answer:
        name, ttl, rdtype, data = line.split(None, 3)
        msg.answer.append(dns.rrset.from_text(name, int(ttl), "IN", rdtype, data))
    if soa is not None:
        name, ttl, data = soa.split(None, 2)
        msg.authority.append(dns.rrset.from_text(name, int(ttl), "IN", "SOA", data))
    if tc:
        msg.flags |= dns.flags.TC
    return msg.to_wire()


def ttls(wire: bytes) -> list[int]:
    msg = dns.message.from_wire(wire)
    return [rrset.ttl for section in (msg.answer, msg.authority) for rrset in section]


SOA = "example.com. 900 ns.example.com. admin.example.com. 1 7200 1800 86400 60"


def test_positive_answer_is_kept_for_its_least_ttl_and_counts_down():
    clock = Clock()
    cache = AnswerCache(10, clock=clock)
    packet = query()
    key = cache_key(packet)
    assert key is not None
    stored = reply_to(packet, "www.example.com. 300 CNAME web.example.com.",
                      "web.example.com. 120 A 192.0.2.1")
    assert cache.put(key, stored)
    clock.now += 45.7
    entry = cache.get(key, 512)
    assert entry is not None, "fresh at 45.7 s of 120"
    again = query(id=4242)
    answer = cache.reply(entry, again, key)
    assert ttls(answer) == [300 - 45, 120 - 45], "each TTL counted down by the whole seconds"
    assert answer[:2] == again[:2], "the asking client's ID"
    clock.now = 1000.0 + 120
    assert cache.get(key, 512) is None, "expired at the least TTL of its records"


def test_question_comes_back_as_the_client_spelled_it():
    cache = AnswerCache(10, clock=Clock())
    first = query("www.example.com.")
    key = cache_key(first)
    cache.put(key, reply_to(first, "www.example.com. 60 A 192.0.2.1"))
    mixed = query("WwW.ExAmPle.CoM.")
    assert cache_key(mixed) == key, "the key ignores case"
    answer = dns.message.from_wire(cache.reply(cache.get(key, 512), mixed, key))
    assert answer.question[0].name.to_text() == "WwW.ExAmPle.CoM."


def test_nxdomain_is_kept_for_the_soa_minimum_when_less_than_its_ttl():
    """RFC 2308 section 5: the negative TTL is min(SOA TTL, SOA MINIMUM)."""
    clock = Clock()
    cache = AnswerCache(10, clock=clock)
    packet = query("nothing.example.com.")
    key = cache_key(packet)
    assert cache.put(key, reply_to(packet, rcode=dns.rcode.NXDOMAIN, soa=SOA))
    entry = cache.get(key, 512)
    assert entry is not None and entry.negative and entry.ttl == 60
    clock.now += 59
    assert cache.get(key, 512) is not None
    clock.now += 1
    assert cache.get(key, 512) is None, "gone at the SOA minimum (60), not its TTL (900)"


def test_nodata_is_kept_for_the_soa_ttl_when_less_than_the_minimum():
    cache = AnswerCache(10, clock=Clock())
    packet = query("www.example.com.", "AAAA")
    key = cache_key(packet)
    soa = "example.com. 20 ns.example.com. admin.example.com. 1 7200 1800 86400 600"
    assert cache.put(key, reply_to(packet, soa=soa))
    assert cache.get(key, 512).ttl == 20


@pytest.mark.parametrize(("why", "make"), [
    ("negative without an SOA (RFC 2308 section 5)",
     lambda p: reply_to(p, rcode=dns.rcode.NXDOMAIN)),
    ("SERVFAIL", lambda p: reply_to(p, rcode=dns.rcode.SERVFAIL, soa=SOA)),
    ("REFUSED", lambda p: reply_to(p, rcode=dns.rcode.REFUSED)),
    ("truncated", lambda p: reply_to(p, tc=True)),
    ("TTL 0", lambda p: reply_to(p, "www.example.com. 0 A 192.0.2.1")),
    ("cut short", lambda p: reply_to(p, "www.example.com. 60 A 192.0.2.1")[:-3]),
])
def test_what_is_not_kept(why, make):
    cache = AnswerCache(10, clock=Clock())
    packet = query()
    assert not cache.put(cache_key(packet), make(packet)), why
    assert len(cache) == 0, why


def test_long_ttls_are_capped():
    packet = query()
    assert lifetime(reply_to(packet, "www.example.com. 86400 A 192.0.2.1"))[0] == MAX_TTL
    soa = "example.com. 86400 ns.example.com. admin.example.com. 1 7200 1800 86400 86400"
    assert lifetime(reply_to(packet, rcode=dns.rcode.NXDOMAIN, soa=soa))[0] == MAX_NEGATIVE_TTL


def test_serve_stale_gives_ttl_30_within_the_window_only():
    """RFC 8767: an expired answer may be given with TTL 30 when resolution fails, up to
    the configured time past its expiry."""
    clock = Clock()
    cache = AnswerCache(10, serve_stale=100, clock=clock)
    packet = query()
    key = cache_key(packet)
    cache.put(key, reply_to(packet, "www.example.com. 10 A 192.0.2.1"))
    assert cache.stale(key) is None, "fresh entries are not stale"
    clock.now += 10
    entry = cache.stale(key)
    assert entry is not None
    assert ttls(cache.reply(entry, packet, key, stale=True)) == [STALE_TTL]
    clock.now += 99.9
    assert cache.stale(key) is not None
    clock.now += 0.1
    assert cache.stale(key) is None, "past serve_stale seconds after expiry"


def test_serve_stale_off():
    clock = Clock()
    cache = AnswerCache(10, serve_stale=0, clock=clock)
    packet = query()
    key = cache_key(packet)
    cache.put(key, reply_to(packet, "www.example.com. 10 A 192.0.2.1"))
    clock.now += 11
    assert cache.stale(key) is None


def test_bounded_in_entries_the_oldest_goes_first():
    cache = AnswerCache(3, clock=Clock())
    keys = []
    for i in range(5):
        packet = query(f"n{i}.example.com.")
        key = cache_key(packet)
        keys.append(key)
        cache.put(key, reply_to(packet, f"n{i}.example.com. 60 A 192.0.2.{i}"))
    assert len(cache) == 3
    assert [cache.get(k, 512) is not None for k in keys] == [False, False, True, True, True]


def test_size_zero_keeps_nothing():
    cache = AnswerCache(0, clock=Clock())
    packet = query()
    assert not cache.put(cache_key(packet), reply_to(packet, "www.example.com. 60 A 192.0.2.1"))


def test_a_reply_larger_than_the_client_takes_is_not_given():
    cache = AnswerCache(10, clock=Clock())
    packet = query(use_edns=0, payload=4096)
    key = cache_key(packet)
    cache.put(key, reply_to(packet, *[f"www.example.com. 60 A 192.0.2.{i}" for i in range(60)]))
    assert cache.get(key, 4096) is not None
    assert cache.get(key, 512) is None, "a UDP client that takes 512 bytes asks upstream"


def test_key_separates_what_changes_the_reply():
    plain = cache_key(query())
    assert cache_key(query("WWW.example.com.")) == plain
    others = [cache_key(query(qtype="AAAA")), cache_key(query(use_edns=0)),
              cache_key(query(want_dnssec=True)), cache_key(query(flags=dns.flags.RD | dns.flags.CD)),
              cache_key(query(flags=0))]
    assert len({plain, *others}) == 6, "qtype, EDNS, DO, CD and RD each make another key"
    assert cache_key(b"\x00\x01" + b"\x00" * 5) is None, "not a query"
    two = dns.message.make_query("a.example.", "A")
    two.question.append(dns.message.make_query("b.example.", "A").question[0])
    assert cache_key(two.to_wire()) is None, "several questions"


def test_counts_by_type():
    cache = AnswerCache(10, clock=Clock())
    for name, answer in (("a.example.com.", "a.example.com. 60 A 192.0.2.1"), ("b.example.com.", None)):
        packet = query(name)
        cache.put(cache_key(packet), reply_to(packet, answer) if answer else
                  reply_to(packet, rcode=dns.rcode.NXDOMAIN, soa=SOA))
    assert cache.counts() == (1, 1)
