"""A server the bridge depends on goes away for 10+ seconds, with `bridge run` as a process:
after the first 5 s the bridge sends it one request a second at most (the probe), logs one
line when the outage starts and one when it ends, keeps answering DNS, says so on /readyz
and /metrics, and notices the recovery within about a second.

What the servers saw is read from their request logs (Consul: `at`, Kubernetes: `started`,
both wall clock on this machine, as are the bridge's own timings)."""

from __future__ import annotations

import re
import time
from typing import Any

from bridge.outage import CAP, GRACE
from tests.conftest import eventually
from tests.e2e.ha_world import (
    ANSWERS,
    CLUSTER,
    START,
    WEB,
    Consul,
    Kube,
    Replica,
    Started,
    http,
    http_json,
    vm,
    web,
)

# Requests answered within this much after the grace still count as the grace's: a loop
# admitted just before it ends reaches the server a little later on a loaded machine.
IN_FLIGHT = 0.5
# How many probes the outage must have seen before it is ended: 10 s of them.
PROBES = 10
# A hang bound on the recovery being noticed (the probe comes once a second; the rest is
# for processes sharing two loaded cores).
RECOVERY = 15.0
# A hang bound on the outage being declared: the grace, one probe, and the loaded machine.
DECLARED = GRACE + CAP + 15.0


def world(tmp_path: Any, started: Started) -> tuple[Kube, Consul, Replica]:
    kube = started.add(Kube(tmp_path, CLUSTER, web(["10.1.0.1", "10.1.0.2"])))
    consul = started.add(Consul(tmp_path, [vm("billing", "vm-1", "192.0.2.31")]))
    bridge = started.add(Replica("bridge-0", kube, consul, CLUSTER))
    eventually(bridge.ready, START, "the bridge ready")
    eventually(lambda: consul.instances("web") == ANSWERS[WEB], START, "web written to Consul")
    return kube, consul, bridge


def lines(bridge: Replica, pattern: str, since: int = 0) -> list[str]:
    """The bridge's log lines (its stderr) from the `since`-th on that match `pattern`."""
    return [line for line in bridge.proc.stderr.splitlines()[since:] if re.search(pattern, line)]


def log_length(bridge: Replica) -> int:
    return len(bridge.proc.stderr.splitlines())


def check_rate(seen: list[tuple[float, str]], first: float, ended: float, probe: str) -> None:
    """`seen` (time, "METHOD path") of every request the server saw: after the grace only
    the probe, at most one a second."""
    after = [(at, what) for at, what in seen if first + GRACE + IN_FLIGHT <= at < ended]
    assert {what for _, what in after} <= {probe}, f"only the probe after the grace: {after}"
    window = ended - (first + GRACE + IN_FLIGHT)
    assert len(after) <= window / CAP + 1, \
        f"{len(after)} requests in the {window:.1f}s after the grace: {[round(at - first, 2) for at, _ in after]}"


def check_lines(bridge: Replica, server: str, since: int) -> None:
    """One line when the outage started, one when it ended, and no warning besides but
    what the outage changed (a leader that can no longer renew its Lease steps down)."""
    started = lines(bridge, rf"WARNING bridge\.outage: {server} unreachable: ", since)
    ended = lines(bridge, rf"INFO bridge\.outage: {server} reachable again after [\d.]+s "
                          rf"\(\d+ requests failed\)", since)
    warnings = [line for line in lines(bridge, r" (WARNING|ERROR|CRITICAL) ", since)
                if not re.search(r"bridge\.ha\.elector: .*: stopped leading: no renewal succeeded", line)]
    assert len(started) == 1 and len(ended) == 1, f"start {started}, end {ended}"
    assert warnings == started, "no other warning while it lasted:\n" + "\n".join(warnings)


