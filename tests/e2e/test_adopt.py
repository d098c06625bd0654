"""Taking over from consul-k8s: `bridge run` with `sync.adopt_node` against a Consul whose
catalog is as consul-k8s's catalog sync leaves it, every process a subprocess.

consul-k8s registers every instance on its node `k8s-sync` (its default
`-consul-node-name`), node meta `external-source: kubernetes`, each service with tag `k8s`,
meta `external-source: kubernetes` and `external-k8s-ns`, ID `<name>-<sha1(name-address)[:12]>`
and a readiness check `<ns>/<ID>` (hashicorp/consul-k8s control-plane/catalog/to-consul
resource.go, `generateRegistrations` and `registerServiceInstance`; service_id.go). While the
bridge starts and takes over, a poller reads `/v1/health/service/<name>?passing` every 20 ms:
no ready endpoint may be missing from any answer.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

from bridge.catalog.naming import consul_service_id
from tests.conftest import eventually
from tests.e2e.ha_world import START, Consul, Kube, Replica, Started, logged, web
from tests.integration.harness import namespace, pod, service

CLUSTER = "east"
OUR_NODE = f"k8s-sync-{CLUSTER}"
ADOPT_NODE = "k8s-sync"
READY = {"web": {"10.1.0.1", "10.1.0.2"}, "db": {"10.1.1.1"}}
STALE = ("web", "10.1.0.9")  # a pod gone since consul-k8s was stopped
NOT_SYNCED = ("metrics", "monitoring", "10.1.2.1")  # a namespace the bridge is told not to sync


def consul_k8s(name: str, ns: str, address: str) -> dict[str, Any]:
    """One instance as consul-k8s's catalog sync registers it (a catalog register body)."""
    sid = consul_service_id(name, address)
    return {
        "Node": ADOPT_NODE, "Address": "127.0.0.1", "NodeMeta": {"external-source": "kubernetes"},
        "SkipNodeUpdate": True,
        "Service": {"ID": sid, "Service": name, "Address": address, "Port": 80, "Tags": ["k8s"],
                    "Meta": {"external-source": "kubernetes", "external-k8s-ns": ns, "port-http": "80",
                             "external-k8s-ref-kind": "Pod", "external-k8s-ref-name": f"{name}-pod"}},
        "Check": {"Node": ADOPT_NODE, "CheckID": f"{ns}/{sid}", "Name": "Kubernetes Readiness Check",
                  "ServiceID": sid, "Status": "passing", "Output": "Kubernetes health checks passing"},
    }


class Poller:
    """Reads `?passing` of each name every 20 ms in a thread; keeps every answer as
    {name: [(node, ID, address)]}, and the first answer missing a ready endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[dict[str, list[tuple[str, str, str]]]] = []
        self.gap: str = ""
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="passing-poller", daemon=True)
        self._thread.start()

    def _read(self, name: str) -> list[tuple[str, str, str]]:
        with urllib.request.urlopen(f"{self.url}/v1/health/service/{name}?passing", timeout=5) as response:
            return [(e["Node"]["Node"], e["Service"]["ID"], e["Service"]["Address"])
                    for e in json.loads(response.read())]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = {name: self._read(name) for name in READY}
            except OSError as exc:  # the test fails on it below; keep polling
                self.errors.append(str(exc))
                continue
            self.samples.append(sample)
            for name, wanted in READY.items():
                missing = wanted - {address for _, _, address in sample[name]}
                if missing and not self.gap:
                    self.gap = f"sample {len(self.samples)}: {name} missing {sorted(missing)}: {sample}"
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_the_bridge_takes_over_consul_k8s_registrations_with_no_ready_instance_ever_missing(
        tmp_path: Path, started: Started) -> None:
    objects = [*web(sorted(READY["web"])), *web(sorted(READY["db"]), name="db"), namespace("monitoring"),
               service("metrics", "monitoring", headless=True, selector={"app": "metrics"}),
               pod("metrics-0", NOT_SYNCED[2], "monitoring", labels={"app": "metrics"})]
    kube = started.add(Kube(tmp_path, CLUSTER, objects))
    leftovers = [consul_k8s(name, "default", address) for name, addresses in READY.items()
                 for address in sorted(addresses)]
    leftovers += [consul_k8s(STALE[0], "default", STALE[1]), consul_k8s(*NOT_SYNCED)]
    consul = started.add(Consul(tmp_path, leftovers))
    poller = Poller(consul.url)
    started.add(poller)
    eventually(lambda: len(poller.samples) >= 3, 20, "the poller reading consul-k8s's catalog")

    bridge = started.add(Replica("bridge-0", kube, consul, CLUSTER, {
        "BRIDGE_SYNC_ADOPT_NODE": ADOPT_NODE, "BRIDGE_KUBERNETES_NAMESPACES": "default"}))

    def taken_over() -> bool:
        theirs = {s["Service"] for s in (consul.get(f"/v1/catalog/node/{ADOPT_NODE}") or {})["Services"].values()}
        assert theirs == {NOT_SYNCED[0]}, f"on {ADOPT_NODE} still: {sorted(theirs)}"
        for name, wanted in READY.items():
            entries = consul.get(f"/v1/health/service/{name}?passing")
            got = sorted((e["Node"]["Node"], e["Service"]["Address"]) for e in entries)
            assert got == sorted((OUR_NODE, a) for a in wanted), f"{name}: {got}"
        return True

    eventually(taken_over, START, "consul-k8s's registrations of web and db replaced by the bridge's")
    at_end = len(poller.samples)
    eventually(lambda: len(poller.samples) >= at_end + 3, 20, "the poller reading the result")
    poller.stop()

    assert not poller.errors, poller.errors[:3]
    assert not poller.gap, f"a ready instance was missing from ?passing during the takeover: {poller.gap}"
    first, last = poller.samples[0], poller.samples[-1]
    assert {node for entries in first.values() for node, _, _ in entries} == {ADOPT_NODE}, first
    assert {node for entries in last.values() for node, _, _ in entries} == {OUR_NODE}, last
    ids = [sid for entries in last.values() for _, sid, _ in entries]
    assert sorted(ids) == sorted(consul_service_id(n, a) for n, addrs in READY.items() for a in addrs), \
        "the bridge registered consul-k8s's very IDs, each once"
    assert STALE[1] not in {a for _, _, a in last["web"]}, "the stale endpoint went with its Service"
    metrics = consul.get(f"/v1/catalog/service/{NOT_SYNCED[0]}")
    assert [(e["Node"], e["ServiceAddress"]) for e in metrics] == [(ADOPT_NODE, NOT_SYNCED[2])], \
        "a Service the bridge does not sync is left as consul-k8s left it"
    lines = logged(bridge.proc, "leaving consul-k8s's")
    assert len(lines) == 1 and "metrics (namespace monitoring)" in lines[0], lines
