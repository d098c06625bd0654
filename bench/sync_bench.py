"""Kubernetes -> Consul sync benchmark for issue 5. Run it as `bench/sync` (see `--help`).

Everything runs in this one process, on 127.0.0.1 only:

1. The Kubernetes API test server and the Consul test server start on free ports. N headless
   Services (selector `app=<name>`, named port `http` -> containerPort 8080), each with E
   ready Pods (status.podIP/podIPs, a Ready condition True), go in through the store's
   normal write path (`Store.apply`: validation, admission, the EndpointSlice controller),
   so the cluster holds what a real one would: Services, Pods, EndpointSlices, Endpoints.
   Services are spread over namespaces of 50 and their names are unique cluster-wide, so
   each is one Consul service. The store's `live()` scan sorts the whole table on every
   call, and the controller calls it for every Pod write; by default the bench indexes the
   tables by namespace (same objects, same order: checked) so that loading and the change
   phase measure the bridge rather than that sort (`--no-index` turns it off).
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
import io
import ipaddress
import json
import logging
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bridge import config
from bridge.app import App
from bridge.catalog.naming import consul_service_id
from bridge.testing.consul import ConsulServer
from bridge.testing.kube import KubeAPIServer
from bridge.testing.kube.store import MERGE_PATCH, Store

CLUSTER_ID = "bench"
NODE = f"k8s-sync-{CLUSTER_ID}"
PER_NAMESPACE = 50
PORT_NAME = "http"
SERVICE_PORT = 80
TARGET_PORT = 8080
BASE_IP = int(ipaddress.IPv4Address("10.64.0.0"))
NEW_IP = int(ipaddress.IPv4Address("10.200.0.0"))

_START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {text}", flush=True)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


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


def pod_status(ip: str, ready: bool) -> dict[str, Any]:
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": flag},
                           {"type": "ContainersReady", "status": flag}]}


def pod(svc: Svc, j: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{svc.name}-{j}", "namespace": svc.namespace,
                     "labels": {"app": svc.name}},
        "spec": {"nodeName": f"node-{j}", "containers": [{
            "name": "app", "image": "registry.example/app:1",
            "ports": [{"name": PORT_NAME, "containerPort": TARGET_PORT, "protocol": "TCP"}]}]},
        "status": pod_status(svc.ips[j], svc.ready[j]),
    }


def service(svc: Svc) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": {"clusterIP": "None", "selector": {"app": svc.name},
                 "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME,
                            "protocol": "TCP"}]},
    }


class _ByNamespace(dict):  # type: ignore[type-arg]
    """A store table that also files its (namespace, name) keys by namespace.

    The store writes its tables only with `table[key] = obj` and `table.pop(key, None)`;
    both are kept in step here, anything else is refused so a change there is noticed.
    """

    def __init__(self, items: dict[Any, Any]) -> None:
        super().__init__(items)
        self.by_ns: dict[str, dict[Any, Any]] = defaultdict(dict)
        for key, value in items.items():
            self.by_ns[key[0]][key] = value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.by_ns[key[0]][key] = value

    def pop(self, key: Any, *default: Any) -> Any:
        value = super().pop(key, *default)
        part = self.by_ns.get(key[0])
        if part is not None:
            part.pop(key, None)
        return value

    def _refuse(self, *_: Any, **__: Any) -> None:
        raise NotImplementedError("bench index: the store wrote its table in a new way")

    __delitem__ = update = setdefault = popitem = clear = _refuse  # type: ignore[assignment]


def index_store(store: Store) -> Callable[[], bool]:
    """Serve `store.live(resource, namespace)` from a per-namespace index; returns a check
    that the indexed answers equal the original ones."""
    from bridge.testing.kube.resources import lookup

    with store.lock:
        for plural, table in list(store._objects.items()):
            store._objects[plural] = _ByNamespace(table)

    def live(resource: Any, namespace: str | None = None) -> Iterator[Any]:
        rt = lookup(resource)
        table = store._objects[rt.plural]
        if namespace is None or not rt.namespaced:
            yield from Store.live(store, resource, namespace)
            return
        part = table.by_ns.get(namespace, {})
        for key in sorted(part):
            yield part[key]

    store.live = live  # type: ignore[method-assign]

    def same() -> bool:
        with store.lock:
            for plural in ("pods", "services", "endpointslices", "endpoints"):
                for ns in {k[0] for k in store._objects[plural]}:
                    ours = [o["metadata"]["name"] for o in store.live(plural, ns)]
                    theirs = [o["metadata"]["name"] for o in Store.live(store, plural, ns)]
                    if ours != theirs:
                        return False
        return True

    return same


def load_cluster(kube: KubeAPIServer, services: list[Svc]) -> float:
    started = time.monotonic()
    for ns in sorted({s.namespace for s in services}):
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for svc in services:
        # Pods first, then the Service: the controller builds the slice once, from all pods.
        for j in range(len(svc.ips)):
            kube.apply(pod(svc, j))
        kube.apply(service(svc))
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
# Consul: what it holds, what it was asked
# ========================================================================================

def consul_ours(consul: ConsulServer) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Our services (by ID) and our checks' statuses (by service ID), read from the store
    directly (no HTTP: the request log holds the bridge's requests only)."""
    state = consul.state
    with state.lock:
        tables = state.tables
        services = {sid: rec for (node, sid), rec in tables.services.items() if node == NODE}
        checks = {rec.get("ServiceID", ""): rec.get("Status", "")
                  for (node, _), rec in tables.checks.items() if node == NODE}
    return services, checks


