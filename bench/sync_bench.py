"""Kubernetes -> Consul sync benchmark for issue 5. Run it as `bench/sync` (see `--help`).

Everything runs on 127.0.0.1 only. The Consul test server runs in a forked child process
(its own interpreter lock, as real Consul is a process of its own) and is seen only over
HTTP: its request log (`/_admin/requests`, with the server's own handling time of each
request), its index and node count (`/_admin/state/...`) and the normal /v1 API. The
Kubernetes API test server runs in this process (the bench writes Pods into its store).

1. The Kubernetes API test server and the Consul test server start on free ports. N headless
   Services (selector `app=<name>`, named port `http` -> containerPort 8080), each with E
   ready Pods (status.podIP/podIPs, a Ready condition True), go in through the store's
   normal write path (`Store.apply`: validation, admission, the EndpointSlice controller),
   so the cluster holds what a real one would: Services, Pods, EndpointSlices, Endpoints.
   Services are spread over namespaces of 50 and their names are unique cluster-wide, so
   each is one Consul service.
2. The bridge (`bridge.app.App`, default settings except the addresses and cluster id)
   starts; we time until Consul holds every instance exactly as expected and the reconciler
   says `converged`, and count the HTTP requests it made to both servers (from the servers'
   request logs) and the write operations in its `/v1/txn` bodies.
3. Endpoint changes (default 100), each on a different Service, written as a kubelet would
   (merge patch of the Pod's status): half flip a ready Pod to not ready, half move a Pod
   to a new IP. We count the txn operations they cost and, per change, the lag from the
   Kubernetes write returning to the Consul txn that carried its effect (the Consul
   server's request-log timestamp, taken once the txn was applied).
4. The bridge is restarted with `sync.resync_period` = 1 s (the restart itself is measured:
   its writes should be none) and left idle for R resync passes (default 60: 12 is one hour
   at the default 5 minutes): writes, requests and the change in Consul's index.

Numbers only; nothing is asserted. Exit status is 0 unless the bench itself failed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import io
import ipaddress
import json
import logging
import os
import pstats
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import (
    ROOT,
    TARGET_PORT,
    VENV_BIN,
    Child,
    consul_main,
    free_port,
    headless_service,
    percentile,
    pod,
    pod_status,
    say,
)
from prometheus_client import REGISTRY

from bridge import config
from bridge.app import App
from bridge.catalog.naming import consul_service_id
from bridge.testing.consul import RequestRecord
from bridge.testing.kube import KubeAPIServer
from bridge.testing.kube.store import MERGE_PATCH

CLUSTER_ID = "bench"
NODE = f"k8s-sync-{CLUSTER_ID}"
PER_NAMESPACE = 50
BASE_IP = int(ipaddress.IPv4Address("10.64.0.0"))
NEW_IP = int(ipaddress.IPv4Address("10.200.0.0"))

# ========================================================================================
# The cluster
# ========================================================================================

@dataclass
class Svc:
    index: int
    namespace: str
    name: str
    ips: list[str]
    ready: list[bool]


def _ip(n: int, base: int = BASE_IP) -> str:
    # Skip .0 and .255 in every /24 so no address looks like a network or broadcast one.
    return str(ipaddress.IPv4Address(base + (n // 254) * 256 + n % 254 + 1))


def make_services(count: int, endpoints: int) -> list[Svc]:
    return [Svc(i, f"sync-bench-{i // PER_NAMESPACE:03d}", f"svc-{i:05d}",
                [_ip(i * endpoints + j) for j in range(endpoints)], [True] * endpoints)
            for i in range(count)]


def load_cluster(kube: KubeAPIServer, services: list[Svc]) -> float:
    started = time.monotonic()
    for ns in sorted({s.namespace for s in services}):
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for svc in services:
        # Pods first, then the Service: the controller builds the slice once, from all pods.
        for j in range(len(svc.ips)):
            kube.apply(pod(svc.namespace, svc.name, j, svc.ips[j], svc.ready[j]))
        kube.apply(headless_service(svc.namespace, svc.name))
    return time.monotonic() - started


def check_cluster(kube: KubeAPIServer, services: list[Svc]) -> dict[str, Any]:
    store = kube.store
    with store.lock:
        counts = {p: len(store._objects[p]) for p in ("services", "pods", "endpointslices")}
        ready_endpoints = 0
        slices_ok = 0
        for sl in store._objects["endpointslices"].values():
            eps = sl.get("endpoints") or []
            ready_endpoints += sum(1 for e in eps if (e.get("conditions") or {}).get("ready"))
            ports = sl.get("ports") or []
            if ports and ports[0].get("port") == TARGET_PORT and len(eps) == len(services[0].ips):
                slices_ok += 1
        headless = sum(1 for s in store._objects["services"].values()
                       if s["spec"].get("clusterIP") == "None")
    return {**counts, "ready_endpoints": ready_endpoints, "slices_ok": slices_ok,
            "headless": headless}


# ========================================================================================
# Consul: the test server in a child process; what it holds, what it was asked
# ========================================================================================

# A query parameter marking the bench's own /v1 reads, so they stay out of the counts.
OBSERVER = "bench-observer"


class RemoteRequests:
    """The Consul test server's request log, mirrored here incrementally (`?since=n`),
    without the bench's own reads. Positions (len, slices) are positions in this mirror."""

    def __init__(self, consul: ConsulProcess) -> None:
        self._consul = consul
        self._fetched = 0  # records of the server's log read so far, ours included
        self._records: list[RequestRecord] = []

    def _sync(self) -> None:
        fresh = self._consul.json("GET", f"/_admin/requests?since={self._fetched}")
        self._fetched += len(fresh)
        self._records.extend(RequestRecord(**rec) for rec in fresh if OBSERVER not in rec["query"])

    def records(self) -> list[RequestRecord]:
        self._sync()
        return list(self._records)

    def find(self, *, method: str | None = None, prefix: str = "") -> list[RequestRecord]:
        return [r for r in self.records()
                if (method is None or r.method == method) and r.path.startswith(prefix)]

    def clear(self) -> None:
        self._consul.json("DELETE", "/_admin/requests")
        self._fetched = 0
        self._records.clear()

    def __len__(self) -> int:
        self._sync()
        return len(self._records)


