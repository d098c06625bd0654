"""What a sidecar bridge costs at rest. Run it as `bench/sidecar` (see `--help`).

For each N in `--services`:

1. The Consul test server starts in a process of its own (`bridge fake-consul`, as real
   Consul is a process of its own) and is seen only over HTTP. N headless Services x E
   ready endpoints are written into it the way a central bridge writes them: `desired()`
   turns the Services into registrations and `ConsulSink` sends them in transactions (on
   node k8s-sync-bench, owner bench, Kubernetes meta), in namespaces of 50.
2. The sidecar starts as deploy/sidecar runs it: `bridge run` with deploy/sidecar's settings
   file and its container's environment (BRIDGE_KUBERNETES_ENABLED=false), only the
   addresses rewritten (DNS and HTTP on free loopback ports, an upstream where nothing
   listens) and `consul.wait` set from `--wait`. We time until `/readyz` answers 200 and
   check that DNS answers a sample of the Services with their endpoints.
3. At rest: for one full blocking-query cycle (the wait plus Consul's jitter of up to 1/16,
   and a margin) nothing changes in Consul. Every second we read the sidecar's process
   tree from /proc (resident memory VmRSS and Pss, threads, open sockets, CPU time); the
   Consul requests in the window come from the server's request log, and the sidecar's
   log lines in the window from its stderr.

Numbers only; nothing is asserted. All traffic stays on 127.0.0.1; every process started
here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import yaml
from dns_bench import process_tree  # a sibling module: bench/ is on sys.path

from bridge import config
from bridge.catalog.model import (
    Instance,
    Origin,
    OriginKind,
    Port,
    Service,
    ServiceKey,
    ServiceType,
    Snapshot,
)
from bridge.catalog.plan import Plan
from bridge.catalog.to_consul import SyncOptions, desired
from bridge.consul.client import ConsulClient
from bridge.consul.sink import ConsulSink

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / ".venv" / "bin" / "bridge"
CLUSTER_ID = "bench"
PER_NAMESPACE = 50
BASE_IP = int(ipaddress.IPv4Address("10.64.0.0"))
SAMPLE_NAMES = 20

_START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the registrations ----------------------------------------------------------------------

def _ip(n: int) -> str:
    # Skip .0 and .255 in every /24 so no address looks like a network or broadcast one.
    return str(ipaddress.IPv4Address(BASE_IP + (n // 254) * 256 + n % 254 + 1))


def services(count: int, endpoints: int) -> list[Service]:
    """Headless Services with a named port and `endpoints` ready pods each."""
    origin = Origin(OriginKind.KUBERNETES, CLUSTER_ID)
    out = []
    for i in range(count):
        key = ServiceKey(f"bench-{i // PER_NAMESPACE:03d}", f"svc-{i:05d}")
        instances = tuple(
            Instance(_ip(i * endpoints + j), (Port("http", 8080),), origin, target=f"{key.name}-{j}",
                     node_name=f"node-{j}")
            for j in range(endpoints))
        out.append(Service(key, ServiceType.HEADLESS, ports=(Port("http", 80),), instances=instances))
    return out


def register(consul_url: str, wanted: list[Service]) -> int:
    """Writes what a central bridge of cluster `bench` writes for `wanted`; returns how many
    registrations."""
    settings = config.build(environ={}, flags={"consul.address": consul_url, "cluster_id": CLUSTER_ID})
    snapshot = Snapshot.of(wanted, True)
    registrations = desired(snapshot, SyncOptions(cluster_id=CLUSTER_ID)).registrations
    client = ConsulClient(settings.consul)
    try:
        sink = ConsulSink(client, node=settings.node_name, cluster_id=CLUSTER_ID,
                          stop=threading.Event(), batch_size=settings.sync.batch_size)
        result = sink.apply(Plan(create=tuple(registrations.values())))
    finally:
        client.close()
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} registrations failed, e.g. "
                           f"{next(iter(result.failed.items()))}")
    return len(registrations)


# --- processes --------------------------------------------------------------------------------

class Process:
    """A `bridge` subprocess; stdout lines are read by a thread, stderr goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.p = subprocess.Popen([str(BRIDGE), *args], stdout=subprocess.PIPE, stderr=err,
                                      text=True, env=env)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def expect(self, prefix: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no {prefix!r} from {self.p.args}: {self.lines}; "
                                       f"log: {self.log.read_text()[-2000:]}")
                self._seen.wait(0.1)

    def stop(self, grace: float = 30.0) -> float:
        """SIGTERM; seconds until it exited (killed after `grace`)."""
        began = time.monotonic()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return time.monotonic() - began


@dataclass
class Sample:
    at: float
    rss_kb: int = 0
    hwm_kb: int = 0
    pss_kb: int = 0
    threads: int = 0
    sockets: int = 0
    cpu_s: float = 0.0
    processes: int = 0