def count_ours(consul: ConsulServer) -> int:
    with consul.state.lock:
        return sum(1 for node, _ in consul.state.tables.services if node == NODE)


def verify_consul(consul: ConsulServer, services: list[Svc]) -> tuple[int, list[str]]:
    """How many expected instances Consul holds exactly right; and the first problems."""
    held, checks = consul_ours(consul)
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
                problems.append(f"wrong {sid}: {rec.get('Service')} {rec.get('Address')}:"
                                f"{rec.get('Port')}")
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
    def now(cls, consul: ConsulServer, kube: KubeAPIServer) -> Window:
        return cls(len(consul.requests), len(kube.requests), consul.state.index)


def report_requests(title: str, consul: ConsulServer, kube: KubeAPIServer, since: Window,
                    until: Window | None = None) -> dict[str, Any]:
    crecs = consul.requests.records()[since.consul:until.consul if until else None]
    krecs = kube.requests[since.kube:until.kube if until else None]
    end_index = until.index if until else consul.state.index
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

def start_bridge(kubeconfig: Path, consul: ConsulServer, **extra: Any) -> App:
    flags = {"kubernetes.kubeconfig": str(kubeconfig), "consul.address": consul.url,
             "cluster_id": CLUSTER_ID, "dns.listen": "127.0.0.1:0", "http.listen": "127.0.0.1:0",
             "log.level": "warning", **extra}
    app = App(config.build(environ={}, flags=flags))
    app.start()
    return app


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class StepProfile:
    """cProfile of every reconcile pass (in the reconciler's own thread), while enabled."""

    def __init__(self, app: App) -> None:
        self.profile = cProfile.Profile()
        self.enabled = False
        self.seconds: list[float] = []
        original = app.reconciler.step

        def step(*args: Any, **kwargs: Any) -> None:
            began = time.perf_counter()
            if self.enabled:
                self.profile.enable()
            try:
                original(*args, **kwargs)
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

def phase_converge(app: App, consul: ConsulServer, services: list[Svc], expected: int,
                   timeout: float, started: float) -> dict[str, float | None]:
    marks: dict[str, float | None] = {"kube synced": None, "ready": None, "first txn": None,
                                      "all registered": None, "converged": None}
    deadline = started + timeout
    while time.monotonic() < deadline:
        now = time.monotonic() - started
        if marks["kube synced"] is None and app.kube.synced:
            marks["kube synced"] = now
        if marks["ready"] is None and app.ready:
            marks["ready"] = now
        if marks["first txn"] is None and consul.requests.find(method="PUT", path="/v1/txn"):
            marks["first txn"] = now
        n = count_ours(consul)
        if marks["all registered"] is None and n >= expected:
            marks["all registered"] = now
        if n >= expected and app.reconciler.converged:
            good, _ = verify_consul(consul, services)
            if good == expected:
                marks["converged"] = time.monotonic() - started
                break
        time.sleep(0.02)
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


