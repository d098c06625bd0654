"""Pure helpers of bench/dns_bench.py: data, query file, unbound config, parsing, checks."""

from __future__ import annotations

import importlib.util
import random
import struct
import sys
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench"
_PATH = _BENCH / "dns_bench.py"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))  # as when run: dns_bench imports its sibling `common`
_SPEC = importlib.util.spec_from_file_location("dns_bench", _PATH)
assert _SPEC and _SPEC.loader
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["dns_bench"] = bench
_SPEC.loader.exec_module(bench)


def test_dataset_is_deterministic_with_distinct_ips_and_namespaces_of_fifty():
    services = bench.dataset(120, 5)
    assert services == bench.dataset(120, 5)
    ips = [ip for svc in services for ip in svc.ips]
    assert len(ips) == len(set(ips)) == 600
    assert services[0].fqdn == "svc-00000.bench-0000.svc.cluster.local."
    assert services[50].namespace == "bench-0001"
    assert services[0].srv_name == "_http._tcp.svc-00000.bench-0000.svc.cluster.local."


def test_pod_and_fresh_ips_never_overlap():
    assert bench.pod_ip(1) == "10.0.0.1"
    assert bench.pod_ip(256) == "10.0.1.0"
    assert bench.fresh_ip(0) == "10.128.0.0"
    pods = {bench.pod_ip(i) for i in range(1, 60_000)}
    fresh = {bench.fresh_ip(i) for i in range(60_000)}
    assert not pods & fresh
    with pytest.raises(ValueError):
        bench.pod_ip(0)


def test_srv_weight_follows_coredns():
    assert bench.srv_weight(5) == 20
    assert bench.srv_weight(3) == 33
    assert bench.srv_weight(200) == 1


def test_query_mix_has_the_issue_shares():
    services = bench.dataset(50, 3)
    queries = bench.make_queries(services, 1000, seed=1)
    kinds = [q.kind for q in queries]
    assert kinds.count("A") == 700
    assert kinds.count("SRV") == kinds.count("AAAA") == kinds.count("NX") == 100
    a = [q for q in queries if q.kind == "A"]
    assert sum(q.edns for q in a) == 350
    assert not any(q.edns for q in queries if q.kind != "A")
    assert sum(q.qname != q.qname.lower() for q in a) > 650  # mixed case
    nx = [q.qname for q in queries if q.kind == "NX"]
    assert all(q.endswith(".cluster.local.") for q in nx)
    assert {q.count(".svc.") for q in nx} == {0, 1}  # every search-path suffix appears


def test_query_wire_parses_with_dnspython_and_keeps_case():
    wire = bench.query_wire("Svc-1.Bench-0000.svc.cluster.local.", 1, edns=True, qid=7)
    msg = dns.message.from_wire(wire)
    assert msg.id == 7
    assert msg.question[0].name.to_text() == "Svc-1.Bench-0000.svc.cluster.local."
    assert msg.edns == 0 and msg.payload == bench.EDNS_PAYLOAD
    assert dns.message.from_wire(bench.query_wire("a.b.", 28, edns=False)).edns == -1


def test_binary_query_file_is_length_prefixed_packets():
    queries = bench.make_queries(bench.dataset(5, 2), 10, seed=2)
    data = bench.binary_query_file(queries)
    pos, packets = 0, []
    while pos < len(data):
        (length,) = struct.unpack_from("!H", data, pos)
        packets.append(data[pos + 2:pos + 2 + length])
        pos += 2 + length
    assert packets == [q.wire for q in queries]


def test_unbound_config_holds_every_record():
    services = bench.dataset(2, 2)
    text = bench.unbound_config(5300, Path("/tmp/x"), services)
    assert "num-threads: 1" in text and "port: 5300" in text
    assert 'local-zone: "cluster.local." static' in text
    svc = services[0]
    assert f'local-data: "{svc.fqdn} 30 IN A {svc.ips[0]}"' in text
    target = f"{bench.endpoint_label(svc.ips[1])}.{svc.fqdn}"
    assert f'local-data: "{svc.srv_name} 30 IN SRV 0 50 8080 {target}"' in text
    assert f'local-data: "{target} 30 IN A {svc.ips[1]}"' in text
    assert text.count("IN SOA") == 1


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    random.Random(3).shuffle(values)
    assert bench.percentile(values, 50) == 50
    assert bench.percentile(values, 99) == 99
    assert bench.percentile(values, 100) == 100
    assert bench.percentile([5.0], 99) == 5.0
    assert bench.percentile([], 50) != bench.percentile([], 50)  # nan


def test_parse_dnsperf_statistics():
    text = """Statistics:

  Queries sent:         108290
  Queries completed:    108288 (100.00%)
  Queries lost:         2 (0.00%)

  Response codes:       NOERROR 54145 (50.00%), NXDOMAIN 54143 (50.00%)
  Average packet size:  request 40, response 83
  Run time (s):         2.000252
  Queries per second:   54138.178589

  Average Latency (s):  0.001469 (min 0.000016, max 0.006476)
"""
    stats = bench.parse_dnsperf(text)
    assert stats["sent"] == 108290 and stats["lost"] == 2
    assert stats["qps"] == pytest.approx(54138.178589)
    assert stats["avg_latency"] == pytest.approx(0.001469)
    assert stats["rcode_NXDOMAIN"] == 54143