def sample(root: int) -> Sample:
    """The process tree of `root` now, summed."""
    out = Sample(time.monotonic())
    tick = os.sysconf("SC_CLK_TCK")
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "VmRSS":
                    out.rss_kb += int(value.split()[0])
                elif key == "VmHWM":
                    out.hwm_kb += int(value.split()[0])
                elif key == "Threads":
                    out.threads += int(value.split()[0])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out.pss_kb += int(line.split()[1])
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.cpu_s += (int(stat[11]) + int(stat[12])) / tick
            out.sockets += sum(1 for fd in Path(f"/proc/{pid}/fd").iterdir()
                               if os.readlink(fd).startswith("socket:"))
            out.processes += 1
    return out


def http_json(url: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def answers(port: int, wanted: list[Service]) -> tuple[int, int]:
    """(right, asked) over a sample of the Services: A records equal to the endpoints."""
    step = max(1, len(wanted) // SAMPLE_NAMES)
    right = asked = 0
    for svc in wanted[::step][:SAMPLE_NAMES]:
        name = f"{svc.key.name}.{svc.key.namespace}.svc.cluster.local."
        reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), "127.0.0.1",
                              port=port, timeout=5)
        got = {r.address for rrset in reply.answer for r in rrset}
        asked += 1
        right += got == {i.address for i in svc.instances}
    return right, asked


# --- one size ---------------------------------------------------------------------------------

@dataclass
class Result:
    services: int
    endpoints: int
    wait: int
    load_s: float = 0.0
    ready_s: float = 0.0
    dns_right: tuple[int, int] = (0, 0)
    at_ready: Sample = field(default_factory=lambda: Sample(0))
    window_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    stop_s: float = 0.0

    @property
    def cpu_s(self) -> float:
        return self.samples[-1].cpu_s - self.samples[0].cpu_s

    def requests_per_minute(self) -> float:
        return len(self.requests) / (self.window_s / 60)


