"""The world one chaos scenario runs in: the Kubernetes and Consul test servers and `bridge run`,
each a process of its own started from the `bridge` command as a user starts it, the cluster
the bench writes through the Kubernetes API (with the history of every name's answer), and
what Consul must hold for it.

A sibling module of chaos_bench.py, imported with bench/ on sys.path. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, TARGET_PORT, VENV_BIN, die_with_parent, free_port, headless_service, pod
from dns_bench import clean_env, process_tree

from bridge.catalog.naming import consul_service_id

CLUSTER_ID = "chaos"
NODE = f"k8s-sync-{CLUSTER_ID}"
ZONE = "cluster.local"
PODS_PER_SERVICE = 3
PER_NAMESPACE = 50
# A query parameter on the bench's own Consul reads, so they stay out of the bridge's request counts.
OBSERVER = "bench-observer"
BASE_IP = int(ipaddress.IPv4Address("10.64.0.0"))
MERGE_PATCH = "application/merge-patch+json"


def _ip(n: int) -> str:
    # Skip .0 and .255 in every /24 so no address looks like a network or broadcast one.
    return str(ipaddress.IPv4Address(BASE_IP + (n // 254) * 256 + n % 254 + 1))


# ========================================================================================
# HTTP
# ========================================================================================

class Unreachable(Exception):
    """No answer: the connection was refused, reset or timed out (the request may have been applied
    when `ambiguous`)."""

    def __init__(self, text: str, *, ambiguous: bool) -> None:
        super().__init__(text)
        self.ambiguous = ambiguous


def request(method: str, url: str, body: Any = None, *, timeout: float = 10.0,
         content_type: str = "application/json") -> tuple[int, Any]:
    """One request on a fresh connection: (status, parsed JSON or text)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = False
    try:
        conn.request(method, "/" + path, body=payload,
                     headers={"Content-Type": content_type} if payload is not None else {})
        sent = True
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{method} {url}: {exc}", ambiguous=sent) from None
    finally:
        conn.close()
    text = raw.decode("utf-8", "replace")
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


# ========================================================================================
# The cluster: what the bench wrote, and what every name answered when
# ========================================================================================

@dataclass
class State:
    """One answer a name had: from the moment the write making it was sent until `ended`
    (when the write replacing it returned; None while it is current)."""

    ips: tuple[str, ...]
    began: float
    ended: float | None = None


@dataclass
class Svc:
    namespace: str
    name: str
    ips: list[str]
    ready: list[bool]
    history: list[State] = field(default_factory=list)
    external: bool = False  # registered in Consul by someone else: DNS answers it, we never write it

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}."

    def answer(self) -> tuple[str, ...]:
        return tuple(sorted(ip for ip, ok in zip(self.ips, self.ready, strict=True) if ok))

    def record(self, began: float, returned: float) -> None:
        """The state now held became current: sent at `began`, acknowledged at `returned`."""
        now = self.answer()
        if self.history and self.history[-1].ips == now:
            return
        if self.history:
            self.history[-1].ended = returned
        self.history.append(State(now, began))

    def grade(self, ips: tuple[str, ...], sent: float, received: float, allowance: float) -> str:
        """"ok" when `ips` is a state this name held between `sent` - `allowance` and
        `received`; "stale" when it held it only before that; "wrong" otherwise (never, or
        only later: an answer can not know the future)."""
        stale = False
        for state in self.history:
            if state.ips != ips or state.began > received:
                continue
            if state.ended is None or state.ended + allowance >= sent:
                return "ok"
            stale = True
        return "stale" if stale else "wrong"


@dataclass
class Change:
    svc: Svc
    pod: int
    kind: str  # "ready" (flip readiness) or "move" (a new IP)
    ip: str
    ready: bool


