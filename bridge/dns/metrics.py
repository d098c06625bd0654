"""DNS counters: plain ints where queries are answered, Prometheus metrics on scrape.

Each serving thread counts in its own `Counts` (list and dict slots, bumped in the hot
loop: no locks, no metric objects). `DnsServer.metrics` sums them with the forwarder's and
the cache's into a `Report`, a picklable plain value; worker processes send theirs to the
parent when it is scraped (`workers.py`). `DnsCollector` turns the sum into the
`bridge_dns_*` families on `/metrics`; the README lists them next to CoreDNS's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

K = TypeVar("K")

# `Counts.n` slots.
ANSWERED, DROPPED, TRUNCATED, ERRORS, CONNECTIONS, FORWARDED, HITS, DENIAL_HITS, MISSES, \
    LOOPS, NOT_RECURSIVE, AUTOPATH, NANOS = range(13)
SLOTS = 13
OTHER_QTYPE = 256  # `Counts.qtypes` slot of every qtype above 255
# Durations: bucket i counts requests that took fewer than 2**i ns (`int.bit_length`).
SPANS = 64  # a span never reaches 2**64 ns
EXPORTED_SPANS = range(12, 34)  # le 4.1 us ... 8.6 s (CoreDNS: 0.25 ms ... 8 s, doubling)

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
# The query types reported by name (as CoreDNS's `dns_requests_total`); others are "other".
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
          28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
          50: "NSEC3", 64: "SVCB", 65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY"}


class Counts:
    """What one thread counts, in lists (the cheapest counters to bump): `n` by slot,
    `rcodes` by rcode (their sum: the replies sent, `ANSWERED` in a `Report`), `qtypes` by
    qtype (`OTHER_QTYPE` for those above 255), `spans` by the bit length of a request's
    duration in ns."""

    __slots__ = ("n", "proto", "qtypes", "rcodes", "spans")

    def __init__(self, proto: str) -> None:
        self.proto = proto
        self.n = [0] * SLOTS
        self.rcodes = [0] * 16
        self.qtypes = [0] * (OTHER_QTYPE + 1)
        self.spans = [0] * SPANS

    def asked(self, packet: bytes) -> None:
        """A request arrived (counted here when `Table.respond` does not count it)."""
        count_qtype(self.qtypes, packet)

    def sent(self, reply: bytes, started: int, now: int) -> None:
        """A reply went out: its rcode, truncation and how long it took (ns)."""
        self.rcodes[reply[3] & 0xF] += 1
        if reply[2] & 0x02:
            self.n[TRUNCATED] += 1
        took = now - started
        self.spans[took.bit_length()] += 1
        self.n[NANOS] += took


def count_qtype(qtypes: list[int], packet: bytes) -> None:
    """Count `packet`'s qtype, read after the first zero byte from offset 12 (as the fast
    path reads it: a label holding a zero byte is rare and counts as another type)."""
    at = packet.find(0, 12)
    try:
        qtypes[OTHER_QTYPE if packet[at + 1] else packet[at + 2]] += 1
    except IndexError:
        qtypes[OTHER_QTYPE] += 1


@dataclass
class Report:
    """Every DNS count of one process (or the sum of several): plain values."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (proto, type)
    responses: dict[str, int] = field(default_factory=dict)  # rcode
    spans: dict[str, list[int]] = field(default_factory=dict)  # proto -> buckets
    nanos: dict[str, int] = field(default_factory=dict)  # proto -> total ns
    totals: list[int] = field(default_factory=lambda: [0] * SLOTS)  # `Counts.n`, summed
    stale: int = 0  # stale answers given (by the forwarder)
    entries: tuple[int, int] = (0, 0)  # cache entries: positive, negative
    upstreams: dict[str, list[int]] = field(default_factory=dict)  # to -> [sent, failures]

    def add(self, other: Report) -> Report:
        _add(self.requests, other.requests)
        _add(self.responses, other.responses)
        _add(self.nanos, other.nanos)
        for proto, buckets in other.spans.items():
            self.spans[proto] = [a + b for a, b in
                                 zip(self.spans.get(proto, [0] * SPANS), buckets, strict=True)]
        for to, pair in other.upstreams.items():
            self.upstreams[to] = [a + b for a, b in
                                  zip(self.upstreams.get(to, [0, 0]), pair, strict=True)]
        self.totals = [a + b for a, b in zip(self.totals, other.totals, strict=True)]
        self.stale += other.stale
        self.entries = (self.entries[0] + other.entries[0], self.entries[1] + other.entries[1])
        return self


def _add(mine: dict[K, int], theirs: dict[K, int]) -> None:
    for key, value in theirs.items():
        mine[key] = mine.get(key, 0) + value


