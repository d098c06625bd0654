"""What services registered in Consul by others cost a bridge. Run it as `bench/consul-reads`.

1. The Consul test server starts in a process of its own (`bridge fake-consul`); in the
   default mode the Kubernetes test server too (`bridge fake-k8s`, no Services), and the
   bridge runs as a central bridge against both (`bridge run`, its defaults); with
   `--mode sidecar` it runs as deploy/sidecar runs it (no Kubernetes). Its process tree is
   read from /proc once it is ready: the baseline.
2. N services are registered in Consul as VMs would register them (one instance each with a
   passing check, on 50 nodes), through the server's load hook, in batches. We wait until
   DNS answers the last of them, let the bridge settle, and read its process tree again:
   threads, and resident memory minus the baseline.
3. Changes: `--changes` times, one service (chosen at random) gets a new address; we time
   from the write until DNS answers the new address (UDP queries every 2 ms), and from the
   server's request log, how much of it the server took to answer that service's blocking
   query (the test server wakes every blocked query on each write, under one GIL: with
   thousands blocked this is most of the time, where a real Consul wakes only the
   queries the write touched).
4. At rest for `--window` seconds: the requests the bridge made (from the server's request
   log), by kind; with nothing changing, all should be blocking queries still waiting, so
   none is logged unless its `consul.wait` ran out.

Numbers only; nothing is asserted. All traffic stays on 127.0.0.1; every process started
here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import free_port, percentile, say
from sidecar_bench import Process, Sample, http_json, ready, sample, sidecar_env, sidecar_settings, summary

NODES = 50
BATCH = 500


def name_of(i: int) -> str:
    return f"vm-svc-{i:05d}"


def address_of(i: int, generation: int = 0) -> str:
    n = i + generation * 65536
    return f"10.{96 + n // 65536 % 32}.{n // 256 % 256}.{n % 256}"


def registration(i: int, generation: int = 0) -> dict[str, Any]:
    name, node = name_of(i), f"vm-node-{i % NODES:02d}"
    return {"Node": node, "Address": f"192.168.7.{i % NODES + 1}",
            "Service": {"ID": f"{name}-1", "Service": name, "Address": address_of(i, generation), "Port": 8080},
            "Check": {"CheckID": f"service:{name}-1", "Name": "alive", "ServiceID": f"{name}-1",
                      "Status": "passing"}}


def put(url: str, body: Any) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


# --- DNS, by hand: one A query, as small and fast as the poll needs ---------------------------

def a_query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def a_answers(reply: bytes) -> set[str]:
    """The A addresses of a reply to one question (compressed names only, as the bridge sends)."""
    count = struct.unpack("!H", reply[6:8])[0]
    at = 12
    while reply[at]:
        at += reply[at] + 1
    at += 5
    found = set()
    for _ in range(count):
        while True:  # the owner name: labels, ending in a zero or a pointer
            if reply[at] >= 0xC0:
                at += 2
                break
            if reply[at] == 0:
                at += 1
                break
            at += reply[at] + 1
        rtype, _, _, length = struct.unpack("!HHIH", reply[at:at + 10])
        at += 10
        if rtype == 1 and length == 4:
            found.add(socket.inet_ntoa(reply[at:at + 4]))
        at += length
    return found


class Resolver:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(1.0)
        self.ident = 0

    def ask(self, i: int) -> set[str]:
        self.ident = (self.ident + 1) % 65536
        self.sock.send(a_query(f"{name_of(i)}.consul.svc.cluster.local", self.ident))
        while True:
            try:
                reply = self.sock.recv(4096)
            except TimeoutError:
                return set()
            if struct.unpack("!H", reply[:2])[0] == self.ident:
                return a_answers(reply)


# --- one run ------------------------------------------------------------------------------------

@dataclass
class Result:
    services: int
    mode: str
    baseline: Sample = field(default_factory=lambda: Sample(0))
    loaded: Sample = field(default_factory=lambda: Sample(0))
    load_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # write -> the server's answer, of each change
    missed: int = 0
    window_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float = 0.0


def bridge_command(args: argparse.Namespace, workdir: Path, consul_url: str,
                   kubeconfig: Path | None) -> tuple[list[str], dict[str, str], int, int]:
    env = {"PATH": os.environ.get("PATH", ""), "BRIDGE_CONSUL_WAIT": str(args.wait)}
    if kubeconfig is None:
        path, dns_port, http_port = sidecar_settings(workdir / "sidecar.yaml")
        env.update(sidecar_env(consul_url, args.wait))
        return ["run", "--config", str(path)], env, dns_port, http_port
    dns_port, http_port = free_port(), free_port()
    return (["run", "--kubeconfig", str(kubeconfig), "--consul-addr", consul_url,
             "--dns-listen", f"127.0.0.1:{dns_port}", "--http-listen", f"127.0.0.1:{http_port}"],
            env, dns_port, http_port)


def run(args: argparse.Namespace, workdir: Path) -> Result:
    n = args.services
    result = Result(n, args.mode)
    path_env = {"PATH": os.environ.get("PATH", "")}
    # One connection per blocking query: Consul's connection limit per client raised above the
    # number of services, as the README tells operators to.
    consul = Process(["fake-consul", "--listen", "127.0.0.1:0", "--http-max-conns-per-client", str(n + 100)],
                     path_env, workdir / "consul.log")
    k8s: Process | None = None
    bridge: Process | None = None
    try:
        consul_url = consul.expect("fake-consul listening on ").split()[-1]
        kubeconfig = None
        if args.mode == "central":
            kubeconfig = workdir / "kubeconfig"
            k8s = Process(["fake-k8s", "--listen", "127.0.0.1:0", "--write-kubeconfig", str(kubeconfig)],
                          path_env, workdir / "k8s.log")
            k8s.expect("kubeconfig written")
        command, env, dns_port, http_port = bridge_command(args, workdir, consul_url, kubeconfig)
        bridge = Process(command, env, workdir / "bridge.log")
        deadline = time.monotonic() + args.timeout
        while not ready(f"http://127.0.0.1:{http_port}"):
            if bridge.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bridge not ready: {bridge.log.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(args.settle)
        result.baseline = sample(bridge.p.pid)
        say(f"{args.mode} bridge ready with no foreign services: RSS {result.baseline.rss_kb / 1024:.0f} MB, "
            f"{result.baseline.threads} threads, {result.baseline.processes} processes")

        began = time.monotonic()
        for start in range(0, n, BATCH):
            put(consul_url + "/_admin/load", [registration(i) for i in range(start, min(n, start + BATCH))])
        resolver = Resolver(dns_port)
        while resolver.ask(n - 1) != {address_of(n - 1)}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name_of(n - 1)} never answered: {bridge.log.read_text()[-2000:]}")
            time.sleep(0.05)
        result.load_s = time.monotonic() - began
        time.sleep(args.settle)
        result.loaded = sample(bridge.p.pid)
        say(f"{n:,} services registered and answered in {result.load_s:.1f}s")

        rng = random.Random(19)
        seen = len(http_json(consul_url + "/_admin/requests"))
        for generation in range(1, args.changes + 1):
            i = rng.randrange(n)
            wanted = {address_of(i, generation)}
            written, wall = time.monotonic(), time.time()
            put(consul_url + "/_admin/load", [registration(i, generation)])
            while resolver.ask(i) != wanted:
                if time.monotonic() - written > 10:
                    result.missed += 1
                    break
                time.sleep(0.002)
            else:
                result.latencies.append(time.monotonic() - written)
                # When the server answered the service's blocking query: the rest is the bridge's.
                new = http_json(consul_url + f"/_admin/requests?since={seen}")
                seen += len(new)
                answered = [r["at"] for r in new if r["path"] == f"/v1/health/service/{name_of(i)}"]
                if answered:
                    result.server.append(max(0.0, min(answered) - wall))
            time.sleep(args.gap)

        time.sleep(args.settle)
        since = len(http_json(consul_url + "/_admin/requests"))
        first = sample(bridge.p.pid)
        time.sleep(args.window)
        last = sample(bridge.p.pid)
        result.window_s = last.at - first.at
        result.cpu_s = last.cpu_s - first.cpu_s
        result.requests = http_json(consul_url + f"/_admin/requests?since={since}", timeout=120)
        say(f"bridge log: {summary(bridge.log.read_text().splitlines())}")
        return result
    finally:
        for process in (bridge, k8s, consul):
            if process is not None:
                process.stop()


def report(r: Result, args: argparse.Namespace) -> None:
    kinds: dict[str, int] = {}
    for record in r.requests:
        path = record['path'].rsplit('/', 1)[0] if '/health/' in record['path'] else record['path']
        kind = f"{record['method']} {path}" \
               f" {'blocking' if 'index=' in record['query'] else 'plain'} {record['status']}"
        kinds[kind] = kinds.get(kind, 0) + 1
    growth = (r.loaded.rss_kb - r.baseline.rss_kb) / 1024
    ms = [x * 1000 for x in r.latencies]
    server = [x * 1000 for x in r.server]
    print()
    print(f"| {args.mode} bridge, {r.services:,} foreign services | target | result |")
    print("|---|---|---|")
    print(f"| threads (whole process tree) | ≤ 32 | {r.loaded.threads} ({r.baseline.threads} with none); "
          f"{r.loaded.processes} processes, {r.loaded.sockets} sockets |")
    print(f"| resident memory growth | < 100 MB | {growth:.0f} MB ({r.baseline.rss_kb / 1024:.0f} → "
          f"{r.loaded.rss_kb / 1024:.0f} MB; Pss {r.loaded.pss_kb / 1024:.0f} MB) |")
    print(f"| change → DNS, {len(ms)} single-service changes | p99 < 250 ms | p50 {percentile(ms, 50):.0f} ms, "
          f"p99 {percentile(ms, 99):.0f} ms, max {max(ms, default=float('nan')):.0f} ms"
          + (f"; {r.missed} not seen within 10 s" if r.missed else "")
          + f"; of which the Consul test server, write to its answer: p50 {percentile(server, 50):.0f} ms, "
            f"p99 {percentile(server, 99):.0f} ms |")
    print(f"| requests at rest, {r.window_s:.0f} s (consul.wait {args.wait} s) | blocking queries only | "
          f"{len(r.requests)}: {kinds or 'none'}; CPU {100 * r.cpu_s / max(r.window_s, 1e-9):.1f}% of a core |")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/consul-reads", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=5000, help="foreign services (default 5000)")
    p.add_argument("--mode", choices=("central", "sidecar"), default="central",
                   help="a central bridge (default) or a sidecar (deploy/sidecar)")
    p.add_argument("--changes", type=int, default=200, help="single-service changes timed (default 200)")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between changes (default 0.05)")
    p.add_argument("--wait", type=int, default=300, help="consul.wait in seconds (default 300)")
    p.add_argument("--window", type=float, default=60.0, help="seconds at rest (default 60)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to settle before each sample")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to become ready and load")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-consul-reads-") as tmp:
        try:
            result = run(args, Path(tmp))
        except (RuntimeError, OSError) as exc:
            say(f"failed: {exc}")
            return 1
    report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