def sidecar_env(consul_url: str, wait: int) -> dict[str, str]:
    """deploy/sidecar's container environment with the test Consul's address."""
    deployment = yaml.safe_load((ROOT / "deploy" / "sidecar" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec.get("initContainers", []) + spec["containers"]
                     if c["name"] == "bridge")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    env.update({"CONSUL_HTTP_ADDR": consul_url, "BRIDGE_CONSUL_WAIT": str(wait),
                "BRIDGE_CLUSTER_ID": CLUSTER_ID})
    return env


def sidecar_settings(path: Path) -> tuple[Path, int, int]:
    """deploy/sidecar's settings file with loopback addresses; (path, dns port, http port)."""
    data = yaml.safe_load((ROOT / "deploy" / "sidecar" / "settings.yaml").read_text())
    dns_port, http_port = free_port(), free_port()
    data["dns"]["listen"] = f"127.0.0.1:{dns_port}"
    data["dns"]["upstreams"] = [f"127.0.0.1:{free_port()}"]  # nothing listens: no forwarding here
    data["http"]["listen"] = f"127.0.0.1:{http_port}"
    path.write_text(yaml.safe_dump(data))
    return path, dns_port, http_port


def run_one(n: int, args: argparse.Namespace, workdir: Path) -> Result:
    result = Result(n, args.endpoints, args.wait)
    # One connection per blocking query: Consul's limits.http_max_conns_per_client raised
    # above the number of services, as the README tells operators to.
    consul = Process(["fake-consul", "--listen", "127.0.0.1:0", "--http-max-conns-per-client", str(n + 100)],
                     {"PATH": os.environ.get("PATH", "")}, workdir / f"consul-{n}.log")
    sidecar: Process | None = None
    try:
        consul_url = consul.expect("fake-consul listening on ").split()[-1]
        say(f"N={n}: Consul test server at {consul_url} (pid {consul.p.pid})")
        wanted = services(n, args.endpoints)
        began = time.monotonic()
        count = register(consul_url, wanted)
        result.load_s = time.monotonic() - began
        say(f"N={n}: {count} registrations written in {result.load_s:.1f}s")

        path, dns_port, http_port = sidecar_settings(workdir / f"sidecar-{n}.yaml")
        http_url = f"http://127.0.0.1:{http_port}"
        began = time.monotonic()
        sidecar = Process(["run", "--config", str(path)], sidecar_env(consul_url, args.wait),
                          workdir / f"sidecar-{n}.log")
        peak = Sample(0)
        while not ready(http_url):
            if sidecar.p.poll() is not None or time.monotonic() - began > args.timeout:
                raise RuntimeError(f"sidecar not ready: {sidecar.log.read_text()[-2000:]}")
            now = sample(sidecar.p.pid)
            peak = now if now.rss_kb > peak.rss_kb else peak
            time.sleep(0.2)
        result.ready_s = time.monotonic() - began
        result.at_ready = sample(sidecar.p.pid)
        result.dns_right = answers(dns_port, wanted)
        say(f"N={n}: sidecar ready in {result.ready_s:.1f}s; RSS {result.at_ready.rss_kb / 1024:.0f} MB "
            f"(peak while listing {max(peak.rss_kb, result.at_ready.rss_kb) / 1024:.0f} MB), "
            f"{result.at_ready.threads} threads; DNS right {result.dns_right[0]}/{result.dns_right[1]}")
        say(f"N={n}: sidecar log while starting: {summary(sidecar.log.read_text().splitlines())}")

        # At rest: one whole cycle of every blocking query (wait + up to 1/16 jitter + margin).
        time.sleep(args.settle)
        since = len(http_json(consul_url + "/_admin/requests"))
        log_before = len(sidecar.log.read_text().splitlines())
        result.window_s = args.window or args.wait * 17 / 16 + 15
        say(f"N={n}: at rest for {result.window_s:.0f}s (consul.wait {args.wait}s) ...")
        start = time.monotonic()
        result.samples.append(sample(sidecar.p.pid))
        while time.monotonic() - start < result.window_s:
            time.sleep(1.0)
            result.samples.append(sample(sidecar.p.pid))
        result.window_s = result.samples[-1].at - result.samples[0].at
        result.requests = http_json(consul_url + f"/_admin/requests?since={since}", timeout=120)
        result.log_lines = sidecar.log.read_text().splitlines()[log_before:]
        result.stop_s = sidecar.stop()
        sidecar = None
        report_one(result)
        return result
    finally:
        if sidecar is not None:
            sidecar.stop()
        consul.stop()


def report_one(r: Result) -> None:
    kinds: dict[str, int] = {}
    for record in r.requests:
        blocking = "index" in record["query"]
        kind = f"{record['method']} {'blocking' if blocking else 'plain'} {record['status']}"
        kinds[kind] = kinds.get(kind, 0) + 1
    early = sum(1 for rec in r.requests if rec["took"] < 0.9 * r.wait)
    rss = [s.rss_kb / 1024 for s in r.samples]
    say(f"N={r.services}: at rest over {r.window_s:.0f}s: CPU {r.cpu_s:.1f}s "
        f"({100 * r.cpu_s / r.window_s:.1f}% of a core); RSS {min(rss):.0f}-{max(rss):.0f} MB, "
        f"Pss {r.samples[-1].pss_kb / 1024:.0f} MB; threads {r.samples[-1].threads}; "
        f"sockets {r.samples[-1].sockets}; processes {r.samples[-1].processes}")
    say(f"N={r.services}: Consul requests {len(r.requests)} ({r.requests_per_minute():.0f}/min): "
        f"{kinds}; {early} returned before their wait; sidecar log: {summary(r.log_lines)}")


def summary(lines: list[str]) -> str:
    """Log lines counted by kind: the message with names and numbers taken out."""
    kinds: dict[str, int] = {}
    for line in lines:
        message = line.split(" ", 3)[-1]  # after the date, time and level
        kind = re.sub(r"svc-\d+", "svc-N", re.sub(r"\d+(\.\d+)?s\b", "Ns", message))[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return "nothing"
    ranked = sorted(kinds.items(), key=lambda kv: -kv[1])
    return f"{len(lines)} lines: " + "; ".join(f"{count} x {kind}" for kind, count in ranked[:5])


def table(results: list[Result]) -> str:
    rows = ["| Services x endpoints | ready after | resident memory (Pss) | threads | sockets "
            "| CPU at rest | Consul requests/min at rest |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        last = r.samples[-1]
        per_min = r.requests_per_minute()
        at_default = per_min * r.wait / 300
        rows.append(
            f"| {r.services:,} x {r.endpoints} | {r.ready_s:.1f} s | {last.rss_kb / 1024:.0f} MB "
            f"({last.pss_kb / 1024:.0f} MB) | {last.threads:,} | {last.sockets:,} "
            f"| {100 * r.cpu_s / r.window_s:.1f}% of a core | {per_min:,.0f} at consul.wait {r.wait} s"
            + (f" (≈ {at_default:,.0f} at 300 s)" if r.wait != 300 else "") + " |")
    return "\n".join(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/sidecar", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", default="1000,10000",
                   help="comma-separated Service counts (default 1000,10000)")
    p.add_argument("--endpoints", type=int, default=5, help="ready endpoints per Service (default 5)")
    p.add_argument("--wait", type=int, default=300,
                   help="consul.wait in seconds (default 300, the bridge's default)")
    p.add_argument("--window", type=float, default=0.0,
                   help="seconds at rest (default: the wait x 17/16 + 15, one whole cycle)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after ready before the window")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to become ready")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.services.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        for n in sizes:
            try:
                results.append(run_one(n, args, Path(tmp)))
            except (RuntimeError, OSError) as exc:
                say(f"N={n}: failed: {exc}")
    if results:
        print()
        print(table(results))
    return 0 if len(results) == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