def report(counts: Iterable[Counts]) -> Report:
    """The counts of several threads as one `Report` (forwarder and cache not included)."""
    out = Report()
    for one in list(counts):
        proto = one.proto
        for number, count in enumerate(one.qtypes):
            if count:
                name = QTYPES.get(number, "other")
                out.requests[proto, name] = out.requests.get((proto, name), 0) + count
        for code, count in enumerate(one.rcodes):
            if count:
                name = RCODES.get(code, str(code))
                out.responses[name] = out.responses.get(name, 0) + count
        spans = out.spans.setdefault(proto, [0] * SPANS)
        out.spans[proto] = [a + b for a, b in zip(spans, one.spans, strict=True)]
        out.nanos[proto] = out.nanos.get(proto, 0) + one.n[NANOS]
        out.totals = [a + b for a, b in zip(out.totals, one.n, strict=True)]
        out.totals[ANSWERED] += sum(one.rcodes)
    return out


class DnsCollector(Collector):
    """The `bridge_dns_*` families, computed from a `Report` source on each scrape."""

    def __init__(self, source: Callable[[], Report | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily |
                                  HistogramMetricFamily]:
        got = self.source()
        if got is None:
            return
        requests = CounterMetricFamily("bridge_dns_requests", "DNS requests received, by "
                                       "transport and query type", labels=["proto", "type"])
        for (proto, qtype), count in sorted(got.requests.items()):
            requests.add_metric([proto, qtype], count)
        yield requests
        responses = CounterMetricFamily("bridge_dns_responses", "DNS responses sent, by rcode",
                                        labels=["rcode"])
        for rcode, count in sorted(got.responses.items()):
            responses.add_metric([rcode], count)
        yield responses
        duration = HistogramMetricFamily("bridge_dns_request_duration_seconds", "From a "
                                         "request's arrival to its response, by transport",
                                         labels=["proto"])
        for proto, spans in sorted(got.spans.items()):
            buckets, running = [], 0
            for i, count in enumerate(spans):
                running += count
                if i in EXPORTED_SPANS:
                    buckets.append((_seconds(1 << i), running))
            buckets.append(("+Inf", running))
            duration.add_metric([proto], buckets, got.nanos.get(proto, 0) / 1e9)
        yield duration
        totals = got.totals
        hits = CounterMetricFamily("bridge_dns_cache_hits", "Forwarded names answered from the "
                                   "cache, by type (success, denial)", labels=["type"])
        hits.add_metric(["success"], totals[HITS])
        hits.add_metric(["denial"], totals[DENIAL_HITS])
        yield hits
        yield CounterMetricFamily("bridge_dns_cache_misses", "Forwarded names not in the cache",
                                  value=totals[MISSES])
        yield CounterMetricFamily("bridge_dns_cache_served_stale", "Expired answers given "
                                  "because every upstream failed (RFC 8767)", value=got.stale)
        entries = GaugeMetricFamily("bridge_dns_cache_entries", "Answers in the cache, by type",
                                    labels=["type"])
        entries.add_metric(["success"], got.entries[0])
        entries.add_metric(["denial"], got.entries[1])
        yield entries
        sent = CounterMetricFamily("bridge_dns_forward_requests", "Queries sent to each "
                                   "upstream", labels=["to"])
        failed = CounterMetricFamily("bridge_dns_forward_failures", "Queries an upstream did "
                                     "not answer in its turn, or refused", labels=["to"])
        for to, (count, failures) in sorted(got.upstreams.items()):
            sent.add_metric([to], count)
            failed.add_metric([to], failures)
        yield sent
        yield failed
        yield CounterMetricFamily("bridge_dns_forward_loops", "Forwarded queries that came "
                                  "back to this server, answered SERVFAIL", value=totals[LOOPS])
        yield CounterMetricFamily("bridge_dns_recursion_refused", "Names outside our zones "
                                  "refused to clients outside dns.allow_recursion",
                                  value=totals[NOT_RECURSIVE])
        yield CounterMetricFamily("bridge_dns_autopath", "Search-path expansions answered with "
                                  "the name found (autopath)", value=totals[AUTOPATH])


def _seconds(nanos: int) -> str:
    return floatToGoString(nanos / 1e9)


_COLLECTOR: DnsCollector | None = None


def export(source: Callable[[], Report | None]) -> None:
    """Serve `source`'s report on `/metrics` (the process's registry; the last call wins)."""
    global _COLLECTOR
    if _COLLECTOR is None:
        _COLLECTOR = DnsCollector(source)
        REGISTRY.register(_COLLECTOR)
    else:
        _COLLECTOR.source = source