class Cluster:
    """The Services the bench made (headless, PODS_PER_SERVICE Pods each, unique names across
    namespaces so each is one Consul service) plus the Consul services of others."""

    def __init__(self, services: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self._next_ip = 0
        self.lock = threading.Lock()
        self.services = [Svc(f"chaos-{i // PER_NAMESPACE:03d}", f"svc-{i:05d}", [], [])
                         for i in range(services)]
        for svc in self.services:
            svc.ips = [self.fresh_ip() for _ in range(PODS_PER_SERVICE)]
            svc.ready = [True] * PODS_PER_SERVICE
            svc.record(0.0, 0.0)
        self.externals = [Svc("consul", f"vm-app-{i}", [f"192.0.2.{10 * i + j + 1}" for j in range(2)],
                              [True, True], external=True) for i in range(2)]
        for svc in self.externals:
            svc.record(0.0, 0.0)
        # (service, pod) -> when its last write, which had no answer, was sent
        self.dirty: dict[tuple[int, int], float] = {}

    def fresh_ip(self) -> str:
        """An address no Pod ever had: an instance ID, once deleted, never comes back."""
        self._next_ip += 1
        return _ip(self._next_ip)

    @property
    def names(self) -> list[Svc]:
        return [*self.services, *self.externals]

    def manifest(self) -> dict[str, Any]:
        """Everything as one `kind: List` for `bridge fake-k8s --load`."""
        items: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            for ns in sorted({s.namespace for s in self.services})]
        for svc in self.services:
            items += [pod(svc.namespace, svc.name, j, ip, True) for j, ip in enumerate(svc.ips)]
            items.append(headless_service(svc.namespace, svc.name))
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def pick_change(self) -> Change:
        """A readiness flip (never the last ready Pod: the name keeps an answer) or a move to a
        new IP, on a random Pod."""
        with self.lock:
            svc = self.rng.choice(self.services)
            j = self.rng.randrange(PODS_PER_SERVICE)
            if self.rng.random() < 0.5 and (not svc.ready[j] or sum(svc.ready) > 1):
                return Change(svc, j, "ready", svc.ips[j], not svc.ready[j])
            return Change(svc, j, "move", self.fresh_ip(), svc.ready[j])

    def applied(self, change: Change, began: float, returned: float) -> None:
        with self.lock:
            change.svc.ips[change.pod] = change.ip
            change.svc.ready[change.pod] = change.ready
            change.svc.record(began, returned)

    def expected_consul(self) -> dict[str, tuple[str, str, str]]:
        """Service ID -> (service, address, check status) of every instance on our node."""
        with self.lock:
            return {consul_service_id(svc.name, ip): (svc.name, ip, "passing" if ok else "critical")
                    for svc in self.services for ip, ok in zip(svc.ips, svc.ready, strict=True)}


# ========================================================================================
# Processes
# ========================================================================================

def tree_resources(root: int) -> dict[str, int]:
    """Summed over `root` and its descendants: resident kB (VmRSS), open files, threads, processes."""
    out = {"rss_kb": 0, "files": 0, "threads": 0, "processes": 0}
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out["rss_kb"] += int(value.split()[0])
                elif key == "Threads":
                    out["threads"] += int(value.split()[0])
            out["files"] += len(os.listdir(f"/proc/{pid}/fd"))
            out["processes"] += 1
    return out