class ConsulProcess:
    """The Consul test server in a forked child process, seen only over HTTP: the request
    log and the index through `/_admin`, what it holds through /v1. Fork it before this
    process starts any thread."""

    def __init__(self, timeout: float = 60.0) -> None:
        self._child = Child("bench-consul", consul_main)
        self.process = self._child.process
        self._http: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._ours: tuple[int, dict[str, dict[str, Any]], dict[str, str]] | None = None
        self.url = self._child.start(timeout)["consul"]
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        self._address = (host, int(port))
        self.requests = RemoteRequests(self)

    def _call(self, method: str, path: str) -> tuple[int, bytes]:
        """One request on a kept-alive connection (reopened once if it went away)."""
        with self._lock:
            for attempt in (1, 2):
                if self._http is None:
                    self._http = http.client.HTTPConnection(*self._address, timeout=60)
                try:
                    self._http.request(method, path)
                    response = self._http.getresponse()
                    return response.status, response.read()
                except (OSError, http.client.HTTPException):
                    self._http.close()
                    self._http = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str) -> Any:
        status, data = self._call(method, path)
        if status != 200:
            raise RuntimeError(f"Consul test server: {method} {path}: {status} {data[:200]!r}")
        return json.loads(data)

    def index(self) -> int:
        return int(self.json("GET", "/_admin/state/index")["Index"])

    def count(self, node: str) -> int:
        """Service instances on `node` (counted by the server, nothing rendered)."""
        return int(self.json("GET", f"/_admin/state/node/{node}")["Services"])

    def drop_blocking_queries(self) -> None:
        self.json("PUT", "/_admin/faults/drop-blocking")

    def ours(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Our instances (by service ID, /v1/catalog/node-services records) and their checks'
        statuses (by service ID), read at one index over /v1; reread only when the index
        moved since the last read."""
        index = self.index()
        if self._ours is not None and self._ours[0] == index:
            return self._ours[1], self._ours[2]
        for _ in range(20):
            node = self.json("GET", f"/v1/catalog/node-services/{NODE}?{OBSERVER}")
            checks = self.json("GET", f"/v1/health/node/{NODE}?{OBSERVER}")
            after = self.index()
            if after == index:
                break
            index = after  # a write came between the two reads: read both again
        services = {rec["ID"]: rec for rec in (node or {}).get("Services") or []}
        statuses = {rec.get("ServiceID", ""): rec.get("Status", "") for rec in checks or []}
        self._ours = (index, services, statuses)
        return services, statuses

    def stop(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None
        self._child.stop()


def count_ours(consul: ConsulProcess) -> int:
    return consul.count(NODE)


def verify_consul(consul: ConsulProcess, services: list[Svc]) -> tuple[int, list[str]]:
    """How many expected instances Consul holds exactly right; and the first problems."""
    held, checks = consul.ours()
    problems: list[str] = []
    good = 0
    expected_ids = set()
    for svc in services:
        for ip, ready in zip(svc.ips, svc.ready, strict=True):
            sid = consul_service_id(svc.name, ip)
            expected_ids.add(sid)
            rec = held.get(sid)
            want_status = "passing" if ready else "critical"
            if rec is None:
                problems.append(f"missing {sid} ({svc.name} {ip})")
            elif rec.get("Address") != ip or rec.get("Port") != TARGET_PORT \
                    or rec.get("Service") != svc.name:
                problems.append(f"wrong {sid}: {rec.get('Service')} "
                                f"{rec.get('Address')}:{rec.get('Port')}")
            elif checks.get(sid) != want_status:
                problems.append(f"check of {sid} is {checks.get(sid)!r}, want {want_status}")
            else:
                good += 1
    for sid in sorted(set(held) - expected_ids):
        problems.append(f"unexpected {sid}")
    return good, problems


def consul_kind(rec: Any) -> str:
    parts = rec.path.split("/")
    if len(parts) > 4:
        key = "/".join(parts[:4]) + "/*"
    else:
        key = rec.path
    blocking = " (blocking)" if "index" in rec.query else ""
    return f"{rec.method} {key}{blocking}"


def kube_kind(rec: Any) -> str:
    parts = [p for p in rec.path.split("/") if p]
    # /api/v1/<res>, /apis/<group>/<version>/<res>, with namespaces/<ns>/ collapsed.
    if "namespaces" in parts:
        i = parts.index("namespaces")
        if i + 2 < len(parts):
            parts = [*parts[:i], "namespaces", "*", *parts[i + 2:]]
    what = "watch" if rec.watch else "list/get"
    return f"{rec.method} /{'/'.join(parts)} ({what})"


def txn_ops(records: list[Any]) -> list[tuple[Any, list[dict[str, Any]]]]:
    out = []
    for rec in records:
        if rec.method == "PUT" and rec.path == "/v1/txn":
            try:
                ops = json.loads(rec.body)
            except ValueError:
                ops = []
            out.append((rec, ops if isinstance(ops, list) else []))
    return out


def op_kind(op: dict[str, Any]) -> str:
    kind = next(iter(op), "?")
    return f"{kind} {op[kind].get('Verb', '?') if isinstance(op.get(kind), dict) else '?'}"


def op_service_id(op: dict[str, Any]) -> str:
    if "Service" in op:
        return str(op["Service"].get("Service", {}).get("ID", ""))
    if "Check" in op:
        return str(op["Check"].get("Check", {}).get("ServiceID", "")
                   or op["Check"].get("Check", {}).get("CheckID", "").split("/")[-1])
    return ""


@dataclass
class Window:
    """Request-log positions at the start of a phase, so each phase counts its own."""

    consul: int
    kube: int
    index: int
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def now(cls, consul: ConsulProcess, kube: KubeAPIServer) -> Window:
        return cls(len(consul.requests), len(kube.requests), consul.index())


def report_requests(title: str, consul: ConsulProcess, kube: KubeAPIServer, since: Window,
                    until: Window | None = None) -> dict[str, Any]:
    crecs = consul.requests.records()[since.consul:until.consul if until else None]
    krecs = kube.requests[since.kube:until.kube if until else None]
    end_index = until.index if until else consul.index()
    by_c = Counter(consul_kind(r) for r in crecs)
    by_k = Counter(kube_kind(r) for r in krecs)
    txns = txn_ops(crecs)
    ops = [op for _, o in txns for op in o]
    op_kinds = Counter(op_kind(op) for op in ops)
    puts = sum(1 for r in crecs if r.method in ("PUT", "POST", "DELETE"))
    failed = sum(1 for r in crecs if r.status and r.status >= 400)
    print(f"  {title}")
    print(f"    Consul HTTP requests: {len(crecs)}  (writes {puts}, failed {failed})")
    for kind, n in sorted(by_c.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"      {n:8d}  {kind}")
    print(f"    Kubernetes HTTP requests: {len(krecs)}")
    for kind, n in sorted(by_k.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"      {n:8d}  {kind}")
    sizes = [len(o) for _, o in txns]
    print(f"    Consul writes: {len(txns)} txns, {len(ops)} operations"
          + (f", max {max(sizes)} ops/txn, mean {statistics.mean(sizes):.1f}" if sizes else ""))
    for kind, n in sorted(op_kinds.items()):
        print(f"      {n:8d}  {kind}")
    print(f"    Consul index: {since.index} -> {end_index} (+{end_index - since.index})")
    return {"consul": len(crecs), "kube": len(krecs), "txns": len(txns), "ops": len(ops),
            "writes": puts, "index_delta": end_index - since.index, "op_kinds": op_kinds,
            "max_ops": max(sizes) if sizes else 0}


# ========================================================================================
# The bridge
# ========================================================================================

def start_bridge(kubeconfig: Path, consul: ConsulProcess, **extra: Any) -> App:
    flags = {"kubernetes.kubeconfig": str(kubeconfig), "consul.address": consul.url,
             "cluster_id": CLUSTER_ID, "dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
             "log.level": "warning", **extra}
    app = App(config.build(environ={}, flags=flags))
    app.start()
    return app


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TxnTimes:
    """Times every /v1/txn: as the bridge's client sees it (send -> parsed answer) and as
    the Consul test server spends it (routing -> answer built: its request log's `took`).
    Measurement only."""

    def __init__(self, consul: ConsulProcess) -> None:
        self.client: list[tuple[float, float]] = []  # (start, end), perf_counter
        self.consul = consul

    def _txns(self, since: int = 0) -> list[RequestRecord]:
        return [r for r in self.consul.requests.records()[since:] if r.path == "/v1/txn"]

    def server(self, since: int) -> list[float]:
        """The server's handling time of each txn after request-log position `since`."""
        return [r.took for r in self._txns(since)]

    def attach(self, app: App) -> None:
        original = app.consul_client.txn

        def txn(operations: list[dict[str, Any]]) -> Any:
            began = time.perf_counter()
            try:
                return original(operations)
            finally:
                self.client.append((began, time.perf_counter()))

        app.consul_client.txn = txn  # type: ignore[method-assign]

    def busy(self, start: float, end: float, spans: list[tuple[float, float]] | None = None
             ) -> float:
        """Seconds of [start, end] (wall clock) the Consul test server spent handling txns
        (`spans`: from `spans()`, to read the log once for many questions)."""
        if spans is None:
            spans = self.spans()
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    def spans(self) -> list[tuple[float, float]]:
        """(start, end) wall clock of every txn's handling in the log (`at` is its end)."""
        return [(r.at - r.took, r.at) for r in self._txns()]

    def mark(self) -> tuple[int, int]:
        return len(self.client), len(self.consul.requests)

    def report(self, since: tuple[int, int]) -> str:
        client = self.client[since[0]:]
        server = self.server(since[1])
        if not server:
            return "no txns"
        own = (f"Consul test server's own handling of a txn p50 {percentile(server, 50) * 1000:.0f} ms, "
               f"max {max(server) * 1000:.0f} ms, sum {sum(server):.1f} s")
        if not client:
            return own
        rtt = [b - a for a, b in client]
        gaps = [client[i + 1][0] - client[i][1] for i in range(len(client) - 1)]
        text = (f"txn round trip (bridge's client) p50 {percentile(rtt, 50) * 1000:.0f} ms, max "
                f"{max(rtt) * 1000:.0f} ms, sum {sum(rtt):.1f} s; {own}")
        if gaps:
            text += f"; bridge time between txns p50 {percentile(gaps, 50) * 1000:.1f} ms"
        return text


class StepProfile:
    """cProfile of every reconcile pass (in the reconciler's own thread), while enabled."""

    def __init__(self, app: App) -> None:
        self.profile = cProfile.Profile()
        self.enabled = False
        self.seconds: list[float] = []
        original = app.reconciler.step

        def step(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            if self.enabled:
                self.profile.enable()
            try:
                return original(*args, **kwargs)  # whether the pass settled: a retry follows if not
            finally:
                if self.enabled:
                    self.profile.disable()
                self.seconds.append(time.perf_counter() - began)

        app.reconciler.step = step  # type: ignore[method-assign]

    def print(self, title: str, lines: int = 25) -> None:
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.sort_stats("cumulative").print_stats(lines)
        print(f"  cProfile of the reconciler's passes ({title}), by cumulative time:")
        for line in out.getvalue().splitlines():
            if line.strip():
                print(f"    {line}")


# ========================================================================================
# The phases
# ========================================================================================

def phase_converge(bridge: Bridge, consul: ConsulProcess, services: list[Svc], expected: int,
                   timeout: float, started: float, since: int) -> dict[str, float | None]:
    """Milestones (seconds after `started`); `since` is the Consul request-log position at
    the start, so only this run's txns count."""
    marks: dict[str, float | None] = {"kube synced": None, "ready": None, "first txn": None,
                                      "all registered": None, "converged": None}
    poll = 0.02 if isinstance(bridge, InProcessBridge) else 0.1
    deadline = started + timeout
    next_note = started + 30
    seen = since
    while time.monotonic() < deadline:
        now = time.monotonic() - started
        if marks["kube synced"] is None and bridge.kube_synced():
            marks["kube synced"] = now
        if marks["ready"] is None and bridge.ready():
            marks["ready"] = now
        if marks["first txn"] is None:
            records = consul.requests.records()
            if any(r.method == "PUT" and r.path == "/v1/txn" for r in records[seen:]):
                marks["first txn"] = now
            seen = len(records)
        n = count_ours(consul)
        if time.monotonic() >= next_note:
            say(f"  ... {now:.0f}s: {n}/{expected} instances in Consul")
            next_note += 30
        if marks["all registered"] is None and n >= expected:
            marks["all registered"] = now
        if marks["converged"] is None and n >= expected and bridge.converged():
            good, _ = verify_consul(consul, services)
            if good == expected:
                marks["converged"] = time.monotonic() - started
        if marks["converged"] is not None and marks["ready"] is not None:
            break
        time.sleep(poll)
    return marks


@dataclass
class Change:
    svc: Svc
    pod: int
    kind: str  # "ready->not-ready" | "ip"
    old_ip: str
    new_ip: str
    ready: bool
    written: float = 0.0  # wall clock (the Consul log's clock) when the Kubernetes write returned
    took: float = 0.0  # seconds the Kubernetes write took

    def effects(self) -> list[tuple[str, str]]:
        """(op kind, service ID) that must appear in a txn for this change to be in Consul."""
        if self.kind == "ip":
            return [("Service set", consul_service_id(self.svc.name, self.new_ip)),
                    ("Service delete", consul_service_id(self.svc.name, self.old_ip))]
        return [("Check set", consul_service_id(self.svc.name, self.old_ip))]


def plan_changes(services: list[Svc], count: int, seed: int) -> list[Change]:
    rng = random.Random(seed)
    picked = rng.sample(services, min(count, len(services)))
    changes = []
    for k, svc in enumerate(picked):
        j = rng.randrange(len(svc.ips))
        if k % 2 == 0:
            changes.append(Change(svc, j, "ready->not-ready", svc.ips[j], svc.ips[j], False))
        else:
            changes.append(Change(svc, j, "ip", svc.ips[j], _ip(k, NEW_IP), True))
    return changes


def apply_changes(kube: KubeAPIServer, changes: list[Change], rate: float) -> tuple[float, int]:
    """Write each change as a kubelet would; returns (seconds taken, writes more than 50 ms late)."""
    store = kube.store
    start = time.monotonic()
    late = 0
    waiter = threading.Event()
    for k, ch in enumerate(changes):
        if rate > 0:
            due = start + k / rate
            now = time.monotonic()
            if now < due:
                waiter.wait(due - now)
            elif now - due > 0.05:
                late += 1
        began = time.perf_counter()
        store.patch("pods", ch.svc.namespace, f"{ch.svc.name}-{ch.pod}", MERGE_PATCH,
                    {"status": pod_status(ch.new_ip, ch.ready)}, subresource="status")
        ch.written = time.time()
        ch.took = time.perf_counter() - began
        ch.svc.ips[ch.pod] = ch.new_ip
        ch.svc.ready[ch.pod] = ch.ready
    return time.monotonic() - start, late


def match_changes(changes: list[Change], records: list[Any]) -> dict[int, float]:
    """Per change (by position): seconds from its Kubernetes write to the completion of the
    last txn carrying one of its effects. Changes not yet (fully) seen are left out."""
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    for rec, ops in txn_ops(records):
        for op in ops:
            seen[(op_kind(op), op_service_id(op))].append(rec.at)
    lags: dict[int, float] = {}
    for k, ch in enumerate(changes):
        times = []
        for effect in ch.effects():
            after = [t for t in seen.get(effect, ()) if t >= ch.written - ch.took]
            if not after:
                break
            times.append(min(after))
        else:
            lags[k] = max(times) - ch.written
    return lags


def attribute_ops(changes: list[Change], records: list[Any]) -> tuple[Counter[str], Counter[str],
                                                                      int]:
    """Txn ops and registrations (service set/delete ops) by change kind; ops of no change."""
    owner: dict[str, str] = {}
    for ch in changes:
        for _, sid in ch.effects():
            owner[sid] = ch.kind
    ops_by: Counter[str] = Counter()
    regs_by: Counter[str] = Counter()
    stray = 0
    for _, ops in txn_ops(records):
        for op in ops:
            kind = owner.get(op_service_id(op))
            if kind is None:
                stray += 1
                continue
            ops_by[kind] += 1
            if "Service" in op:
                regs_by[kind] += 1
    return ops_by, regs_by, stray


def pass_anatomy(app: App, repeat: int = 3) -> list[tuple[str, float]]:
    """The pieces of one reconcile pass (and of DNS publishing), timed one by one in this
    thread (best of `repeat`) while the bridge has nothing to do. Reads the bridge's
    inputs; writes and publishes nothing. Tolerates the DNS publisher living in the
    reconciler (older code) or in a thread of its own."""
    from bridge.catalog.merge import merge
    from bridge.catalog.model import Snapshot
    from bridge.catalog.plan import diff
    from bridge.catalog.to_consul import Memo, desired

    rec = app.reconciler
    # The Consul planner keeps the options and the record of Consul (older code: the reconciler).
    planner = next((lane.planner for lane in getattr(rec, "lanes", ()) if lane.name == "consul"), rec)
    options = planner._options
    actual = getattr(planner, "_actual", None) or getattr(planner, "_against", None) or {}
    published = getattr(rec, "_published", None) or getattr(
        getattr(app, "publisher", None), "published", None)
    own_thread = hasattr(app, "publisher")
    dns_where = "DNS publisher thread" if own_thread else "reconcile pass"
    timings: dict[str, float] = defaultdict(lambda: float("inf"))

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        value = fn()
        timings[name] = min(timings[name], time.perf_counter() - began)
        return value

    for _ in range(repeat):
        kube = timed("kube snapshot (join services + slices)", app.kube.snapshot)
        consul = timed("consul snapshot", app.consul.snapshot) if app.consul else Snapshot(synced=True)
        catalog = timed(f"merge ({dns_where})", lambda: merge(kube, consul, generation=0))  # noqa: B023
        if published is not None:
            timed(f"catalog compare, published vs new ({dns_where})",
                  lambda: published.services == catalog.services)  # noqa: B023
        if hasattr(app.dns, "_build"):
            timed(f"DNS table built from scratch for the whole catalog ({dns_where})",
                  lambda: app.dns._build(catalog))  # noqa: B023
        timed("desired registrations, computed afresh", lambda: desired(kube, options))  # noqa: B023
        memo = Memo()
        desired(kube, options, memo)
        result = timed("desired registrations, nothing changed since the last pass (memo)",
                       lambda: desired(kube, options, memo))  # noqa: B023
        wanted = getattr(result, "registrations", result)  # older code: the mapping itself
        settled = dict(wanted)
        timed("diff against the last known Consul state (as read back)",
              lambda: diff(wanted, actual))  # noqa: B023
        timed("diff, nothing changed since the last pass", lambda: diff(wanted, settled))  # noqa: B023
    return list(timings.items())


def code_version() -> str:
    """HEAD and whether bridge/ differs from it: the tree may be edited while benchmarks run."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "bridge").splitlines()]
    if not changed:
        return f"{head} (bridge/ as committed)"
    digest = git("diff", "HEAD", "--", "bridge")
    import hashlib

    mark = hashlib.sha1(digest.encode()).hexdigest()[:8]
    return (f"{head} + uncommitted changes in {len(changed)} files of bridge/ (diff sha1 {mark}): "
            + ", ".join(changed))


# ========================================================================================
# The bridge under test: in this process, or `bridge run` in a child process
# ========================================================================================

def watcher_threads() -> int:
    """This process's Consul watcher threads (the bridge's; the Consul test server runs in a
    child process, and its threads, named consul-fake..., would be left out anyway)."""
    return sum(1 for t in threading.enumerate()
               if t.name.startswith("consul-") and not t.name.startswith("consul-fake"))


class InProcessBridge:
    """`App` in this process: reads the reconciler directly, times its passes and txns."""

    where = "in this process (App)"

    def __init__(self, kubeconfig: Path, consul: ConsulProcess, txn_times: TxnTimes,
                 profile: bool, settings: dict[str, Any]) -> None:
        self.app = start_bridge(kubeconfig, consul, **settings)
        txn_times.attach(self.app)
        self.prof = StepProfile(self.app)
        self.prof.enabled = profile
        self._stopped = False

    def kube_synced(self) -> bool:
        return self.app.kube.synced

    def ready(self) -> bool:
        return self.app.ready

    def converged(self) -> bool:
        return self.app.reconciler.converged

    def value(self, name: str, **labels: str) -> float:
        return metric(name, **labels)

    def passes(self, reason: str) -> float:
        return self.value("bridge_reconcile_passes_total", reason=reason)

    def lag_metric(self) -> tuple[float, float]:
        return self.value("bridge_sync_lag_seconds_sum"), self.value("bridge_sync_lag_seconds_count")

    def pass_seconds(self) -> list[float] | None:
        return list(self.prof.seconds)

    def reset_passes(self) -> None:
        self.prof.seconds.clear()
        self.prof.profile = cProfile.Profile()

    def anatomy(self) -> list[tuple[str, float]] | None:
        return pass_anatomy(self.app)

    def pool_full(self, counter: PoolFull) -> int:
        return counter.count

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.app.stop()


class ProcessBridge:
    """`bridge run` in a child process (its own interpreter and GIL); observed through
    /readyz, /metrics and the test servers' request logs."""

    where = "in a child process (bridge run)"

    def __init__(self, workdir: Path, kubeconfig: Path, consul: ConsulProcess,
                 settings: dict[str, Any]) -> None:
        self.http = f"127.0.0.1:{free_port()}"
        flat = {"kubernetes.kubeconfig": str(kubeconfig), "consul.address": consul.url,
                "cluster_id": CLUSTER_ID, "dns.listen": f"127.0.0.1:{free_port()}",
                "http.listen": self.http, "log.level": "warning", **settings}
        nested: dict[str, Any] = {}
        for key, value in flat.items():
            if "." in key:
                section, name = key.split(".", 1)
                nested.setdefault(section, {})[name] = value
            else:
                nested[key] = value
        path = workdir / f"bridge-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(nested))
        self.lines: deque[str] = deque(maxlen=50)
        self.pool_full_lines = 0
        self.proc = subprocess.Popen([str(VENV_BIN / "bridge"), "run", "--config", str(path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, name="bench-bridge-output",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "Connection pool is full" in line:
                self.pool_full_lines += 1
            else:
                self.lines.append(line.rstrip())

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def kube_synced(self) -> bool:
        code, body = self._get("/readyz")
        return code == 200 or (code == 503 and "kubernetes list" not in body)

    def ready(self) -> bool:
        return self._get("/readyz")[0] == 200

    def converged(self) -> bool:
        # No in-process view: ready, and the caller checks Consul holds exactly what it should.
        return self.ready()

    def _metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        code, body = self._get("/metrics")
        out = {}
        if code == 200:
            for family in text_string_to_metric_families(body):
                for sample in family.samples:
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self._metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def passes(self, reason: str) -> float:
        return self.value("bridge_reconcile_passes_total", reason=reason)

    def lag_metric(self) -> tuple[float, float]:
        m = self._metrics()
        return m.get(("bridge_sync_lag_seconds_sum", ()), 0.0), \
            m.get(("bridge_sync_lag_seconds_count", ()), 0.0)

    def pass_seconds(self) -> list[float] | None:
        return None

    def reset_passes(self) -> None:
        pass

    def anatomy(self) -> list[tuple[str, float]] | None:
        return None

    def pool_full(self, counter: PoolFull) -> int:
        return self.pool_full_lines

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


Bridge = InProcessBridge | ProcessBridge


# ========================================================================================
# Main
# ========================================================================================

class PoolFull(logging.Filter):
    """Counts urllib3's "Connection pool is full, discarding connection" warnings (one per
    response whose connection could not go back to the pool) and keeps them off stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Connection pool is full"):
            self.count += 1
            return False
        return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/sync", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=2000, help="headless Services (default 2000)")
    p.add_argument("--endpoints", type=int, default=5, help="ready Pods per Service (default 5)")
    p.add_argument("--changes", type=int, default=100, help="endpoint changes (default 100)")
    p.add_argument("--rate", type=float, default=100.0,
                   help="changes per second, 0 = as fast as possible (default 100)")
    p.add_argument("--resyncs", type=int, default=60,
                   help="idle resync passes at a 1 s period (default 60; 12 = one hour at 5 min)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per phase")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the reconciler's passes in each phase and print the top entries")
    p.add_argument("--bridge-process", action="store_true",
                   help="run the bridge as `bridge run` in a child process (its own GIL) "
                        "instead of in this process next to the Kubernetes test server")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra bridge setting for every run, e.g. --set sync.quiet_period=0.05")
    return p.parse_args(argv)




def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def _marks(marks: dict[str, float | None]) -> None:
    for name, value in marks.items():
        print(f"    {name:16s} {'-' if value is None else f'{value:8.2f} s'}")


def _passes(text: str, seconds: list[float] | None) -> None:
    if seconds:
        print(f"    reconcile passes{text}: {len(seconds)}, mean {_ms(statistics.mean(seconds))}, "
              f"longest {_ms(max(seconds))}, total {sum(seconds):.2f} s")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool_full = PoolFull()
    logging.getLogger("urllib3.connectionpool").addFilter(pool_full)
    extra: dict[str, Any] = dict(kv.split("=", 1) for kv in args.set)
    sync_settings = config.build(environ={}, flags=extra).sync
    services = make_services(args.services, args.endpoints)
    expected = args.services * args.endpoints
    load_at_start = os.getloadavg()
    version = code_version()
    say(f"code: {version}")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
        # Forked first, while this process has no other thread yet.
        consul = ConsulProcess()
        stack.callback(consul.stop)
        kube = KubeAPIServer(host="127.0.0.1", port=0, history_size=200_000,
                             watch_capacity=200_000)
        kube.start()
        stack.callback(kube.stop)
        txn_times = TxnTimes(consul)
        say(f"test servers up: kube {kube.url} (this process), consul {consul.url} "
            f"(child process {consul.process.pid})")

        # --- the cluster ---------------------------------------------------------------------
        say(f"loading {args.services} headless Services x {args.endpoints} ready Pods ...")
        load_s = load_cluster(kube, services)
        facts = check_cluster(kube, services)
        say(f"loaded in {load_s:.1f}s: {facts}")
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        kube.clear_requests()
        consul.requests.clear()

        bridges: list[Bridge] = []
        stack.callback(lambda: [b.stop() for b in bridges])

        def start(settings: dict[str, Any]) -> Bridge:
            bridge: Bridge
            if args.bridge_process:
                bridge = ProcessBridge(workdir, kubeconfig, consul, settings)
            else:
                bridge = InProcessBridge(kubeconfig, consul, txn_times, args.profile, settings)
            bridges.append(bridge)
            return bridge

        # --- 1. first convergence -------------------------------------------------------------
        say(f"starting the bridge {'in a child process' if args.bridge_process else 'in-process'}; "
            f"waiting for first full convergence ...")
        w0 = Window.now(consul, kube)
        tx0 = txn_times.mark()
        started = time.monotonic()
        bridge = start(extra)
        marks = phase_converge(bridge, consul, services, expected, args.timeout, started,
                               w0.consul)
        w1 = Window.now(consul, kube)
        txn_converge = txn_times.report(tx0)
        server_txn_converge = sum(txn_times.server(tx0[1]))
        pool_full_converge = bridge.pool_full(pool_full)
        passes_converge = bridge.pass_seconds()
        good, problems = verify_consul(consul, services)
        say(f"convergence: {marks}; {good}/{expected} instances exactly right")
        for line in problems[:10]:
            say(f"  problem: {line}")
        time.sleep(5)  # what the bridge keeps doing right after
        w1b = Window.now(consul, kube)
        if args.profile and isinstance(bridge, InProcessBridge):
            bridge.prof.print("first convergence")
        bridge.reset_passes()

        # --- 2. endpoint changes --------------------------------------------------------------
        changes = plan_changes(services, args.changes, args.seed)
        say(f"applying {len(changes)} endpoint changes "
            f"({'as fast as possible' if args.rate <= 0 else f'{args.rate:g}/s'}), "
            f"each on a different Service ...")
        w2 = Window.now(consul, kube)
        tx2 = txn_times.mark()
        lag_before = bridge.lag_metric()
        publish_before = (bridge.value("bridge_dns_publish_seconds_sum"),
                          bridge.value("bridge_dns_publish_seconds_count"))
        write_s, late = apply_changes(kube, changes, args.rate)
        deadline = time.monotonic() + args.timeout
        lags: dict[int, float] = {}
        while time.monotonic() < deadline:
            lags = match_changes(changes, consul.requests.records()[w2.consul:])
            if len(lags) == len(changes) and bridge.converged():
                break
            time.sleep(0.05)
        time.sleep(1.0)  # anything else the bridge writes because of these changes
        w3 = Window.now(consul, kube)
        crecs = consul.requests.records()[w2.consul:w3.consul]
        txn_change = txn_times.report(tx2)
        # The same lags without the time Consul's txn handler was busy meanwhile: the test
        # server is far slower than Consul at this size (see the txn handling times).
        spans = txn_times.spans()
        lags_net = {k: lag - txn_times.busy(changes[k].written, changes[k].written + lag, spans)
                    for k, lag in lags.items()}
        good2, problems2 = verify_consul(consul, services)
        say(f"changes written in {write_s:.2f}s ({late} more than 50 ms late); "
            f"{len(lags)}/{len(changes)} seen in Consul; {good2}/{expected} instances right")
        for line in problems2[:10]:
            say(f"  problem: {line}")
        lag_after = bridge.lag_metric()
        publish_after = (bridge.value("bridge_dns_publish_seconds_sum"),
                         bridge.value("bridge_dns_publish_seconds_count"))
        passes_change = bridge.pass_seconds()
        if args.profile and isinstance(bridge, InProcessBridge):
            bridge.prof.print("endpoint changes")
        anatomy = None
        if isinstance(bridge, InProcessBridge):
            say("timing the pieces of one reconcile pass while the bridge is idle ...")
            anatomy = bridge.anatomy()

        # --- 3. restart, then idle resyncs ----------------------------------------------------
        say("stopping the bridge; restarting it with sync.resync_period=1 ...")
        bridge.stop()
        time.sleep(1.0)
        lingering = watcher_threads()
        # Blocking queries of the stopped bridge stay open on Consul until it answers (up to
        # consul.wait); cut them so they do not show up in the idle phase's counts.
        consul.drop_blocking_queries()
        time.sleep(2.0)
        lingering_after_drop = watcher_threads()
        w4 = Window.now(consul, kube)
        started = time.monotonic()
        bridge = start({**extra, "sync.resync_period": 1})
        restart_marks = phase_converge(bridge, consul, services, expected, args.timeout,
                                       started, w4.consul)
        w5 = Window.now(consul, kube)
        say(f"restart: {restart_marks}")
        say(f"idle: waiting for {args.resyncs} resync passes ...")
        base = bridge.passes("resync")
        change_base = bridge.passes("change")
        bridge.reset_passes()
        reads_base = len(consul.requests.find(method="GET", prefix="/v1/health/node/"))
        idle_start = time.monotonic()
        deadline = idle_start + max(args.timeout, args.resyncs * 5.0)
        while time.monotonic() < deadline:
            if bridge.passes("resync") - base >= args.resyncs:
                break
            time.sleep(0.1 if isinstance(bridge, InProcessBridge) else 0.5)
        # The counter moves when a pass begins: let the last one finish its reads.
        while time.monotonic() < deadline and len(consul.requests.find(
                method="GET", prefix="/v1/health/node/")) - reads_base < args.resyncs:
            time.sleep(0.05)
        idle_s = time.monotonic() - idle_start
        w6 = Window.now(consul, kube)
        resyncs_done = bridge.passes("resync") - base
        change_passes_idle = bridge.passes("change") - change_base
        passes_idle = bridge.pass_seconds()
        say(f"idle: {resyncs_done:.0f} resync passes in {idle_s:.1f}s")
        if args.profile and isinstance(bridge, InProcessBridge):
            bridge.prof.print("idle resyncs")
        good3, problems3 = verify_consul(consul, services)
        pool_full_total = sum(b.pool_full(pool_full) for b in bridges) \
            if args.bridge_process else pool_full.count
        bridge_tail = list(bridge.lines) if isinstance(bridge, ProcessBridge) else []

        # --- summary ----------------------------------------------------------------------------
        print()
        print("=" * 78)
        print(f"bench/sync summary: {args.services} headless Services x {args.endpoints} "
              f"endpoints = {expected} instances; bridge {bridge.where}")
        print("=" * 78)
        print(f"code: {version}")
        print(f"machine: {os.cpu_count()} CPUs, load average at start {load_at_start[0]:.1f}, "
              f"at end {os.getloadavg()[0]:.1f}")
        print(f"cluster: {facts['services']} Services ({facts['headless']} headless), "
              f"{facts['pods']} Pods, {facts['endpointslices']} EndpointSlices "
              f"({facts['slices_ok']} with {args.endpoints} endpoints on port {TARGET_PORT}), "
              f"{facts['ready_endpoints']} ready endpoints; loaded through Store.apply in "
              f"{load_s:.1f}s")
        if extra:
            print(f"bridge settings changed from the defaults: {extra}")
        print()
        print("1. first full convergence (bridge start -> every instance in Consul and "
              + ("reconciler converged)" if isinstance(bridge, InProcessBridge)
                 else "/readyz 200)"))
        _marks(marks)
        print(f"    instances exactly right: {good}/{expected}")
        _passes("", passes_converge)
        report_requests("requests, start -> converged:", consul, kube, w0, w1)
        print(f"    {txn_converge}")
        if marks["converged"] is not None:
            print(f"    convergence minus the time spent inside the Consul test server's txn "
                  f"handler: {marks['converged'] - server_txn_converge:.1f} s")
        print(f"    urllib3 'Connection pool is full, discarding connection' (pool size 10), "
              f"start -> converged: {pool_full_converge}; whole run: {pool_full_total}")
        report_requests("requests in the 5 s after convergence:", consul, kube, w1, w1b)
        print()
        rate_text = "as fast as possible" if args.rate <= 0 else f"at a steady {args.rate:g}/s"
        print(f"2. {len(changes)} endpoint changes, one per Service, {rate_text} "
              f"(written in {write_s:.2f} s; Kubernetes write p50 "
              f"{percentile([c.took for c in changes], 50) * 1000:.1f} ms)")
        print(f"    bridge trigger: sync.quiet_period={sync_settings.quiet_period:g} s, "
              f"sync.max_delay={sync_settings.max_delay:g} s; sync.batch_size="
              f"{sync_settings.batch_size} ops per txn")
        n_flip = sum(1 for c in changes if c.kind != "ip")
        n_ip = len(changes) - n_flip
        print(f"    kinds: {n_flip} ready -> not ready (same instance, check to critical), "
              f"{n_ip} Pod IP changes (the instance ID holds the IP: old deleted, new created)")
        stats = report_requests("requests, first change -> all in Consul (+1 s):", consul, kube,
                                w2, w3)
        print(f"    {txn_change}")
        ops_by, regs_by, stray = attribute_ops(changes, crecs)
        ops_total = stats["ops"]
        regs_total = sum(n for k, n in stats["op_kinds"].items() if k.startswith("Service"))
        print(f"    txn ops per change: {ops_total / len(changes):.2f} "
              f"(total {ops_total} in {stats['txns']} txns, max {stats['max_ops']} ops/txn)")
        print(f"    registrations written per change: {regs_total / len(changes):.2f} "
              f"(service set/delete ops: {regs_total})")
        for kind, n in (("ready->not-ready", n_flip), ("ip", n_ip)):
            if n:
                ideal = "1 (a check set alone would do)" if kind != "ip" else \
                    "2 (a service delete + a service set; 3 ops with the check)"
                print(f"      {kind:17s}: {ops_by[kind] / n:.2f} ops, {regs_by[kind] / n:.2f} "
                      f"registrations per change; minimum registrations {ideal}")
        print(f"      ops touching no changed instance: {stray}")
        lag_values = list(lags.values())
        if lag_values:
            print(f"    lag, Kubernetes write returned -> Consul txn applied ({len(lag_values)}/"
                  f"{len(changes)} changes): p50 {_ms(percentile(lag_values, 50))}, "
                  f"p99 {_ms(percentile(lag_values, 99))}, max {_ms(max(lag_values))}, "
                  f"min {_ms(min(lag_values))}  (target p99 < 300 ms)")
            for kind in ("ready->not-ready", "ip"):
                vals = [lags[k] for k, c in enumerate(changes) if c.kind == kind and k in lags]
                if vals:
                    print(f"      {kind:17s}: p50 {_ms(percentile(vals, 50))}, p99 {_ms(percentile(vals, 99))}")
            net = list(lags_net.values())
            print(f"    the same lags minus the time the Consul test server's txn handler was busy "
                  f"meanwhile: p50 {_ms(percentile(net, 50))}, p99 {_ms(percentile(net, 99))}, "
                  f"max {_ms(max(net))}")
        else:
            print("    lag: no change reached Consul")
        d_count = lag_after[1] - lag_before[1]
        if d_count:
            print(f"    bridge's own lag metric (first poke -> write, per pass): "
                  f"{d_count:.0f} passes, mean {_ms((lag_after[0] - lag_before[0]) / d_count)}")
        _passes("", passes_change)
        n_publish = publish_after[1] - publish_before[1]
        if n_publish:
            print(f"    DNS publishes (merge + table, own thread; bridge_dns_publish_seconds): "
                  f"{n_publish:.0f}, mean {_ms((publish_after[0] - publish_before[0]) / n_publish)}")
        print(f"    instances exactly right afterwards: {good2}/{expected}")
        if anatomy:
            print("    the pieces of a pass, timed one by one (bridge idle, best of 3, this thread):")
            for name, seconds in anatomy:
                print(f"      {seconds * 1000:9.1f} ms  {name}")
        print()
        print("3. restart with nothing changed (sync.resync_period=1)")
        _marks({k: v for k, v in restart_marks.items() if k != "all registered"})
        if not args.bridge_process:
            print(f"    Consul watcher threads of the stopped bridge still alive 1 s after "
                  f"stop(): {lingering}; 2 s after the bench dropped Consul's open blocking "
                  f"queries: {lingering_after_drop}")
        report_requests("requests, restart -> converged:", consul, kube, w4, w5)
        print()
        print(f"4. idle: {resyncs_done:.0f} resync passes at a 1 s period in {idle_s:.1f} s "
              f"(12 = one hour at the default 5 min; {resyncs_done / 12:.1f} hours simulated)")
        stats = report_requests("requests during the idle passes:", consul, kube, w5, w6)
        print(f"    writes (PUT/POST/DELETE) to Consul: {stats['writes']}  (target 0); "
              f"Consul index change: +{stats['index_delta']}")
        print(f"    change-triggered passes during the idle phase: {change_passes_idle:.0f}")
        _passes(" (resync)", passes_idle)
        print(f"    instances exactly right at the end: {good3}/{expected}")
        for line in problems3[:10]:
            print(f"      problem: {line}")
        if bridge_tail:
            print("    last lines the bridge logged:")
            for line in bridge_tail[-10:]:
                print(f"      {line}")
        print("=" * 78)
    say("cleaned up")
    return 0