# ========================================================================================
# Main
# ========================================================================================

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
    p.add_argument("--no-index", action="store_true",
                   help="leave the test server's store unindexed (its live() sorts every table)")
    p.add_argument("--profile", action="store_true",
                   help="cProfile the reconciler's passes in each phase and print the top entries")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra bridge setting for every run, e.g. --set sync.quiet_period=0.05")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = dict(kv.split("=", 1) for kv in args.set)
    services = make_services(args.services, args.endpoints)
    expected = args.services * args.endpoints
    summary: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sync-")))
        kube = KubeAPIServer(host="127.0.0.1", port=0, history_size=200_000,
                             watch_capacity=200_000)
        same_order = None if args.no_index else index_store(kube.store)
        kube.start()
        stack.callback(kube.stop)
        consul = ConsulServer(host="127.0.0.1", port=0, jitter=False).start()
        stack.callback(consul.stop)
        say(f"test servers up: kube {kube.url}, consul {consul.url}")

        # --- 1. the cluster ----------------------------------------------------------------
        say(f"loading {args.services} headless Services x {args.endpoints} ready Pods "
            f"({'namespace-indexed store' if same_order else 'unindexed store'}) ...")
        load_s = load_cluster(kube, services)
        facts = check_cluster(kube, services)
        order_ok = same_order() if same_order else None
        say(f"loaded in {load_s:.1f}s: {facts}; index order = original: {order_ok}")
        summary["load"] = (load_s, facts, order_ok)
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        kube.clear_requests()
        consul.requests.clear()

        # --- 2. first convergence -------------------------------------------------------------
        say("starting the bridge; waiting for first full convergence ...")
        w0 = Window.now(consul, kube)
        started = time.monotonic()
        app = start_bridge(kubeconfig, consul, **extra)
        prof = StepProfile(app)
        prof.enabled = args.profile
        stopped = False

        def stop_app() -> None:
            if not stopped:
                app.stop()

        stack.callback(stop_app)
        marks = phase_converge(app, consul, services, expected, args.timeout, started)
        w1 = Window.now(consul, kube)
        good, problems = verify_consul(consul, services)
        say(f"convergence: {marks}; {good}/{expected} instances exactly right")
        for line in problems[:10]:
            say(f"  problem: {line}")
        passes_converge = list(prof.seconds)
        summary["converge"] = (marks, good)
        # What the bridge keeps doing right after (the Consul source following what we wrote).
        time.sleep(5)
        w1b = Window.now(consul, kube)
        if args.profile:
            prof.print("first convergence")
            prof.profile = cProfile.Profile()

        # --- 3. endpoint changes ------------------------------------------------------------------
        changes = plan_changes(services, args.changes, args.seed)
        say(f"applying {len(changes)} endpoint changes "
            f"({'as fast as possible' if args.rate <= 0 else f'{args.rate:g}/s'}), "
            f"each on a different Service ...")
        prof.seconds.clear()
        w2 = Window.now(consul, kube)
        lag_before = (metric("bridge_sync_lag_seconds_sum"), metric("bridge_sync_lag_seconds_count"))
        write_s, late = apply_changes(kube, changes, args.rate)
        deadline = time.monotonic() + args.timeout
        lags: dict[int, float] = {}
        while time.monotonic() < deadline:
            lags = match_changes(changes, consul.requests.records()[w2.consul:])
            if len(lags) == len(changes) and app.reconciler.converged:
                break
            time.sleep(0.05)
        time.sleep(1.0)  # anything else the bridge writes because of these changes
        w3 = Window.now(consul, kube)
        crecs = consul.requests.records()[w2.consul:w3.consul]
        good2, problems2 = verify_consul(consul, services)
        say(f"changes written in {write_s:.2f}s ({late} more than 50 ms late); "
            f"{len(lags)}/{len(changes)} seen in Consul; {good2}/{expected} instances right")
        for line in problems2[:10]:
            say(f"  problem: {line}")
        lag_after = (metric("bridge_sync_lag_seconds_sum"), metric("bridge_sync_lag_seconds_count"))
        passes_change = list(prof.seconds)
        if args.profile:
            prof.print("endpoint changes")
            prof.profile = cProfile.Profile()

        # --- 4. restart, then idle resyncs ----------------------------------------------------
        say("stopping the bridge; restarting it with sync.resync_period=1 ...")
        app.stop()
        stopped = True
        lingering = sum(1 for t in threading.enumerate() if t.name.startswith("consul-"))
        w4 = Window.now(consul, kube)
        started = time.monotonic()
        app = start_bridge(kubeconfig, consul, **{**extra, "sync.resync_period": 1})
        stopped = False
        prof = StepProfile(app)
        prof.enabled = args.profile
        restart_marks = phase_converge(app, consul, services, expected, args.timeout, started)
        # The restart's pass is done when converged; let its own follow-up reads settle.
        w5 = Window.now(consul, kube)
        say(f"restart: {restart_marks}")
        say(f"idle: waiting for {args.resyncs} resync passes ...")
        base = metric("bridge_reconcile_passes_total", reason="resync")
        change_base = metric("bridge_reconcile_passes_total", reason="change")
        prof.seconds.clear()
        idle_start = time.monotonic()
        deadline = idle_start + max(args.timeout, args.resyncs * 5.0)
        while time.monotonic() < deadline:
            if metric("bridge_reconcile_passes_total", reason="resync") - base >= args.resyncs:
                break
            time.sleep(0.05)
        idle_s = time.monotonic() - idle_start
        w6 = Window.now(consul, kube)
        resyncs_done = metric("bridge_reconcile_passes_total", reason="resync") - base
        change_passes_idle = metric("bridge_reconcile_passes_total", reason="change") - change_base
        passes_idle = list(prof.seconds)
        say(f"idle: {resyncs_done:.0f} resync passes in {idle_s:.1f}s")
        if args.profile:
            prof.print("idle resyncs")
        good3, problems3 = verify_consul(consul, services)

        # --- summary --------------------------------------------------------------------------
        print()
        print("=" * 78)
        print(f"bench/sync summary: {args.services} headless Services x {args.endpoints} "
              f"endpoints = {expected} instances")
        print("=" * 78)
        facts = summary["load"][1]
        print(f"cluster: {facts['services']} Services ({facts['headless']} headless), "
              f"{facts['pods']} Pods, {facts['endpointslices']} EndpointSlices "
              f"({facts['slices_ok']} with {args.endpoints} endpoints on port {TARGET_PORT}), "
              f"{facts['ready_endpoints']} ready endpoints; "
              f"loaded through Store.apply in {load_s:.1f}s "
              f"({'namespace-indexed live(), order checked: ' + str(order_ok) if same_order else 'unindexed'})")
        print()
        print("1. first full convergence (bridge start -> every instance in Consul and "
              "reconciler converged)")
        for name, value in marks.items():
            print(f"    {name:16s} {'-' if value is None else f'{value:8.2f} s'}")
        print(f"    instances exactly right: {good}/{expected}")
        if passes_converge:
            print(f"    reconcile passes: {len(passes_converge)}, longest {max(passes_converge):.2f} s, "
                  f"total {sum(passes_converge):.2f} s")
        report_requests("requests, start -> converged:", consul, kube, w0, w1)
        report_requests("requests in the 5 s after convergence:", consul, kube, w1, w1b)
        print()
        rate_text = "as fast as possible" if args.rate <= 0 else f"at a steady {args.rate:g}/s"
        print(f"2. {len(changes)} endpoint changes, one per Service, {rate_text} "
              f"(written in {write_s:.2f} s; Kubernetes write p50 "
              f"{pct([c.took for c in changes], 50) * 1000:.1f} ms)")
        n_flip = sum(1 for c in changes if c.kind != "ip")
        n_ip = len(changes) - n_flip
        print(f"    kinds: {n_flip} ready -> not ready (same instance, check to critical), "
              f"{n_ip} Pod IP changes (the instance ID holds the IP: old deleted, new created)")
        stats = report_requests("requests, first change -> all in Consul (+1 s):", consul, kube,
                                w2, w3)
        ops_by, regs_by, stray = attribute_ops(changes, crecs)
        ops_total = stats["ops"]
        regs_total = sum(n for k, n in stats["op_kinds"].items() if k.startswith("Service"))
        print(f"    txn ops per change: {ops_total / len(changes):.2f} "
              f"(total {ops_total} in {stats['txns']} txns, max {stats['max_ops']} ops/txn)")
        print(f"    registrations written per change: {regs_total / len(changes):.2f} "
              f"(service set/delete ops: {regs_total})")
        for kind, n in ((k, n_flip if k != "ip" else n_ip) for k in ("ready->not-ready", "ip")):
            if n:
                ideal = "1 (a check set alone would do)" if kind != "ip" else \
                    "2 (a service delete + a service set; 3 ops with the check)"
                print(f"      {kind:17s}: {ops_by[kind] / n:.2f} ops, {regs_by[kind] / n:.2f} "
                      f"registrations per change; minimum registrations {ideal}")
        print(f"      ops touching no changed instance: {stray}")
        lag_values = list(lags.values())
        if lag_values:
            print(f"    lag, Kubernetes write returned -> Consul txn applied ({len(lag_values)}/"
                  f"{len(changes)} changes): p50 {pct(lag_values, 50) * 1000:.0f} ms, "
                  f"p99 {pct(lag_values, 99) * 1000:.0f} ms, max {max(lag_values) * 1000:.0f} ms, "
                  f"min {min(lag_values) * 1000:.0f} ms  (target p99 < 300 ms)")
            for kind in ("ready->not-ready", "ip"):
                vals = [lags[k] for k, c in enumerate(changes) if c.kind == kind and k in lags]
                if vals:
                    print(f"      {kind:17s}: p50 {pct(vals, 50) * 1000:.0f} ms, "
                          f"p99 {pct(vals, 99) * 1000:.0f} ms")
        else:
            print("    lag: no change reached Consul")
        d_count = lag_after[1] - lag_before[1]
        if d_count:
            print(f"    bridge's own lag metric (first poke -> write, per pass): "
                  f"{d_count:.0f} passes, mean {(lag_after[0] - lag_before[0]) / d_count * 1000:.0f} ms")
        if passes_change:
            print(f"    reconcile passes: {len(passes_change)}, mean {statistics.mean(passes_change) * 1000:.0f} ms, "
                  f"longest {max(passes_change) * 1000:.0f} ms")
        print(f"    instances exactly right afterwards: {good2}/{expected}")
        print()
        print("3. restart with nothing changed (sync.resync_period=1)")
        for name, value in restart_marks.items():
            print(f"    {name:16s} {'-' if value is None else f'{value:8.2f} s'}")
        print(f"    consul-* threads of the stopped bridge still alive at restart: {lingering}")
        report_requests("requests, restart -> converged:", consul, kube, w4, w5)
        print()
        print(f"4. idle: {resyncs_done:.0f} resync passes at a 1 s period in {idle_s:.1f} s "
              f"(12 = one hour at the default 5 min; {resyncs_done / 12:.1f} hours simulated)")
        stats = report_requests("requests during the idle passes:", consul, kube, w5, w6)
        print(f"    writes (PUT/POST/DELETE) to Consul: {stats['writes']}  (target 0); "
              f"Consul index change: +{stats['index_delta']}")
        if passes_idle:
            print(f"    reconcile passes: {len(passes_idle)}, mean {statistics.mean(passes_idle) * 1000:.0f} ms, "
                  f"longest {max(passes_idle) * 1000:.0f} ms "
                  f"(of which change-triggered: {change_passes_idle:.0f})")
        print(f"    instances exactly right at the end: {good3}/{expected}")
        for line in problems3[:10]:
            print(f"      problem: {line}")
        print("=" * 78)
    say("cleaned up")
    return 0