class Proc:
    """A `bridge ...` subprocess, output to a log file, SIGTERM if the bench dies."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = [str(VENV_BIN / "bridge"), *args]
        self.log = log
        self.env = {**clean_env(), **(env or {})}
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.p = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                      cwd=ROOT, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def exit_code(self) -> int | None:
        return None if self.p is None else self.p.poll()

    def text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text()):
                return m
            if not self.alive():
                break
            time.sleep(0.05)
        raise RuntimeError(f"{' '.join(self.args[:2])}: no line matching {pattern!r} (see {self.log})")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.p is not None
            self.p.send_signal(sig)

    def stop(self, grace: float = 10.0) -> int | None:
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode


class TestServer(Proc):
    """`bridge fake-k8s` or `bridge fake-consul` on a port of its own."""

    def __init__(self, kind: str, workdir: Path, extra: Iterable[str] = ()) -> None:
        super().__init__([kind, "--listen", "127.0.0.1:0", *extra], workdir / f"{kind}.log")
        self.kind = kind
        self.url = ""

    def start(self, timeout: float = 60.0) -> None:  # type: ignore[override]
        super().start()
        self.url = self.wait_line(rf"{self.kind} listening on (http://\S+)", timeout).group(1)


class Bridge(Proc):
    """`bridge run` as deployed (default settings but addresses and cluster id), on fixed ports
    so a restart answers where the last one did."""

    def __init__(self, workdir: Path, kubeconfig: Path, consul: str, settings: str = "") -> None:
        self.dns_port = free_port()
        self.http_port = free_port()
        config = workdir / "bridge.yaml"
        config.write_text(settings)
        super().__init__(["run", "--config", str(config), "--kubeconfig", str(kubeconfig),
                          "--consul-addr", consul, "--dns-listen", f"127.0.0.1:{self.dns_port}",
                          "--http-listen", f"127.0.0.1:{self.http_port}", "--cluster-id", CLUSTER_ID],
                         # As a Deployment names its replica: the same name after a restart.
                         workdir / "bridge.log", env={"POD_NAME": "bridge-chaos-0"})
        self.pids: list[int] = []  # every bridge process started, for the crash check
        self.starts = 0

    def start(self) -> None:
        super().start()
        self.starts += 1
        self.pids.append(self.pid)

    def wait_listening(self, timeout: float = 60.0) -> None:
        self.wait_line(rf"http listening on 127\.0\.0\.1:{self.http_port}", timeout)

    def get(self, path: str) -> tuple[int, str]:
        try:
            status, body = request("GET", f"http://127.0.0.1:{self.http_port}{path}", timeout=3)
        except Unreachable:
            return 0, ""
        return status, body if isinstance(body, str) else json.dumps(body)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def workers(self) -> list[int]:
        return [pid for pid in process_tree(self.pid) if pid != self.pid] if self.alive() else []

    def resources(self) -> dict[str, int]:
        return tree_resources(self.pid)

    def log_lines(self) -> int:
        return self.text().count("\n")

    def warnings_since(self, line: int) -> list[str]:
        return [x for x in self.text().splitlines()[line:] if " WARNING " in x or " ERROR " in x]

    def crash_lines(self) -> list[str]:
        """Tracebacks and dead-thread reports in the log: what a crash leaves."""
        return [x for x in self.text().splitlines()
                if x.startswith("Traceback") or " CRITICAL " in x or "died" in x]


# ========================================================================================
# The test servers' knobs, over HTTP
# ========================================================================================

class Kube:
    """The Kubernetes test server: its API (the changes) and its `/_admin` faults."""

    def __init__(self, server: TestServer) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self, action: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = request("POST", f"{self.url}/_admin/{action}", body or {})
        if status != 200:
            raise RuntimeError(f"kube admin {action}: HTTP {status} {answer}")
        return answer

    def state(self) -> dict[str, Any]:
        status, answer = request("GET", f"{self.url}/_admin/state")
        return dict(answer) if status == 200 else {}

    def write(self, change: Change, timeout: float = 15.0) -> int:
        """Patch the Pod's status as its kubelet would; the HTTP status (raises Unreachable)."""
        flag = "True" if change.ready else "False"
        status = {"status": {"podIP": change.ip, "podIPs": [{"ip": change.ip}],
                             "conditions": [{"type": "Ready", "status": flag},
                                            {"type": "ContainersReady", "status": flag}]}}
        path = f"/api/v1/namespaces/{change.svc.namespace}/pods/{change.svc.name}-{change.pod}/status"
        code, _ = request("PATCH", self.url + path, status, timeout=timeout, content_type=MERGE_PATCH)
        return code

    def read_pod(self, svc: Svc, j: int) -> tuple[str, bool] | None:
        try:
            code, obj = request("GET", f"{self.url}/api/v1/namespaces/{svc.namespace}/pods/{svc.name}-{j}")
        except Unreachable:
            return None
        if code != 200 or not isinstance(obj, dict):
            return None
        status = obj.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        return str(status.get("podIP", "")), ready