def test_consul_answering_500_no_cluster_leader_gets_one_probe_a_second_and_three_lines(tmp_path, started):
    _, consul, bridge = world(tmp_path, started)
    since, first_request = log_length(bridge), len(consul.requests())
    http_json("PUT", consul.url + "/_admin/faults/error", {"status": 500, "body": "No cluster leader"})
    http_json("PUT", consul.url + "/_admin/faults/drop-blocking", {})  # the reads in flight too
    eventually(lambda: lines(bridge, "consul unreachable: ", since), DECLARED, "the outage declared")
    assert bridge.metric("bridge_server_up", server="consul") == 0
    assert bridge.metric("bridge_outages_total", server="consul") == 1
    code, text = bridge.readyz()
    assert code == 200 and "warning: consul unreachable for " in text, \
        f"DNS still answers: ready, with a warning: {code} {text}"
    assert bridge.a_records(WEB) == ANSWERS[WEB], "DNS answers the last state"

    def probes() -> int:
        return sum(1 for r in consul.requests(first_request) if r["path"] == "/v1/status/leader")

    eventually(lambda: probes() >= PROBES, PROBES * CAP + 15, f"{PROBES} probes")
    http_json("PUT", consul.url + "/_admin/faults/clear", {})
    cleared = time.time()
    # Recovery: the next probe finds a leader, every loop tries again at once.
    eventually(lambda: lines(bridge, "consul reachable again", since), RECOVERY, "the recovery noticed")
    eventually(lambda: bridge.metric("bridge_server_up", server="consul") == 1, RECOVERY, "consul up on /metrics")
    assert "consul unreachable" not in bridge.readyz()[1]

    seen = consul.requests(first_request)
    failed = [r for r in seen if r["status"] == 500]
    assert failed, "the fault was met"
    check_rate([(r["at"], f"{r['method']} {r['path']}") for r in seen], failed[0]["at"], cleared,
               "GET /v1/status/leader")
    check_lines(bridge, "consul", since)


def test_consul_unreachable_logs_one_line_when_it_goes_and_one_when_it_is_back(tmp_path, started):
    _, consul, bridge = world(tmp_path, started)
    since = log_length(bridge)
    failed_before = bridge.metric("bridge_server_failed_requests_total", server="consul")
    http_json("PUT", consul.url + "/_admin/faults/outage", {"seconds": 15})  # the listener closed
    eventually(lambda: lines(bridge, "consul unreachable: ", since), DECLARED, "the outage declared")
    declared, failed_then = time.time(), bridge.metric("bridge_server_failed_requests_total", server="consul")
    eventually(lambda: lines(bridge, "consul reachable again", since), 15 + RECOVERY, "the recovery noticed")
    back = time.time()
    # The server cannot log connections it refused: the bridge's own count of failed
    # requests says how many were tried (all of them failed).
    probed = bridge.metric("bridge_server_failed_requests_total", server="consul") - failed_then
    assert probed <= (back - declared) / CAP + 1, f"{probed} failed requests in {back - declared:.1f}s"
    assert failed_then > failed_before
    check_lines(bridge, "consul", since)
    assert bridge.a_records(WEB) == ANSWERS[WEB]


def test_kubernetes_answering_503_gets_one_probe_a_second_and_three_lines(tmp_path, started):
    kube, _, bridge = world(tmp_path, started)
    since, first_request = log_length(bridge), len(kube.requests())
    http_json("POST", kube.url + "/_admin/fail", {"count": 10**6, "code": 503})
    http_json("POST", kube.url + "/_admin/drop-watches", {"abrupt": True})
    eventually(lambda: lines(bridge, "kubernetes unreachable: ", since), DECLARED, "the outage declared")
    assert bridge.metric("bridge_server_up", server="kubernetes") == 0
    assert bridge.a_records(WEB) == ANSWERS[WEB], "DNS answers the last state"

    def probes() -> int:
        return sum(1 for r in kube.requests()[first_request:] if r["path"] == "/readyz")

    eventually(lambda: probes() >= PROBES, PROBES * CAP + 15, f"{PROBES} probes")
    kube.reset()
    cleared = time.time()
    eventually(lambda: lines(bridge, "kubernetes reachable again", since), RECOVERY, "the recovery noticed")
    seen = kube.requests()[first_request:]
    failed = [r for r in seen if r["status"] == 503]
    assert failed, "the fault was met"
    check_rate([(r["started"], f"{r['method']} {r['path']}") for r in seen], failed[0]["started"], cleared,
               "GET /readyz")
    check_lines(bridge, "kubernetes", since)
    # Caught up: a change made after the recovery shows in DNS.
    for obj in web(["10.1.0.7"], name="after"):
        kube.apply(obj)
    eventually(lambda: bridge.a_records("after.default.svc.cluster.local.") == {"10.1.0.7"}, 20,
               "a change after the recovery answered")
    assert http("GET", bridge.base + "/healthz")[0] == 200
