"""Replicas of `bridge run` as processes against the two test servers, also processes, for
the high-availability tests: start them, read what each says (/readyz, /metrics, DNS, its
log), and read what the servers saw (the Lease, Consul's catalog and request log)."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from prometheus_client.parser import text_string_to_metric_families

from bridge import config
from bridge.kube.client import KubeClient
from tests.conftest import eventually
from tests.e2e.proc import Proc
from tests.integration.harness import pod, service

# Short HA timings, so takeovers take seconds: valid as settings (renew_deadline below
# lease_duration and above 1.2 x retry_period). session_ttl is Consul's minimum.
LEASE_DURATION = 3
RENEW_DEADLINE = 2.0
RETRY_PERIOD = 0.5
RESYNC = 1  # seconds between full resyncs: "idle" is a few of them
FAST = {"BRIDGE_HA_LEASE_DURATION": str(LEASE_DURATION),
        "BRIDGE_HA_RENEW_DEADLINE": str(RENEW_DEADLINE),
        "BRIDGE_HA_RETRY_PERIOD": str(RETRY_PERIOD),
        "BRIDGE_HA_SESSION_TTL": "10",
        "BRIDGE_SYNC_RESYNC_PERIOD": str(RESYNC)}
# A cold start (interpreter, imports, both lists) on a loaded two-core machine.
START = 60.0
# client-go's semantics: a follower takes the Lease once it has not seen it renewed for
# lease_duration, trying every retry_period x (1 + 1.2 x jitter): it sees the last renewal
# up to one try late and takes over up to one try late. The target is
# lease_duration + retry_period; the worst case adds 2 x 2.2 x retry_period; 2 s more for
# processes sharing two loaded cores.
TAKEOVER = LEASE_DURATION + 2 * 2.2 * RETRY_PERIOD + 2.0

CLUSTER = "east"
WEB = "web.default.svc.cluster.local."
BILLING = "billing.consul.svc.cluster.local."
ANSWERS = {WEB: {"10.1.0.1", "10.1.0.2"}, BILLING: {"192.0.2.31"}}


def http(method: str, url: str, body: Any = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_json(method: str, url: str, body: Any = None) -> Any:
    code, text = http(method, url, body)
    assert code == 200, f"{method} {url}: {code} {text}"
    return json.loads(text)


def logged(proc: Proc, pattern: str) -> list[str]:
    """The lines of a process's log (its stderr) so far that match `pattern`."""
    return [line for line in proc.stderr.splitlines() if re.search(pattern, line)]


class Kube:
    """A Kubernetes API test server process: one cluster."""

    def __init__(self, tmp_path: Path, name: str, objects: list[dict[str, Any]]) -> None:
        self.kubeconfig = tmp_path / f"kubeconfig-{name}"
        self.proc = Proc("fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig", str(self.kubeconfig))
        self.url = self.proc.expect(r"fake-k8s listening on (\S+)").group(1)
        for obj in objects:
            self.apply(obj)
        self._client: KubeClient | None = None

    def apply(self, obj: dict[str, Any]) -> None:
        http_json("POST", self.url + "/_admin/apply", obj)

    def fail(self, path_prefix: str, code: int = 503) -> None:
        """Every request under `path_prefix` answered `code` until `reset()`."""
        http_json("POST", self.url + "/_admin/fail", {"count": 10**6, "code": code, "pathPrefix": path_prefix})

    def reset(self) -> None:
        http_json("POST", self.url + "/_admin/reset", {})

    def requests(self) -> list[dict[str, Any]]:
        return http_json("GET", self.url + "/_admin/requests")["items"]

    def lease_holder(self, cluster_id: str) -> str:
        """Who holds the Lease bridge-<cluster_id> ("" for nobody)."""
        if self._client is None:
            self._client = KubeClient(config.build(environ={"KUBECONFIG": str(self.kubeconfig)}).kubernetes)
        lease = self._client.read("leases", "default", f"bridge-{cluster_id}", timeout=5) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self.proc.stop()


class Consul:
    """The Consul test server process, shared by every cluster."""

    def __init__(self, tmp_path: Path, registrations: list[dict[str, Any]]) -> None:
        data = tmp_path / "consul.json"
        data.write_text(json.dumps(registrations))
        self.proc = Proc("fake-consul", "--listen", "127.0.0.1:0", "--load", str(data))
        self.url = self.proc.expect(r"fake-consul listening on (\S+)").group(1)

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return http_json("GET", f"{self.url}/_admin/requests?since={since}")

    def writes(self, since: int = 0) -> list[dict[str, Any]]:
        """Requests since the `since`-th that could change the catalog: anything but reads,
        and but the leader's own heartbeat (its session's renewals and its claim key)."""
        return [r for r in self.requests(since) if r["method"] != "GET"
                and not r["path"].startswith(("/v1/session/", "/v1/kv/bridge/clusters/"))]

    def get(self, path: str) -> Any:
        return http_json("GET", self.url + path)

    def services_index(self) -> int:
        with urllib.request.urlopen(self.url + "/v1/catalog/services", timeout=5) as response:
            return int(response.headers["X-Consul-Index"])

    def instances(self, name: str) -> set[str]:
        return {e["ServiceAddress"] for e in self.get(f"/v1/catalog/service/{name}")}

    def stop(self) -> None:
        self.proc.stop()