class Consul:
    """The Consul test server: `/_admin` faults and request log, and what it holds over /v1."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self._seen = 0

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self, method: str, what: str, body: Any = None) -> Any:
        status, answer = request(method, f"{self.url}/_admin/{what}", body)
        if status != 200:
            raise RuntimeError(f"consul admin {what}: HTTP {status} {answer}")
        return answer

    def fault(self, what: str, body: dict[str, Any] | None = None) -> None:
        self.admin("PUT", f"faults/{what}", body or {})

    def requests(self) -> list[dict[str, Any]]:
        """The bridge's requests since the last call (ours left out)."""
        fresh = self.admin("GET", f"requests?since={self._seen}")
        self._seen += len(fresh)
        return [r for r in fresh if OBSERVER not in r["query"]]

    def register_external(self, svc: Svc) -> None:
        for j, ip in enumerate(svc.ips):
            body = {"Node": f"vm-{svc.name}-{j}", "Address": ip,
                    "Service": {"Service": svc.name, "ID": f"{svc.name}-{j}", "Address": ip, "Port": TARGET_PORT}}
            status, answer = request("PUT", f"{self.url}/v1/catalog/register?{OBSERVER}", body)
            if status != 200:
                raise RuntimeError(f"register {svc.name}: HTTP {status} {answer}")

    def ours(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Our node's instances and their checks' statuses by service ID."""
        _, node = request("GET", f"{self.url}/v1/catalog/node-services/{NODE}?{OBSERVER}")
        _, checks = request("GET", f"{self.url}/v1/health/node/{NODE}?{OBSERVER}")
        services = list((node or {}).get("Services") or []) if isinstance(node, dict) else []
        statuses = {c.get("ServiceID", ""): c.get("Status", "") for c in checks or []} \
            if isinstance(checks, list) else {}
        return services, statuses


@dataclass
class Verdict:
    """Consul against what it must hold: nothing missing, extra, wrong or twice."""

    missing: int = 0
    extra: int = 0
    wrong: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.wrong or self.duplicates)


def verify_consul(consul: Consul, cluster: Cluster) -> Verdict:
    expected = cluster.expected_consul()
    try:
        held, statuses = consul.ours()
    except Unreachable as exc:
        return Verdict(missing=len(expected), problems=[str(exc)])
    verdict = Verdict()
    by_id = {rec.get("ID", ""): rec for rec in held}
    twice = Counter((rec.get("Service"), rec.get("Address"), rec.get("Port")) for rec in held)
    verdict.duplicates = sum(n - 1 for n in twice.values() if n > 1) + len(held) - len(by_id)
    for sid, (name, ip, status) in expected.items():
        rec = by_id.get(sid)
        if rec is None:
            verdict.missing += 1
            verdict.problems.append(f"missing {sid} ({name} {ip})")
        elif (rec.get("Service"), rec.get("Address"), rec.get("Port")) != (name, ip, TARGET_PORT) \
                or statuses.get(sid) != status:
            verdict.wrong += 1
            verdict.problems.append(f"wrong {sid}: {rec.get('Service')} {rec.get('Address')}:"
                                    f"{rec.get('Port')} check {statuses.get(sid)!r}, want {status}")
    for sid in sorted(set(by_id) - set(expected)):
        verdict.extra += 1
        verdict.problems.append(f"unexpected {sid}")
    return verdict


# ========================================================================================
# One world
# ========================================================================================

class World:
    """Both test servers loaded with the cluster, and the bridge; `stop()` ends them all."""

    def __init__(self, workdir: Path, cluster: Cluster, settings: str = "") -> None:
        self.workdir = workdir
        self.cluster = cluster
        manifest = workdir / "cluster.json"
        manifest.write_text(json.dumps(cluster.manifest()))
        self.kubeconfig = workdir / "kubeconfig"
        self.kube = Kube(TestServer("fake-k8s", workdir, ["--load", str(manifest),
                                                           "--write-kubeconfig", str(self.kubeconfig)]))
        self.consul = Consul(TestServer("fake-consul", workdir))
        self.settings = settings
        self.bridge: Bridge | None = None

    def start_servers(self) -> None:
        self.kube.server.start(timeout=300)
        self.consul.server.start()
        for svc in self.cluster.externals:
            self.consul.register_external(svc)

    def make_bridge(self) -> Bridge:
        self.bridge = Bridge(self.workdir, self.kubeconfig, self.consul.url, self.settings)
        return self.bridge

    def stop(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
        for server in (self.kube.server, self.consul.server):
            server.stop()

