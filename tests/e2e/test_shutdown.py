"""SIGTERM stops `bridge run` within 2 s, with a blocking query and a transaction in flight,
and leaves no transaction half applied.

The Consul test server holds every `/v1/txn` for a few seconds (a latency fault), so the
bridge's first transaction is still in flight when the signal comes; its Consul source has
listed, so its blocking queries are waiting too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import eventually
from tests.e2e.proc import Proc

PODS = 100  # about 200 operations: several transactions of at most 64
TXN_LATENCY = 3.0  # seconds the Consul test server holds each transaction
# The subject of the test is this deadline: the bridge gives a transaction in flight
# 0.75 s to complete, then stops DNS and HTTP. 2 s is what the bridge promises; the
# process's own exit (interpreter teardown) is inside it too.
EXIT_WITHIN = 2.0


def manifests(path: Path) -> Path:
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80}]}}]
    for i in range(PODS):
        ip = f"10.9.{i // 200}.{i % 200 + 1}"
        docs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{i}", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x",
                                     "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    path.write_text("---\n".join(json.dumps(doc) + "\n" for doc in docs))
    return path


def consul_data(path: Path) -> Path:
    """A service on a VM, so the bridge holds a blocking query on it."""
    path.write_text(json.dumps([{
        "Node": "vm-1", "Address": "192.0.2.31",
        "Service": {"ID": "billing-1", "Service": "billing", "Port": 8080}}]))
    return path


def http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0



def test_sigterm_exits_within_2s_with_reads_and_a_txn_in_flight_and_no_half_txn(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    k8s = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig", str(kubeconfig),
               "--load", str(manifests(tmp_path / "web.yaml")))
    consul = Proc("fake-consul", "--listen", "127.0.0.1:0",
                  "--load", str(consul_data(tmp_path / "consul.json")))
    bridge: Proc | None = None
    try:
        k8s.expect("fake-k8s listening")
        consul_url = consul.expect(r"fake-consul listening on (\S+)").group(1)
        http("PUT", consul_url + "/_admin/faults/slow",
             {"seconds": TXN_LATENCY, "path_prefix": "/v1/txn"})
        bridge = Proc("run", "--kubeconfig", str(kubeconfig), "--consul-addr", consul_url,
                      "--cluster-id", "e2e", "--dns-listen", "127.0.0.1:0",
                      "--http-listen", "127.0.0.1:0")
        base = "http://" + bridge.expect(r"http listening on (\S+) ").group(1)

        def ready_with_a_txn_in_flight() -> bool:
            try:
                ready = http("GET", base + "/readyz") == "ready\n"
            except OSError:
                return False
            return ready and metric(http("GET", base + "/metrics"), "bridge_consul_txn_total") >= 1

        # Ready: both sources listed, so the Consul source's blocking queries are waiting.
        # A transaction counted: sent, and held by the server for TXN_LATENCY.
        eventually(ready_with_a_txn_in_flight, 30, "the bridge ready with a transaction sent")
        began = time.monotonic()
        bridge.p.send_signal(signal.SIGTERM)
        try:
            code = bridge.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("bridge run did not exit within 30 s of SIGTERM") from None
        took = time.monotonic() - began
        bridge.stop()  # reaped already: this ends the pipe readers
        assert code == 0, f"exit code {code}; stderr: {bridge.stderr[-3000:]}"
        assert took < EXIT_WITHIN, f"bridge run took {took:.2f}s to exit after SIGTERM"

        # The transaction in flight lands (the server finishes it after its latency).
        def txns() -> list[dict[str, Any]]:
            return [r for r in http("GET", consul_url + "/_admin/requests")
                    if r["method"] == "PUT" and r["path"] == "/v1/txn"]

        logged = eventually(txns, TXN_LATENCY + 10, "the transaction in flight answered")
        assert len(logged) == 1, \
            f"no transaction may be sent once stopping; the server saw {len(logged)}"
        ops = json.loads(logged[0]["body"])
        sent_services = {op["Service"]["Service"]["ID"] for op in ops if "Service" in op}
        sent_checks = {op["Check"]["Check"]["CheckID"] for op in ops if "Check" in op}
        view = http("GET", consul_url + "/v1/catalog/node/k8s-sync-e2e") or {}
        held_services = set((view.get("Services") or {}).keys())
        held_checks = {c["CheckID"] for c in http("GET", consul_url + "/v1/health/node/k8s-sync-e2e")}
        if logged[0]["status"] == 200:
            assert (held_services, held_checks) == (sent_services, sent_checks), \
                "an applied transaction must be there whole"
        else:
            assert (held_services, held_checks) == (set(), set()), \
                "a transaction Consul refused must leave nothing"
        assert 0 < len(sent_services) < PODS, "the test needs a plan spanning several transactions"
    finally:
        if bridge is not None:
            bridge.stop(signal.SIGKILL)
        k8s.stop()
        consul.stop()