def _reply(query_wire: bytes, *records: str, rcode: int = 0, authority: tuple[str, ...] = (),
           additional: tuple[str, ...] = ()) -> bytes:
    query = dns.message.from_wire(query_wire)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    reply.set_rcode(rcode)
    for section, texts in ((reply.answer, records), (reply.authority, authority),
                           (reply.additional, additional)):
        for text in texts:
            name, ttl, rdclass, rdtype, *rdata = text.split()
            section.append(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, " ".join(rdata)))
    return reply.to_wire()


def test_check_answer_accepts_right_and_rejects_wrong_a_sets():
    svc = bench.Svc("ns", "web", ("10.0.0.1", "10.0.0.2"))
    query = bench.Query("A", "WeB.ns.SVC.cluster.local.", 1, False, 0)
    wire = bench.with_id(query.wire, 99)
    good = _reply(wire, "web.ns.svc.cluster.local. 30 IN A 10.0.0.1",
                  "web.ns.svc.cluster.local. 30 IN A 10.0.0.2")
    assert bench.check_answer(query, wire, good, svc) is None
    short = _reply(wire, "web.ns.svc.cluster.local. 30 IN A 10.0.0.1")
    assert "A set" in bench.check_answer(query, wire, short, svc)


def test_check_answer_nxdomain_needs_the_soa():
    query = bench.Query("NX", "api.example.com.svc.cluster.local.", 1, False, -1)
    wire = bench.with_id(query.wire, 5)
    soa = "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 2 3 4 5"
    assert bench.check_answer(query, wire, _reply(wire, rcode=3, authority=(soa,)), None) is None
    assert bench.check_answer(query, wire, _reply(wire, rcode=3), None) is not None
    assert bench.check_answer(query, wire, _reply(wire, rcode=0, authority=(soa,)), None) is not None


def test_a_answer_reads_addresses_from_a_compressed_reply():
    wire = bench.with_id(bench.query_wire("web.ns.svc.cluster.local.", 1, edns=False), 42)
    reply = _reply(wire, "web.ns.svc.cluster.local. 30 IN A 10.0.0.2",
                   "web.ns.svc.cluster.local. 30 IN A 10.0.0.1")
    assert bench.a_answer(reply) == (42, 0, ("10.0.0.1", "10.0.0.2"))
    assert bench.a_answer(reply[:20]) is None
    assert bench.a_answer(wire) is None  # a query, not a reply


def test_track_accepts_only_states_of_the_chain_and_measures_each_change():
    track = bench._Track([("a",), ("a", "b")], [10.0], b"")
    assert track.observe(("a",), 10.5) == ("ok", [])
    assert track.observe(("x",), 10.6) == ("mixed", [])
    track.states.append(("b",))
    track.written.append(11.0)
    verdict, latencies = track.observe(("b",), 12.0)  # skipped the middle state
    assert verdict == "ok" and latencies == [pytest.approx(2.0), pytest.approx(1.0)]
    assert track.current
    assert track.observe(("a",), 12.1) == ("back", [])


def test_combine_weights_runs_by_time_and_merges_samples():
    one = bench.PerfResult("bridge", qps=100.0, avg_ms=1.0, lost=1, sent=1001, completed=1000,
                           run_time=10.0, rcodes={"NOERROR": 1000}, samples=[0.001] * 99)
    two = bench.PerfResult("bridge", qps=300.0, avg_ms=3.0, lost=0, sent=3000, completed=3000,
                           run_time=10.0, rcodes={"NOERROR": 2990, "NXDOMAIN": 10},
                           samples=[0.003])
    both = bench.combine([one, two])
    assert both.qps == pytest.approx(200.0)
    assert both.avg_ms == pytest.approx(2.5)
    assert (both.lost, both.sent) == (1, 4001)
    assert both.rcodes == {"NOERROR": 3990, "NXDOMAIN": 10}
    assert both.p99_ms == pytest.approx(1.0) and both.p50_ms == pytest.approx(1.0)
    assert bench.combine([one]) is one


def test_others_cores_counts_only_processes_outside_the_bench():
    before = {1: 10.0, 2: 5.0, 3: 1.0}
    after = {1: 12.0, 2: 9.0, 4: 7.0}  # 3 ended, 4 started: neither is counted
    assert bench.others_cores(before, after, ours={2}, seconds=4.0) == pytest.approx(0.5)
    assert bench.others_cores(before, after, ours=set(), seconds=0.0) == 0.0


def test_change_delay_percentiles_count_unseen_changes_as_lower_bounds():
    result = bench.ChangeResult(latencies=[0.01] * 98, unseen_floors=[5.0, 6.0])
    assert result.delay(50) == (0.01, False)
    assert result.delay(99) == (5.0, True)
    assert result.delay_text(99) == ">= 5,000 ms"
    assert result.delay_text(50) == "10 ms"
    assert bench.ChangeResult().delay(50)[0] != bench.ChangeResult().delay(50)[0]  # nan
