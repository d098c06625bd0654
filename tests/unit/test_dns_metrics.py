"""DNS counts as Prometheus families (`metrics.py`): names, labels, cumulative buckets, sums
of several processes' reports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.dns import metrics
from bridge.dns.metrics import Counts, DnsCollector, Report, report


def _scrape(got: Report) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(DnsCollector(lambda: got))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _counts(proto: str) -> Counts:
    counts = Counts(proto)
    for packet in [b"\x00" * 12 + b"\x01a\x00\x00\x01\x00\x01"] * 3 + \
            [b"\x00" * 12 + b"\x01a\x00\x00\x1c\x00\x01",  # AAAA
             b"\x00" * 12 + b"\x01a\x00\x01\x01\x00\x01",  # CAA (257)
             b"\x00" * 12 + b"\x01a\x00\x01\x00\x00\x01",  # 256
             b"\x00" * 12 + b"\x01a"]:  # cut short
        counts.asked(packet)
    for took in (3_000, 20_000, 300_000):  # 3 us, 20 us, 0.3 ms
        counts.sent(b"\x00\x00\x81\x80", 1_000, 1_000 + took)
    counts.sent(b"\x00\x00\x81\x83", 0, 5_000_000)  # NXDOMAIN, 5 ms
    counts.n[metrics.HITS] += 2
    counts.n[metrics.MISSES] += 1
    return counts


def test_families_names_and_labels():
    got = report([_counts("udp")])
    got.upstreams = {"127.0.0.1:53": [5, 1]}
    got.stale = 4
    got.entries = (7, 2)
    scraped = _scrape(got)
    assert scraped[("bridge_dns_requests_total", (("proto", "udp"), ("type", "A")))] == 3
    assert scraped[("bridge_dns_requests_total", (("proto", "udp"), ("type", "AAAA")))] == 1
    assert scraped[("bridge_dns_requests_total", (("proto", "udp"), ("type", "other")))] == 3, \
        "types above 255 and an unreadable question: other"
    assert scraped[("bridge_dns_responses_total", (("rcode", "NOERROR"),))] == 3
    assert scraped[("bridge_dns_responses_total", (("rcode", "NXDOMAIN"),))] == 1
    assert scraped[("bridge_dns_cache_hits_total", (("type", "success"),))] == 2
    assert scraped[("bridge_dns_cache_misses_total", ())] == 1
    assert scraped[("bridge_dns_cache_served_stale_total", ())] == 4
    assert scraped[("bridge_dns_cache_entries", (("type", "denial"),))] == 2
    assert scraped[("bridge_dns_forward_requests_total", (("to", "127.0.0.1:53"),))] == 5
    assert scraped[("bridge_dns_forward_failures_total", (("to", "127.0.0.1:53"),))] == 1


def test_duration_buckets_are_cumulative_powers_of_two():
    scraped = _scrape(report([_counts("tcp")]))

    def bucket(le: str) -> float:
        return scraped[("bridge_dns_request_duration_seconds_bucket",
                        (("le", le), ("proto", "tcp")))]

    assert bucket("4.096e-06") == 1, "3 us"
    assert bucket("3.2768e-05") == 2, "and 20 us"
    assert bucket("0.000524288") == 3, "and 0.3 ms"
    assert bucket("0.008388608") == 4 and bucket("+Inf") == 4
    assert scraped[("bridge_dns_request_duration_seconds_count", (("proto", "tcp"),))] == 4
    total = scraped[("bridge_dns_request_duration_seconds_sum", (("proto", "tcp"),))]
    assert abs(total - 0.005323) < 1e-9


def test_reports_of_several_processes_add_up():
    one, two = report([_counts("udp")]), report([_counts("udp"), _counts("tcp")])
    one.upstreams, two.upstreams = {"a": [1, 0]}, {"a": [2, 1], "b": [3, 0]}
    total = Report().add(one).add(two)
    assert total.requests[("udp", "A")] == 6 and total.requests[("tcp", "A")] == 3
    assert total.upstreams == {"a": [3, 1], "b": [3, 0]}
    assert total.totals[metrics.HITS] == 6
    assert sum(total.spans["udp"]) == 8