class Replica:
    """One `bridge run`, named `name` in the Lease (POD_NAME, as the Deployment sets it)."""

    def __init__(self, name: str, kube: Kube, consul: Consul, cluster_id: str,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cluster_id = cluster_id
        self.proc = Proc("run", "--kubeconfig", str(kube.kubeconfig), "--consul-addr", consul.url,
                           "--cluster-id", cluster_id, "--dns-listen", "127.0.0.1:0",
                           "--http-listen", "127.0.0.1:0",
                           env={"POD_NAME": name, "BRIDGE_DNS_WORKERS": "0", **(env or {})})
        match = self.proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)", timeout=START)
        self.dns_port = int(match.group(1))
        self.base = "http://" + self.proc.expect(r"http listening on (\S+) ", timeout=START).group(1)

    @property
    def alive(self) -> bool:
        return self.proc.p.poll() is None

    def readyz(self) -> tuple[int, str]:
        return http("GET", self.base + "/readyz")

    def ready(self) -> bool:
        return self.readyz()[0] == 200

    def metric(self, name: str, **labels: str) -> float:
        """A sample of /metrics (0 when absent)."""
        _, text = http("GET", self.base + "/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        return 0.0

    def leads(self) -> bool:
        return self.metric("bridge_leader") == 1

    def resyncs(self) -> float:
        return self.metric("bridge_reconcile_passes_total", reason="resync")

    def a_records(self, name: str) -> set[str]:
        query = dns.message.make_query(name, dns.rdatatype.A)
        response = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR or not response.answer:
            return set()
        return {r.address for r in response.answer[0]}

    def kill(self) -> None:
        """SIGKILL: nothing given up, nothing released."""
        self.proc.stop(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the bridge stops cleanly while the test watches."""
        self.proc.p.terminate()

    def stop(self) -> None:
        self.proc.stop(signal.SIGKILL if self.alive else signal.SIGTERM)


def web(ips: list[str], name: str = "web", ns: str = "default") -> list[dict[str, Any]]:
    """A headless Service and one ready pod per address behind it."""
    labels = {"app": name}
    return [service(name, ns, headless=True, selector=labels, ports=[{"name": "http", "port": 80}]),
            *(pod(f"{name}-{i}", ip, ns, labels=labels, ports=[{"name": "http", "containerPort": 80}])
              for i, ip in enumerate(ips))]


def vm(name: str, node: str, address: str) -> dict[str, Any]:
    """A service registered in Consul by someone else (a VM's agent)."""
    return {"Node": node, "Address": address, "Service": {"ID": f"{name}-1", "Service": name, "Port": 8080}}


class Started:
    """What a test started, stopped in reverse order at its end, whatever happened."""

    def __init__(self) -> None:
        self._things: list[Any] = []

    def add(self, thing: Any) -> Any:
        self._things.append(thing)
        return thing

    def close(self) -> None:
        for thing in reversed(self._things):
            try:
                thing.stop()
            except Exception:  # the rest must still stop
                pass


def leader(replicas: list[Replica], kube: Kube, cluster_id: str) -> Replica | None:
    """The replica that holds the Lease and says so on /metrics, when exactly one does and
    no other says it leads."""
    holder = kube.lease_holder(cluster_id)
    leading = [r for r in replicas if r.alive and r.leads()]
    if len(leading) == 1 and leading[0].name == holder:
        return leading[0]
    return None


def one_cluster(tmp_path: Any, started: Started, replicas: int, env: dict[str, str]
                ) -> tuple[Kube, Consul, list[Replica]]:
    """Cluster east (web: two endpoints), a VM's billing in Consul, and `replicas` bridges
    of east, all ready, with web written to Consul."""
    kube = started.add(Kube(tmp_path, CLUSTER, web(["10.1.0.1", "10.1.0.2"])))
    consul = started.add(Consul(tmp_path, [vm("billing", "vm-1", "192.0.2.31")]))
    bridges = [started.add(Replica(f"bridge-{i}", kube, consul, CLUSTER, env)) for i in range(replicas)]
    eventually(lambda: all(r.ready() for r in bridges), START, "every replica ready")
    eventually(lambda: consul.instances("web") == ANSWERS[WEB], START, "web's endpoints written to Consul")
    return kube, consul, bridges


def quiet_for_resyncs(replicas: list[Replica], count: int, *, one_lease: bool = True) -> None:
    """Waits until every replica has run `count` more full resyncs (a follower's end at its
    write gate); with `one_lease` (replicas of one cluster), at no point may two of them
    say they lead."""
    before = [r.resyncs() for r in replicas]
    leaders: list[list[str]] = []

    def done() -> bool:
        leaders.append([r.name for r in replicas if r.leads()])
        return all(r.resyncs() >= b + count for r, b in zip(replicas, before, strict=True))

    eventually(done, count * RESYNC * 3 + 10, f"{count} resyncs on every replica")
    if one_lease:
        assert all(len(names) <= 1 for names in leaders), f"two replicas led at once: {leaders}"
