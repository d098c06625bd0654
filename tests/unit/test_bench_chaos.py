"""Pure parts of bench/chaos: grading DNS answers against a name's history, what counts as a
spurious delete or a write at rest, fuzzed packets, the arguments and the table."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))  # as when run: the bench's modules import their siblings

import chaos_abuse  # noqa: E402
import chaos_bench  # noqa: E402
import chaos_scenarios  # noqa: E402
import chaos_world  # noqa: E402
from chaos_traffic import DnsProbe, Observation  # noqa: E402

from bridge.catalog.naming import consul_service_id  # noqa: E402


def _svc() -> chaos_world.Svc:
    svc = chaos_world.Svc("ns", "web", ["10.0.0.1", "10.0.0.2"], [True, True])
    svc.record(0.0, 0.0)
    return svc


def test_an_answer_is_ok_while_its_state_holds_and_for_the_allowance_after():
    svc = _svc()
    svc.ready[1] = False
    svc.record(10.0, 10.5)  # the write was sent at 10.0 and returned at 10.5
    both, one = ("10.0.0.1", "10.0.0.2"), ("10.0.0.1",)
    assert svc.grade(both, 5.0, 5.001, allowance=2.0) == "ok"
    assert svc.grade(both, 12.0, 12.001, allowance=2.0) == "ok", "within 2 s of the change"
    assert svc.grade(both, 13.0, 13.001, allowance=2.0) == "stale", "past the allowance"
    assert svc.grade(one, 10.1, 10.2, allowance=2.0) == "ok", "the new state may show once its write was sent"
    assert svc.grade(one, 5.0, 5.001, allowance=2.0) == "wrong", "before its write it never held"
    assert svc.grade(("10.9.9.9",), 11.0, 11.001, allowance=2.0) == "wrong"


def test_recording_the_same_answer_twice_keeps_one_state():
    svc = _svc()
    svc.ips[0] = "10.0.0.1"  # a write that changes nothing DNS answers
    svc.record(3.0, 3.1)
    assert len(svc.history) == 1 and svc.history[0].ended is None


def test_the_probe_grade_counts_each_kind_and_the_longest_gap():
    cluster = chaos_world.Cluster(1)
    svc = cluster.services[0]
    probe = DnsProbe.__new__(DnsProbe)  # grading only: no socket, no threads
    probe._lock = __import__("threading").Lock()
    probe.observations = [
        Observation(1.0, svc, 1.01, 0, svc.answer()),
        Observation(2.0, svc),  # unanswered
        Observation(3.0, svc, 3.01, 2),  # SERVFAIL
        Observation(4.0, svc, 4.01, 3),  # NXDOMAIN
        Observation(5.0, svc, 5.01, 0, ("10.200.0.1",)),  # never held
        Observation(6.0, svc, 6.5, 0, svc.answer()),
    ]
    grade = probe.grade()
    assert (grade.sent, grade.ok, grade.unanswered, grade.servfail, grade.nxdomain, grade.wrong) == (6, 2, 1, 1, 1, 1)
    assert grade.incorrect == 2
    assert grade.longest_gap == pytest.approx(5.49)
    assert probe.grade(servfail_ok=True).ok == 3
    assert probe.grade(2.5, 4.5).sent == 2


def test_expected_consul_follows_applied_changes_and_moves_never_reuse_an_address():
    cluster = chaos_world.Cluster(4, seed=3)
    seen = {ip for svc in cluster.services for ip in svc.ips}
    for _ in range(50):
        change = cluster.pick_change()
        if change.kind == "move":
            assert change.ip not in seen
            seen.add(change.ip)
        cluster.applied(change, 1.0, 1.1)
        assert any(change.svc.ready), "a change never leaves a name without a ready Pod"
    expected = cluster.expected_consul()
    for svc in cluster.services:
        for ip, ready in zip(svc.ips, svc.ready, strict=True):
            assert expected[consul_service_id(svc.name, ip)] == (svc.name, ip, "passing" if ready else "critical")
    assert len(expected) == 4 * chaos_world.PODS_PER_SERVICE


def _txn(*ops: dict) -> dict:
    return {"method": "PUT", "path": "/v1/txn", "status": 200, "body": json.dumps(list(ops)), "at": 0.0, "query": {}}


def test_a_delete_of_an_instance_that_must_stay_is_spurious_and_of_one_that_went_is_not():
    cluster = chaos_world.Cluster(1)
    svc = cluster.services[0]
    keep = consul_service_id(svc.name, svc.ips[0])
    gone = consul_service_id(svc.name, "10.250.0.1")
    records = [_txn({"Service": {"Verb": "delete", "Node": chaos_world.NODE, "Service": {"ID": keep}}},
                    {"Service": {"Verb": "delete", "Node": chaos_world.NODE, "Service": {"ID": gone}}},
                    {"Service": {"Verb": "set", "Node": chaos_world.NODE, "Service": {"ID": keep}}})]
    assert chaos_scenarios.spurious_deletes(records, cluster) == 1
    assert chaos_scenarios.catalog_writes(records) == 3
    session = {"method": "PUT", "path": "/v1/session/renew/x", "status": 200, "body": "", "at": 0.0, "query": {}}
    assert chaos_scenarios.catalog_writes([session, _txn({"KV": {"Verb": "get", "Key": "k"}})]) == 0


def test_the_request_rate_counts_the_window_and_the_rate_after_its_first_five_seconds():
    records = [{"at": 100.0 + t} for t in (0.5, 1, 2, 6, 7, 8, 9, 10, 11, 30)]
    assert chaos_scenarios.request_rate(records, 100.0, 15.0 + 100.0) == "9 requests, 0.6/s after 5 s"


def test_fuzzed_packets_are_deterministic_by_seed_and_varied():
    wire = chaos_abuse.query_wire("a.b.svc.cluster.local.", 1, edns=True)
    one = [chaos_abuse.mutate(random.Random(5), wire) for _ in range(1)]
    assert one == [chaos_abuse.mutate(random.Random(5), wire)]
    rng = random.Random(9)
    packets = {chaos_abuse.mutate(rng, wire) for _ in range(500)}
    assert len(packets) > 200 and wire not in packets
    assert any(len(p) < len(wire) for p in packets) and any(len(p) > len(wire) for p in packets)


def test_quick_mode_shrinks_what_was_not_given_and_names_are_checked(tmp_path):
    args = chaos_bench.parse_args(["--quick", "--outage-seconds", "3", "--workdir", str(tmp_path)])
    assert args.outage_seconds == 3 and args.window == chaos_bench.QUICK["window"]
    assert args.names == list(chaos_scenarios.SCENARIOS)
    full = chaos_bench.parse_args(["--scenarios", "soak", "--workdir", str(tmp_path)])
    assert full.soak == 10 and full.soak_services == 2000 and full.names == ["soak"]
    with pytest.raises(SystemExit):
        chaos_bench.parse_args(["--scenarios", "nope"])


def test_the_table_has_a_row_per_scenario_and_says_which_do_not_hold():
    good = chaos_scenarios.Row("a", "fault a", converge=0.5, verdict=chaos_world.Verdict(), spurious_deletes=0)
    bad = chaos_scenarios.Row("b", "fault b", converge=None, verdict=chaos_world.Verdict(duplicates=2),
                              failures=["x"])
    lines = chaos_bench.table([good, bad]).splitlines()
    assert len(lines) == 4
    assert lines[2].endswith("| yes |") and "0.50 s" in lines[2]
    assert lines[3].endswith("| NO |") and "never" in lines[3] and "0 / 0 / 0 / 2" in lines[3]
