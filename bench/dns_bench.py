"""DNS benchmark for issue 8: `bridge run` against unbound, steady and under change.

Run it as `bench/dns` (see `bench/dns --help`). For each N in `--services`:

1. Two forked child processes run the test servers, each with its own GIL as the real
   ones have: the Kubernetes API test server, where N headless Services (selector, named
   port `http`) in namespaces of 50, each with `--endpoints` ready Pods, are created
   through the store's normal write path (admission, then the EndpointSlice controller
   builds the slices as a real cluster would), and the Consul test server.
2. `bridge run` starts against them (a subprocess; `--consul` picks its Consul sync:
   push by default, see below); we wait for `/readyz`, for DNS to answer sample names,
   and for the bridge to go idle (its initial Consul sync done). unbound (one thread)
   starts with the same records as `local-data` in a static `cluster.local.` zone.
3. One query file in dnsperf's binary `-B` format (exact wire queries: EDNS0 on half of
   the A queries and mixed letter case in one file, which `-e` cannot do) is replayed by
   dnsperf against both servers with the same parameters, in alternating rounds. dnsperf
   gives qps, average latency and lost queries; percentiles come from a light sampler
   querying every 2 ms beside it (dnsperf's `-v` costs dnsperf a third of its rate).
4. A sample of the queries is re-asked with dnspython from a raw socket and every answer
   is compared with the record set it must hold (both servers).
5. Under change: dnsperf runs against the bridge while the Kubernetes process changes 100
   endpoints per second (readiness flips and Pod IP changes, written to the Pod status as
   a kubelet would). A poller asks the bridge for each changed name until the answer is
   the new record set, and checks every answer is exactly one state the name had.
6. The bridge's resident memory (VmRSS, VmHWM) and threads are read from /proc.

Consul modes: `push` (Kubernetes -> Consul only) is the default because with `sync` the
bridge keeps one blocking query per Consul service, and the Consul test server wakes every
blocking query on every write: the bench would measure the test server. `sync` and `off`
are there to compare.

All traffic goes to 127.0.0.1. Every process started here is stopped on the way out
(children also get SIGTERM if the bench dies). The module is importable without side
effects: the pure helpers are unit-tested (tests/unit/test_bench_dns.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    PORT_NAME,
    ROOT,
    TARGET_PORT,
    VENV_BIN,
    Child,
    consul_main,
    die_with_parent,
    free_port,
    headless_service,
    percentile,
    pod,
    pod_status,
    say,
)

ZONE = "cluster.local"
TTL = 30
SERVICES_PER_NAMESPACE = 50
EDNS_PAYLOAD = 1232
# What pods resolve through their search path (ndots:5): each is asked with every suffix.
EXTERNAL_HOSTS = ("api.example.com", "www.google.com", "registry-1.docker.io",
                  "s3.amazonaws.com", "login.microsoftonline.com", "github.com",
                  "pypi.org", "storage.googleapis.com")
MIX = (("A", 0.70), ("SRV", 0.10), ("AAAA", 0.10), ("NX", 0.10))
QTYPE = {"A": 1, "AAAA": 28, "SRV": 33, "SOA": 6}
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3

# ========================================================================================
# Pure helpers (tests/unit/test_bench_dns.py)
# ========================================================================================

def pod_ip(index: int) -> str:
    """The index-th pod address (index >= 1) in 10.0.0.0/9; fresh ones come from 10.128/9."""
    if not 1 <= index < 1 << 23:
        raise ValueError(f"pod index out of range: {index}")
    return f"10.{(index >> 16) & 0xFF}.{(index >> 8) & 0xFF}.{index & 0xFF}"


def fresh_ip(index: int) -> str:
    """Addresses for IP changes, disjoint from `pod_ip`'s."""
    if not 0 <= index < 1 << 23:
        raise ValueError(f"fresh index out of range: {index}")
    return f"10.{128 + ((index >> 16) & 0x7F)}.{(index >> 8) & 0xFF}.{index & 0xFF}"


def endpoint_label(ip: str) -> str:
    """The bridge's (and CoreDNS's) name for an endpoint without a hostname."""
    return ip.replace(".", "-")


def srv_weight(candidates: int) -> int:
    """CoreDNS's SRV weight: floor(100 / candidates), at least 1."""
    return max(1, 100 // max(1, candidates))


@dataclass(frozen=True)
class Svc:
    namespace: str
    name: str
    ips: tuple[str, ...]

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}."

    @property
    def srv_name(self) -> str:
        return f"_{PORT_NAME}._tcp.{self.fqdn}"

    def srv_targets(self) -> dict[str, str]:
        """SRV target name -> its address."""
        return {f"{endpoint_label(ip)}.{self.fqdn}": ip for ip in self.ips}


def namespace_of(index: int) -> str:
    return f"bench-{index // SERVICES_PER_NAMESPACE:04d}"


def dataset(services: int, endpoints: int) -> list[Svc]:
    """N services, `endpoints` distinct pod IPs each, namespaces of 50 services."""
    out = []
    next_ip = 1
    for i in range(services):
        ips = tuple(pod_ip(next_ip + j) for j in range(endpoints))
        next_ip += endpoints
        out.append(Svc(namespace_of(i), f"svc-{i:05d}", ips))
    return out


def unbound_local_data(services: Iterable[Svc]) -> Iterator[str]:
    """The bridge's records for `services` as unbound `local-data` lines."""
    yield (f'local-data: "{ZONE}. {TTL} IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. '
           f'1 7200 1800 86400 {TTL}"')
    for svc in services:
        weight = srv_weight(len(svc.ips))
        for ip in svc.ips:
            yield f'local-data: "{svc.fqdn} {TTL} IN A {ip}"'
        for target, ip in svc.srv_targets().items():
            yield f'local-data: "{svc.srv_name} {TTL} IN SRV 0 {weight} {TARGET_PORT} {target}"'
            yield f'local-data: "{target} {TTL} IN A {ip}"'


def unbound_config(port: int, workdir: Path, services: Iterable[Svc]) -> str:
    """One thread, loopback only, foreground, no chroot, a static cluster.local zone."""
    head = f"""server:
  interface: 127.0.0.1
  port: {port}
  do-ip4: yes
  do-ip6: no
  do-udp: yes
  do-tcp: yes
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  logfile: "{workdir / 'unbound.log'}"
  use-syslog: no
  pidfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  auto-trust-anchor-file: ""
  local-zone: "{ZONE}." static
"""
    body = "\n".join("  " + line for line in unbound_local_data(services))
    return head + body + "\nremote-control:\n  control-enable: no\n"


def mixed_case(name: str, rng: random.Random) -> str:
    """Each letter upper or lower at random (what 0x20-encoding resolvers send)."""
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in name)


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of an absolute or relative name, case kept."""
    labels = [label for label in name.rstrip(".").split(".") if label]
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def query_wire(qname: str, qtype: int, *, edns: bool, qid: int = 0) -> bytes:
    """A recursive-desired query; with `edns` an OPT RR (payload 1232, version 0, no DO)."""
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    question = encode_name(qname) + struct.pack("!HH", qtype, 1)
    opt = struct.pack("!BHHIH", 0, 41, EDNS_PAYLOAD, 0, 0) if edns else b""
    return head + question + opt


@dataclass(frozen=True)
class Query:
    kind: str  # A, SRV, AAAA (NODATA), NX (NXDOMAIN)
    qname: str  # as sent (mixed case for A)
    qtype: int
    edns: bool
    service: int  # index into the dataset; -1 for NX

    @property
    def wire(self) -> bytes:
        return query_wire(self.qname, self.qtype, edns=self.edns)


def search_expansion(host: str, namespace: str, which: int) -> str:
    """`host` after a pod's search path (`<ns>.svc.<zone>`, `svc.<zone>`, `<zone>`)."""
    suffix = (f"{namespace}.svc.{ZONE}", f"svc.{ZONE}", ZONE)[which % 3]
    return f"{host}.{suffix}."


def make_queries(services: Sequence[Svc], count: int, seed: int) -> list[Query]:
    """The issue's mix, shuffled: 70% A (half EDNS0, mixed case), 10% SRV, 10% AAAA
    NODATA, 10% NXDOMAIN search-path expansions. Exact counts, not just probabilities."""
    rng = random.Random(seed)
    kinds: list[str] = []
    for kind, share in MIX:
        kinds += [kind] * round(count * share)
    kinds = (kinds + ["A"] * count)[:count]
    rng.shuffle(kinds)
    out: list[Query] = []
    a_seen = 0
    for kind in kinds:
        index = rng.randrange(len(services))
        svc = services[index]
        if kind == "A":
            edns = a_seen % 2 == 0
            a_seen += 1
            out.append(Query("A", mixed_case(svc.fqdn, rng), QTYPE["A"], edns, index))
        elif kind == "SRV":
            out.append(Query("SRV", svc.srv_name, QTYPE["SRV"], False, index))
        elif kind == "AAAA":
            out.append(Query("AAAA", svc.fqdn, QTYPE["AAAA"], False, index))
        else:
            host = rng.choice(EXTERNAL_HOSTS)
            out.append(Query("NX", search_expansion(host, svc.namespace, rng.randrange(3)),
                             QTYPE["A"], False, -1))
    return out


def binary_query_file(queries: Iterable[Query]) -> bytes:
    """dnsperf `-B` input: each packet behind its 2-byte big-endian length."""
    out = bytearray()
    for q in queries:
        wire = q.wire
        out += struct.pack("!H", len(wire)) + wire
    return bytes(out)


_STAT_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency": r"Average Latency \(s\):\s+([\d.]+)",
    "run_time": r"Run time \(s\):\s+([\d.]+)",
}


def parse_dnsperf(text: str) -> dict[str, float]:
    """dnsperf's closing statistics; missing fields are absent."""
    out: dict[str, float] = {}
    for key, pattern in _STAT_PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            out[key] = float(match.group(1))
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        for name, number in re.findall(r"([A-Z]+) (\d+)", codes.group(1)):
            out["rcode_" + name] = float(number)
    return out


def skip_name(buf: bytes, pos: int) -> int:
    """The offset after a (possibly compressed) name starting at `pos`."""
    while True:
        length = buf[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def a_answer(reply: bytes) -> tuple[int, int, tuple[str, ...]] | None:
    """(id, rcode, sorted A addresses in the answer section) of a reply; None if malformed."""
    try:
        qid, flags, qdcount, ancount = struct.unpack_from("!HHHH", reply, 0)
        if not flags & 0x8000:
            return None
        pos = 12
        for _ in range(qdcount):
            pos = skip_name(reply, pos) + 4
        addresses = []
        for _ in range(ancount):
            pos = skip_name(reply, pos)
            rtype, _cls, _ttl, rdlength = struct.unpack_from("!HHIH", reply, pos)
            pos += 10
            if rtype == 1 and rdlength == 4:
                addresses.append(socket.inet_ntoa(reply[pos:pos + 4]))
            pos += rdlength
        return qid, flags & 0xF, tuple(sorted(addresses))
    except (IndexError, struct.error):
        return None


# ========================================================================================
# Answer checking (dnspython: an independent DNS implementation)
# ========================================================================================

def check_answer(query: Query, sent: bytes, reply: bytes, svc: Svc | None) -> str | None:
    """None if `reply` is the right answer to `query`, else what is wrong with it."""
    import dns.flags
    import dns.message
    import dns.rdatatype

    try:
        msg = dns.message.from_wire(reply)
    except Exception as exc:
        return f"unparsable reply: {exc}"
    if reply[:2] != sent[:2]:
        return "id not echoed"
    qlen = len(encode_name(query.qname)) + 4
    if reply[12:12 + qlen] != sent[12:12 + qlen]:
        return "question not echoed byte for byte (letter case)"
    if not msg.flags & dns.flags.QR or not msg.flags & dns.flags.AA:
        return "QR or AA not set"
    if (msg.edns >= 0) != query.edns:
        return "OPT present in reply iff in query: violated"
    rcode = msg.rcode()

    def rrs(section: list[Any], rdtype: int) -> list[tuple[str, Any]]:
        return [(rrset.name.to_text().lower(), rd) for rrset in section
                if rrset.rdtype == rdtype for rd in rrset]

    def has_soa() -> bool:
        soa = rrs(msg.authority, dns.rdatatype.SOA)
        return len(soa) == 1 and soa[0][0] == f"{ZONE}."

    if query.kind == "NX":
        if rcode != RCODE_NXDOMAIN or msg.answer:
            return f"expected NXDOMAIN, got rcode {rcode} with {len(msg.answer)} answer RRsets"
        return None if has_soa() else "NXDOMAIN without the zone SOA"
    assert svc is not None
    if rcode != RCODE_NOERROR:
        return f"expected NOERROR, got rcode {rcode}"
    if query.kind == "AAAA":
        if msg.answer:
            return "expected NODATA, got answers"
        return None if has_soa() else "NODATA without the zone SOA"
    if query.kind == "A":
        got = rrs(msg.answer, dns.rdatatype.A)
        if len(got) != sum(len(r) for r in msg.answer):
            return "non-A records in the answer"
        if any(name != svc.fqdn for name, _ in got):
            return "A owner name differs from the question"
        if any(rrset.ttl != TTL for rrset in msg.answer):
            return "A TTL is not 30"
        addresses = sorted(rd.address for _, rd in got)
        if addresses != sorted(svc.ips):
            return f"A set {addresses} != expected {sorted(svc.ips)}"
        return None
    # SRV: the answer is exactly the expected SRV set; glue, when given, is right.
    targets = svc.srv_targets()
    weight = srv_weight(len(svc.ips))
    got_srv = sorted((rd.priority, rd.weight, rd.port, rd.target.to_text().lower())
                     for _, rd in rrs(msg.answer, dns.rdatatype.SRV))
    want = sorted((0, weight, TARGET_PORT, target) for target in targets)
    if got_srv != want:
        return f"SRV set {got_srv} != expected {want}"
    for name, rd in rrs(msg.additional, dns.rdatatype.A):
        if targets.get(name) != rd.address:
            return f"wrong glue {name} A {rd.address}"
    return None


def with_id(wire: bytes, qid: int | None = None) -> bytes:
    """`wire` with its ID replaced (a random one by default)."""
    return struct.pack("!H", random.randrange(1 << 16) if qid is None else qid) + wire[2:]


def ask(port: int, packet: bytes, timeout: float = 2.0) -> bytes | None:
    """One UDP exchange with 127.0.0.1:port; the reply whose ID matches, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(timeout)
        sock.send(packet)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                return None
            if reply[:2] == packet[:2]:
                return reply
    return None


def check_sample(port: int, queries: Sequence[Query], services: Sequence[Svc], size: int,
                 seed: int) -> tuple[int, int, list[str]]:
    """(checked, incorrect, first few problems) for `size` queries picked at random."""
    rng = random.Random(seed)
    sample = rng.sample(list(queries), min(size, len(queries)))
    bad: list[str] = []
    for q in sample:
        wire = with_id(q.wire, rng.randrange(1 << 16))
        reply = ask(port, wire)
        svc = services[q.service] if q.service >= 0 else None
        problem = "no reply" if reply is None else check_answer(q, wire, reply, svc)
        if problem:
            bad.append(f"{q.kind} {q.qname}{' +edns' if q.edns else ''}: {problem}")
    return len(sample), len(bad), bad[:5]


# ========================================================================================
# The cluster process: Kubernetes and Consul test servers, the data, the changes
# ========================================================================================

def _cluster_main(conn: Any, services: list[Svc], workdir: str, seed: int) -> None:
    """Child process: the Kubernetes API test server, its data and the changes."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    from bridge.testing.kube import KubeAPIServer

    die_with_parent()
    kube = KubeAPIServer(host="127.0.0.1", port=0, history_size=100_000,
                         watch_capacity=100_000)
    try:
        kube.start()
        started = time.monotonic()
        store = kube.store
        for ns in sorted({svc.namespace for svc in services}):
            store.create("namespaces", None, {"metadata": {"name": ns}})
        pods: list[list[list[Any]]] = []  # per service: [ip, ready] per pod
        for svc in services:
            for j, ip in enumerate(svc.ips):
                store.create("pods", svc.namespace, pod(svc.namespace, svc.name, j, ip, True), detach=False)
            store.create("services", svc.namespace, headless_service(svc.namespace, svc.name), detach=False)
            pods.append([[ip, True] for ip in svc.ips])
        load_seconds = time.monotonic() - started
        slices = store.objects("endpointslices", services[0].namespace)
        first = [s for s in slices if s["metadata"]["labels"].get(
            "kubernetes.io/service-name") == services[0].name]
        with store.lock:
            counts = {plural: len(store._objects[plural])
                      for plural in ("services", "pods", "endpointslices")}
        kubeconfig = Path(workdir) / "kubeconfig"
        kube.write_kubeconfig(kubeconfig)
        conn.send(("ready", {"kube": kube.url,
                             "kubeconfig": str(kubeconfig), "load_seconds": load_seconds,
                             "counts": counts,
                             "first_slice_addresses": sorted(
                                 a for s in first for e in s.get("endpoints") or []
                                 for a in e["addresses"] if e["conditions"]["ready"])}))
        while True:
            command = conn.recv()
            if command[0] == "stop":
                break
            if command[0] == "change":
                _, rate, seconds = command
                _run_changes(conn, store, services, pods, rate, seconds, seed)
    except (KeyboardInterrupt, EOFError):
        pass  # stopped by the parent (SIGTERM) or the parent went away
    finally:
        with contextlib.suppress(Exception):
            kube.stop()
        with contextlib.suppress(Exception):
            conn.send(("stopped",))


def _run_changes(conn: Any, store: Any, services: list[Svc], pods: list[list[list[Any]]],
                 rate: float, seconds: float, seed: int) -> None:
    """`rate` endpoint changes per second for `seconds`; reports each as an event.

    Services are visited in a shuffled cycle, so one name changes again only after all
    others did (N / rate seconds later): every DNS answer has one old and one new state.
    Half the changes flip a pod's readiness, half move a ready pod to a new IP. A pod that
    becomes ready again comes back with a new IP (a restarted pod), so a service's A set
    only ever loses addresses or gains never-seen ones: no state of a name repeats, and
    each answer names exactly one state.
    """
    from bridge.testing.kube.store import MERGE_PATCH

    rng = random.Random(seed + 1)
    order = list(range(len(services)))
    rng.shuffle(order)
    fresh = 0
    total = int(rate * seconds)
    start = time.monotonic()
    wait = threading.Event()
    write_times: list[float] = []
    behind = 0
    for k in range(total):
        due = start + k / rate
        now = time.monotonic()
        if now < due:
            wait.wait(due - now)  # pacing: a deadline, not a fixed sleep
        elif now - due > 0.05:
            behind += 1
        index = order[k % len(order)]
        svc = services[index]
        state = pods[index]
        old = tuple(sorted(ip for ip, ready in state if ready))
        ready_count = len(old)
        if k % 2 == 0:
            j = rng.randrange(len(state))
            if state[j][1] and ready_count == 1:
                j = next(i for i, (_, r) in enumerate(state) if not r)  # keep one ready
            state[j][1] = not state[j][1]
            if state[j][1]:
                state[j][0] = fresh_ip(fresh)
                fresh += 1
        else:
            j = rng.choice([i for i, (_, r) in enumerate(state) if r])
            state[j][0] = fresh_ip(fresh)
            fresh += 1
        ip, ready = state[j]
        began = time.monotonic()
        store.patch("pods", svc.namespace, f"{svc.name}-{j}", MERGE_PATCH,
                    {"status": pod_status(ip, ready)}, subresource="status")
        written = time.monotonic()
        write_times.append(written - began)
        new = tuple(sorted(ip for ip, ready in state if ready))
        conn.send(("event", written, svc.fqdn, old, new))
    conn.send(("done", {"changes": total, "seconds": time.monotonic() - start,
                        "write_p50_ms": percentile(write_times, 50) * 1000,
                        "write_p99_ms": percentile(write_times, 99) * 1000,
                        "late": behind}))


class Cluster:
    """The test servers: Kubernetes (with the data and the changes) and Consul, each in a
    process of its own, as the real ones are; `conn` talks to the Kubernetes one."""

    def __init__(self, services: list[Svc], workdir: Path, seed: int) -> None:
        self.kube = Child("bench-kube", _cluster_main, services, str(workdir), seed)
        self.consul = Child("bench-consul", consul_main)
        self.conn = self.kube.conn

    def start(self, timeout: float) -> dict[str, Any]:
        info = self.consul.start(60)
        info.update(self.kube.start(timeout))
        return info

    def pids(self) -> dict[str, int | None]:
        return {"kube": self.kube.process.pid, "consul": self.consul.process.pid}

    def stop(self) -> None:
        self.kube.stop()
        self.consul.stop()


# ========================================================================================
# Processes: the bridge, unbound, dnsperf
# ========================================================================================

def ensure_tools() -> None:
    """dnsperf and unbound from Debian packages when missing (needs root, as here)."""
    def have() -> bool:
        return bool(shutil.which("dnsperf")) and bool(unbound_binary())

    if have():
        return
    say("installing dnsperf and unbound (apt-get)")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*apt, "install", "-y", "-qq", "dnsperf", "unbound"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    if not have():
        raise RuntimeError("dnsperf or unbound still missing after apt-get install")


def unbound_binary() -> str | None:
    return shutil.which("unbound") or next(
        (p for p in ("/usr/sbin/unbound", "/sbin/unbound") if os.access(p, os.X_OK)), None)


def wait_for(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.1,
             alive: Callable[[], bool] | None = None) -> float:
    """Poll `probe` until true; seconds taken. Raises on the deadline or a dead process."""
    started = time.monotonic()
    deadline = started + timeout
    pause = threading.Event()
    while True:
        if probe():
            return time.monotonic() - started
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        pause.wait(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(what: str, pid: int, timeout: float, below: float = 0.05,
              window: float = 2.0) -> float:
    """Poll until the process used less than `below` of a core over `window` seconds."""
    started = time.monotonic()
    deadline = started + timeout
    pause = threading.Event()
    last_t, last_cpu = started, cpu_seconds(pid)
    while True:
        pause.wait(window)
        now, cpu = time.monotonic(), cpu_seconds(pid)
        if (cpu - last_cpu) / (now - last_t) < below:
            return now - started
        if now >= deadline:
            raise TimeoutError(f"{what}: still busy after {timeout:.0f}s")
        last_t, last_cpu = now, cpu


def answers_a(port: int, svc: Svc) -> bool:
    reply = ask(port, with_id(query_wire(svc.fqdn, 1, edns=False)), timeout=0.5)
    parsed = a_answer(reply) if reply else None
    return parsed is not None and parsed[1] == 0 and parsed[2] == tuple(sorted(svc.ips))


def clean_env() -> dict[str, str]:
    """Our environment without the settings `bridge run` would read from it."""
    drop = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("BRIDGE_", "CONSUL_"))}


CONSUL_MODES = {
    # mode: (sync.to_consul, sync.from_consul)
    "off": (False, False),
    "push": (True, False),
    "sync": (True, True),
}


def bridge_config(mode: str, workers: int | None = None, python_only: bool = False) -> str:
    to_consul, from_consul = CONSUL_MODES[mode]
    text = (f"sync:\n  to_consul: {str(to_consul).lower()}\n"
            f"  from_consul: {str(from_consul).lower()}\n")
    dns = ([f"  workers: {workers}"] if workers is not None else []) + \
        (["  compiled: false"] if python_only else [])
    if dns:
        text += "dns:\n" + "".join(line + "\n" for line in dns)
    return text


class Bridge:
    def __init__(self, workdir: Path, kubeconfig: str, consul: str, mode: str = "sync",
                 switch_interval: float | None = None, workers: int | None = None,
                 python_only: bool = False) -> None:
        self.log_path = workdir / "bridge.log"
        config = workdir / "bridge.yaml"
        config.write_text(bridge_config(mode, workers, python_only))
        command = [str(VENV_BIN / "bridge")]
        if switch_interval:
            # An experiment, not the product: the same CLI with another GIL switch interval.
            command = [str(VENV_BIN / "python"), "-c",
                       "import sys; sys.setswitchinterval(float(sys.argv.pop(1))); "
                       "from bridge.cli import main; sys.exit(main(sys.argv[1:]))",
                       str(switch_interval)]
        self.args = [*command, "run", "--config", str(config),
                     "--kubeconfig", kubeconfig,
                     "--consul-addr", consul, "--dns-listen", "127.0.0.1:0",
                     "--http-listen", "127.0.0.1:0", "--cluster-id", "bench",
                     "--log-level", "warning"]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.dns_port = 0
        self.http = ""

    def start(self, timeout: float) -> None:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True,
                                     env=clean_env(), cwd=ROOT, preexec_fn=die_with_parent)
        log.close()
        threading.Thread(target=self._read, daemon=True, name="bridge-stdout").start()
        deadline = time.monotonic() + timeout
        while not (self.dns_port and self.http):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"bridge did not print its addresses; see {self.log_path}")
            try:
                line = self.lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if m := re.match(r"dns listening on 127\.0\.0\.1:(\d+)", line):
                self.dns_port = int(m.group(1))
            elif m := re.match(r"http listening on (\S+)", line):
                self.http = m.group(1)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def memory(self) -> dict[str, int]:
        """Summed over the bridge and its child processes (DNS workers): VmRSS, VmHWM and
        Pss (kB), Threads, and Processes, from /proc."""
        out: dict[str, int] = {}
        if self.proc is None:
            return out
        for pid in process_tree(self.proc.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM", "Threads"):
                        out[key] = out.get(key, 0) + int(value.split()[0])
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key == "Pss":
                        out["Pss"] = out.get("Pss", 0) + int(value.split()[0])
                out["Processes"] = out.get("Processes", 0) + 1
        return out

    def stop(self) -> None:
        stop_process(self.proc)


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from the parent pids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Unbound:
    def __init__(self, workdir: Path, services: Sequence[Svc]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "unbound.conf"
        self.conf.write_text(unbound_config(self.port, workdir, services))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = unbound_binary()
        assert binary
        log = (self.workdir / "unbound.stderr").open("w")
        self.proc = subprocess.Popen([binary, "-d", "-c", str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class PerfResult:
    server: str
    qps: float = float("nan")
    avg_ms: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    lost: int = 0
    sent: int = 0
    probes: int = 0
    probes_lost: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    run_time: float = 0.0
    others_cores: float = 0.0  # CPU used meanwhile by processes this bench did not start
    samples: list[float] = field(default_factory=list, repr=False)


def process_cpu() -> dict[int, float]:
    """CPU seconds so far of every process on the machine, by pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = cpu_seconds(int(entry.name))
    return out


def bench_pids() -> set[int]:
    """This process and every process below it (the test servers, bridge, unbound, dnsperf)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry.name))
    found, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def others_cores(before: dict[int, float], after: dict[int, float], ours: set[int],
                 seconds: float) -> float:
    """Average cores used by processes outside `ours` between two `process_cpu` readings."""
    used = sum(after[pid] - before[pid] for pid in after.keys() & before.keys()
               if pid not in ours)
    return used / seconds if seconds > 0 else 0.0


def combine(results: Sequence[PerfResult]) -> PerfResult:
    """Several runs against one server as one: rates over the summed time, merged samples."""
    if len(results) == 1:
        return results[0]
    completed = sum(r.completed for r in results)
    run_time = sum(r.run_time for r in results)
    samples = [x for r in results for x in r.samples]
    rcodes: dict[str, int] = defaultdict(int)
    for r in results:
        for code, count in r.rcodes.items():
            rcodes[code] += count
    return PerfResult(
        results[0].server, qps=completed / run_time if run_time else float("nan"),
        avg_ms=sum(r.avg_ms * r.completed for r in results) / max(completed, 1),
        p50_ms=percentile(samples, 50) * 1000, p99_ms=percentile(samples, 99) * 1000,
        lost=sum(r.lost for r in results), sent=sum(r.sent for r in results),
        probes=sum(r.probes for r in results), probes_lost=sum(r.probes_lost for r in results),
        rcodes=dict(rcodes), completed=completed, run_time=run_time, samples=samples,
        others_cores=sum(r.others_cores * r.run_time for r in results) / max(run_time, 1e-9))


def probe_latency(port: int, packets: Sequence[bytes], interval: float,
                  stop: threading.Event) -> tuple[list[float], int]:
    """Send one query every `interval` s beside the load; (round-trip times, lost).

    dnsperf's `-v` (one line per response) costs dnsperf a third of its rate on two
    cores, so latency percentiles come from this light sampler instead: its queries wait
    in the same socket queue as dnsperf's, so they see the latency dnsperf's see.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    outstanding: dict[int, float] = {}
    latencies: list[float] = []
    lost = 0
    qid = random.randrange(1 << 16)
    k = 0
    next_send = time.monotonic()
    drain_until: float | None = None
    try:
        while True:
            now = time.monotonic()
            if drain_until is None and stop.is_set():
                drain_until = now + 2.0
            if drain_until is not None and (not outstanding or now > drain_until):
                break
            if drain_until is None and now >= next_send:
                qid = (qid + 1) & 0xFFFF
                with contextlib.suppress(BlockingIOError):
                    sock.send(with_id(packets[k % len(packets)], qid))
                    outstanding[qid] = now
                k += 1
                next_send = max(next_send + interval, now)
            for old, sent in list(outstanding.items()):
                if now - sent > 2.0:
                    del outstanding[old]
                    lost += 1
            selector.select(max(0.0, min(next_send - time.monotonic(), 0.01)))
            while True:
                try:
                    reply = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                received = time.monotonic()
                sent_at = outstanding.pop(struct.unpack_from("!H", reply)[0], None)
                if sent_at is not None:
                    latencies.append(received - sent_at)
        lost += len(outstanding)
    finally:
        selector.close()
        sock.close()
    return latencies, lost


def run_dnsperf(name: str, port: int, qfile: Path, args: argparse.Namespace, workdir: Path,
                tag: str, probe_packets: Sequence[bytes], duration: float) -> PerfResult:
    """One dnsperf run (qps, average latency, lost) with the latency sampler beside it."""
    out_path = workdir / f"dnsperf-{tag}.out"
    cmd = ["dnsperf", "-B", "-d", str(qfile), "-s", "127.0.0.1", "-p", str(port),
           "-l", f"{duration:g}", "-c", str(args.clients), "-T", str(args.threads),
           "-q", str(args.outstanding), "-t", "2"]
    stop = threading.Event()
    sampled: dict[str, tuple[list[float], int]] = {}

    def sampler() -> None:
        sampled["r"] = probe_latency(port, probe_packets, args.probe_interval, stop)

    thread = threading.Thread(target=sampler, name=f"probe-{tag}", daemon=True)
    with out_path.open("w") as out:
        cpu_before, started, busy = process_cpu(), time.monotonic(), 0.0
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
        thread.start()
        try:
            proc.wait(duration + 60)
            ours = bench_pids() | {proc.pid}
            busy = others_cores(cpu_before, process_cpu(), ours, time.monotonic() - started)
        finally:
            stop.set()
            stop_process(proc, grace=2)
            thread.join(10)
    stats = parse_dnsperf(out_path.read_text())
    if "qps" not in stats:
        raise RuntimeError(f"dnsperf printed no statistics; see {out_path}")
    latencies, probes_lost = sampled.get("r", ([], 0))
    return PerfResult(name, qps=stats["qps"],
                      avg_ms=stats.get("avg_latency", float("nan")) * 1000,
                      p50_ms=percentile(latencies, 50) * 1000,
                      p99_ms=percentile(latencies, 99) * 1000,
                      lost=int(stats.get("lost", 0)), sent=int(stats.get("sent", 0)),
                      probes=len(latencies) + probes_lost, probes_lost=probes_lost,
                      rcodes={k[6:]: int(v) for k, v in stats.items() if k.startswith("rcode_")},
                      completed=int(stats.get("completed", 0)),
                      run_time=stats.get("run_time", float(duration)), samples=latencies,
                      others_cores=busy)


# ========================================================================================
# Under change: the poller
# ========================================================================================

@dataclass
class _Track:
    """One changed name: its states since the last one a poll confirmed.

    `states[0]` is the answer before the first unconfirmed change, `states[i]` the answer
    after change i, written at `written[i - 1]`. An answer must equal one of the states
    (else it mixes states); `at` is the newest state seen so far.
    """

    states: list[tuple[str, ...]]
    written: list[float]
    question: bytes
    at: int = 0
    next_send: float = 0.0
    outstanding: int | None = None
    sent_at: float = 0.0
    confirmations: int = 0

    def observe(self, answer: tuple[str, ...], received: float) -> tuple[str, list[float]]:
        """Classify one answer: ("ok" | "mixed" | "back", latencies of newly seen changes)."""
        matches = [i for i, state in enumerate(self.states) if state == answer]
        if not matches:
            return "mixed", []
        newest = matches[-1]
        if newest < self.at:
            return "back", []
        seen = [received - self.written[i - 1] for i in range(self.at + 1, newest + 1)]
        self.at = newest
        return "ok", seen

    @property
    def current(self) -> bool:
        return self.at == len(self.states) - 1


@dataclass
class ChangeResult:
    events: int = 0
    seen: int = 0
    unseen: int = 0
    latencies: list[float] = field(default_factory=list)
    answers: int = 0
    mixed: int = 0
    went_back: int = 0
    bad_rcode: int = 0
    poll_timeouts: int = 0
    chained: int = 0
    examples: list[str] = field(default_factory=list)
    generator: dict[str, Any] = field(default_factory=dict)
    unseen_floors: list[float] = field(default_factory=list)  # write -> end, for unseen ones
    settle: float = 0.0

    def delay(self, p: float) -> tuple[float, bool]:
        """The p-th percentile delay over every change, and whether it is only a lower bound
        (it falls among changes never seen, counted at the time the poller gave up)."""
        values = sorted([(v, False) for v in self.latencies]
                        + [(v, True) for v in self.unseen_floors])
        if not values:
            return float("nan"), False
        rank = max(1, -(-len(values) * p // 100))
        return values[int(min(rank, len(values))) - 1]

    def delay_text(self, p: float) -> str:
        value, floor = self.delay(p)
        return f"{'>= ' if floor else ''}{value * 1000:,.0f} ms"


def poll_changes(conn: Any, port: int, interval: float, settle: float,
                 stop: threading.Event, max_rate: float = 2000.0) -> ChangeResult:
    """Follow the cluster's change events; ask the bridge for each changed name every
    `interval` s until the answer is the newest state (then twice more, to see it stays).
    The polls together stay under `max_rate` per second (the interval stretches when many
    names wait), so polling never becomes a load of its own.

    Every answer must be exactly one state the name had (old or new; with a second change
    to a name before the first was seen, any state of the chain); the delay of a change
    is from its write in the test server to the first answer showing it (or a later
    state of the same name).
    """
    result = ChangeResult(settle=settle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    tracks: dict[str, _Track] = {}
    by_id: dict[int, str] = {}
    next_id = random.randrange(1 << 16)
    done_at: float | None = None

    def note(text: str) -> None:
        if len(result.examples) < 5:
            result.examples.append(text)

    try:
        while not stop.is_set():
            now = time.monotonic()
            while conn.poll():
                message = conn.recv()
                if message[0] == "event":
                    _, t_write, fqdn, old, new = message
                    key = fqdn.lower()
                    result.events += 1
                    track = tracks.get(key)
                    if track is None:
                        tracks[key] = _Track([tuple(old), tuple(new)], [t_write],
                                             encode_name(fqdn) + b"\x00\x01\x00\x01",
                                             next_send=now)
                    else:
                        result.chained += 1
                        track.states.append(tuple(new))
                        track.written.append(t_write)
                        track.confirmations = 0
                elif message[0] == "done":
                    result.generator = message[1]
                    done_at = now
            if done_at is not None and (not tracks or now - done_at > settle):
                break
            for key, track in tracks.items():
                if track.outstanding is not None and now - track.sent_at > 1.0:
                    result.poll_timeouts += 1
                    by_id.pop(track.outstanding, None)
                    track.outstanding = None
                if track.outstanding is None and now >= track.next_send:
                    next_id = (next_id + 1) & 0xFFFF
                    by_id[next_id] = key
                    track.outstanding, track.sent_at = next_id, now
                    with contextlib.suppress(BlockingIOError):
                        sock.send(struct.pack("!HHHHHH", next_id, 0x0100, 1, 0, 0, 0)
                                  + track.question)
            selector.select(0.001)
            while True:
                try:
                    reply = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                received = time.monotonic()
                parsed = a_answer(reply)
                if parsed is None:
                    continue
                qid, rcode, addresses = parsed
                key = by_id.pop(qid, "")
                track = tracks.get(key)
                if track is None or track.outstanding != qid:
                    continue
                track.outstanding = None
                track.next_send = track.sent_at + max(interval, len(tracks) / max_rate)
                result.answers += 1
                if rcode != 0:
                    result.bad_rcode += 1
                    note(f"{key}: rcode {rcode}")
                    continue
                verdict, latencies = track.observe(addresses, received)
                result.latencies += latencies
                result.seen += len(latencies)
                if verdict == "mixed":
                    result.mixed += 1
                    note(f"{key}: {addresses} is none of the states {track.states}")
                elif verdict == "back":
                    result.went_back += 1
                    note(f"{key}: {addresses}: an older state after a newer one")
                elif track.current:
                    track.confirmations += 1
                    if track.confirmations >= 3:
                        del tracks[key]
        ended = time.monotonic()
        for track in tracks.values():
            result.unseen += len(track.states) - 1 - track.at
            result.unseen_floors += [ended - t for t in track.written[track.at:]]
    finally:
        selector.close()
        sock.close()
    return result


# ========================================================================================
# The run
# ========================================================================================

@dataclass
class RunReport:
    services: int
    endpoints: int
    consul: str = ""
    load_seconds: float = 0.0
    ready_seconds: float = 0.0
    idle_seconds: float = 0.0
    steady: list[PerfResult] = field(default_factory=list)
    change_perf: PerfResult | None = None
    change: ChangeResult | None = None
    checks: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def bench_one(n: int, args: argparse.Namespace, root: Path) -> RunReport:
    report = RunReport(n, args.endpoints, args.consul)
    workdir = root / f"n{n}"
    workdir.mkdir(parents=True, exist_ok=True)
    services = dataset(n, args.endpoints)
    queries = make_queries(services, args.queries, args.seed)
    qfile = workdir / "queries.bin"
    qfile.write_bytes(binary_query_file(queries))
    probe = [q.wire for q in random.Random(args.seed + 2).sample(queries, min(2000, len(queries)))]
    counts = defaultdict(int)
    for q in queries:
        counts[q.kind + ("+edns" if q.edns else "")] += 1
    say(f"N={n}: query file {qfile} ({len(queries)} queries: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")

    cluster = Cluster(services, workdir, args.seed)
    bridge: Bridge | None = None
    unbound: Unbound | None = None
    try:
        say(f"N={n}: loading {n} services x {args.endpoints} pods into the Kubernetes test server")
        info = cluster.start(timeout=args.timeout)
        report.load_seconds = info["load_seconds"]
        say(f"N={n}: loaded in {info['load_seconds']:.1f}s: {info['counts']}")
        if info["first_slice_addresses"] != sorted(services[0].ips):
            raise RuntimeError(f"EndpointSlice of {services[0].fqdn} holds "
                               f"{info['first_slice_addresses']}, not {sorted(services[0].ips)}")
        unbound = Unbound(workdir, services)
        unbound.start()
        bridge = Bridge(workdir, info["kubeconfig"], info["consul"], args.consul,
                        args.switch_interval, args.workers, args.python_only)
        started = time.monotonic()
        bridge.start(timeout=60)
        say(f"N={n}: bridge pid {bridge.proc.pid if bridge.proc else '?'}: dns 127.0.0.1:"
            f"{bridge.dns_port}, http {bridge.http}; waiting for /readyz")
        wait_for("bridge /readyz", bridge.ready, args.timeout, 0.2, bridge.alive)
        probes = [services[0], services[-1], services[len(services) // 2]]
        wait_for("bridge DNS answers", lambda: all(answers_a(bridge.dns_port, s) for s in probes),
                 args.timeout, 0.1, bridge.alive)
        report.ready_seconds = time.monotonic() - started
        say(f"N={n}: bridge ready and answering in {report.ready_seconds:.1f}s; "
            f"memory {bridge.memory()}; waiting for it to go idle (Consul sync done)")
        assert bridge.proc is not None
        wait_idle("bridge", bridge.proc.pid, args.timeout)
        report.idle_seconds = time.monotonic() - started
        report.memory["idle"] = bridge.memory()
        say(f"N={n}: bridge idle {report.idle_seconds:.1f}s after start; "
            f"memory {report.memory['idle']}")
        wait_for("unbound answers", lambda: all(answers_a(unbound.port, s) for s in probes),
                 120, 0.1, unbound.alive)
        say(f"N={n}: unbound (pid {unbound.proc.pid if unbound.proc else '?'}) answering on "
            f"127.0.0.1:{unbound.port}")

        if args.scenario in ("steady", "all"):
            # Alternate the servers in rounds, so drift in the machine's load hits both alike.
            runs: dict[str, list[PerfResult]] = {"bridge": [], "unbound": []}
            part = args.duration / args.rounds
            for round_ in range(args.rounds):
                for name, port in (("bridge", bridge.dns_port), ("unbound", unbound.port)):
                    say(f"N={n}: dnsperf -> {name}, {part:g}s (round {round_ + 1}/{args.rounds})")
                    one = run_dnsperf(name, port, qfile, args, workdir,
                                      f"steady-{name}-{round_ + 1}", probe, part)
                    say(f"N={n}:   {one.qps:,.0f} qps, avg {one.avg_ms:.2f} ms, "
                        f"p99 {one.p99_ms:.2f} ms, lost {one.lost}; other processes on the "
                        f"machine used {one.others_cores:.2f} cores meanwhile")
                    runs[name].append(one)
            for name, results in runs.items():
                result = combine(results)
                say(f"N={n}: {name}: {result.qps:,.0f} qps, avg {result.avg_ms:.2f} ms, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms (of {result.probes} "
                    f"samples, {result.probes_lost} lost), lost {result.lost}/{result.sent}, "
                    f"{result.rcodes}")
                report.steady.append(result)
            report.memory["after steady"] = bridge.memory()
        for name, port in (("bridge", bridge.dns_port), ("unbound", unbound.port)):
            report.checks[name] = check_sample(port, queries, services, args.sample, args.seed)
            checked, bad, examples = report.checks[name]
            say(f"N={n}: {name}: {checked} sampled answers checked, {bad} incorrect"
                + (f": {examples}" if examples else ""))

        if args.scenario in ("change", "all"):
            say(f"N={n}: under change: {args.change_rate} endpoint changes/s for "
                f"{args.duration}s while dnsperf -> bridge")
            stop = threading.Event()
            holder: dict[str, ChangeResult] = {}

            def poller() -> None:
                holder["r"] = poll_changes(cluster.conn, bridge.dns_port, args.poll_interval,
                                           settle=args.settle, stop=stop)

            thread = threading.Thread(target=poller, name="change-poller", daemon=True)
            cluster.conn.send(("change", args.change_rate, args.duration))
            thread.start()
            try:
                report.change_perf = run_dnsperf("bridge", bridge.dns_port, qfile, args, workdir,
                                                 "change-bridge", probe, args.duration)
            finally:
                thread.join(args.duration + args.settle + 60)
                stop.set()
                thread.join(5)
            report.change = holder.get("r")
            report.memory["after change"] = bridge.memory()
            perf, change = report.change_perf, report.change
            say(f"N={n}: bridge under change: {perf.qps:,.0f} qps, avg {perf.avg_ms:.2f} ms, "
                f"p50 {perf.p50_ms:.2f} ms, p99 {perf.p99_ms:.2f} ms (of {perf.probes} samples, "
                f"{perf.probes_lost} lost), lost {perf.lost}/{perf.sent}, {perf.rcodes}")
            if change:
                say(f"N={n}: changes: {change.events} written ({change.generator}), "
                    f"{change.seen} seen in DNS, {change.unseen} not seen; watch->DNS p50 "
                    f"{change.delay_text(50)}, p99 {change.delay_text(99)}; {change.answers} poll "
                    f"answers, {change.mixed} mixed, {change.went_back} went back, "
                    f"{change.bad_rcode} bad rcode, {change.chained} changed again before seen"
                    + (f": {change.examples}" if change.examples else ""))
        report.memory["end"] = bridge.memory()
        say(f"N={n}: bridge memory {report.memory['end']}")
    finally:
        for part in (bridge, unbound):
            if part is not None:
                part.stop()
        cluster.stop()
    return report


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


def summary(reports: Sequence[RunReport]) -> str:
    lines = ["", "=" * 100, "SUMMARY (bench/dns)", "=" * 100]
    header = (f"{'N':>6} {'scenario':<8} {'server':<8} {'qps':>10} {'avg ms':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'lost':>14} {'ratio':>6} {'others':>7}")
    lines += [header, "-" * len(header)]
    for r in reports:
        unbound = next((p for p in r.steady if p.server == "unbound"), None)
        rows: list[tuple[str, PerfResult]] = [("steady", p) for p in r.steady]
        if r.change_perf:
            rows.append(("change", r.change_perf))
        for scenario, p in rows:
            ratio = "" if p.server == "unbound" or unbound is None else f"{p.qps / unbound.qps:.2f}"
            lines.append(f"{r.services:>6} {scenario:<8} {p.server:<8} {p.qps:>10,.0f} "
                         f"{_ms(p.avg_ms):>8} {_ms(p.p50_ms):>8} {_ms(p.p99_ms):>8} "
                         f"{f'{p.lost}/{p.sent}':>14} {ratio:>6} {p.others_cores:>7.2f}")
    lines.append("")
    lines.append("qps, avg, lost: dnsperf; p50/p99: a sampler querying every few ms beside dnsperf; "
                 "ratio = bridge qps / steady unbound qps;")
    lines.append("others = cores used meanwhile by processes this bench did not start (of 2): "
                 "above ~0.2 the numbers are disturbed")
    lines.append("")
    for r in reports:
        lines.append(f"N={r.services} x {r.endpoints} endpoints (bridge Consul mode {r.consul}): "
                     f"test-server load {r.load_seconds:.1f}s; bridge ready+answering "
                     f"{r.ready_seconds:.1f}s, idle (initial sync done) {r.idle_seconds:.1f}s")
        for name, (checked, bad, examples) in r.checks.items():
            lines.append(f"  correctness {name:<8}: {checked} sampled answers, {bad} incorrect"
                         + (f" e.g. {examples[:2]}" if examples else ""))
        if r.change:
            c = r.change
            g = c.generator
            lines.append(
                f"  under change: {c.events} endpoint changes in {g.get('seconds', 0):.1f}s "
                f"({c.events / max(g.get('seconds', 1), 1e-9):.0f}/s; test-server write p50 "
                f"{g.get('write_p50_ms', 0):.1f} ms p99 {g.get('write_p99_ms', 0):.1f} ms)")
            lines.append(
                f"  watch event -> new DNS answer: p50 {c.delay_text(50)}, p99 {c.delay_text(99)}, "
                f"max {c.delay_text(100)} ({c.seen} seen, {c.unseen} not seen within "
                f"{c.settle:.0f}s after the last change: counted as '>=' that wait)")
            lines.append(f"  answers polled: {c.answers}; mixed (neither old nor new): {c.mixed}; "
                         f"old after new: {c.went_back}; bad rcode: {c.bad_rcode}; poll timeouts: "
                         f"{c.poll_timeouts}")
        for when, mem in r.memory.items():
            if mem:
                lines.append(f"  bridge memory {when:<13}: VmRSS {mem.get('VmRSS', 0) / 1024:.0f} MB, "
                             f"VmHWM {mem.get('VmHWM', 0) / 1024:.0f} MB, "
                             f"Pss {mem.get('Pss', 0) / 1024:.0f} MB, "
                             f"{mem.get('Processes', 1)} processes, threads {mem.get('Threads', 0)} "
                             f"(sums over the processes)")
        for note in r.notes:
            lines.append(f"  note: {note}")
    lines += ["", "TARGETS (issue 8)"]
    lines += [f"  {line}" for line in targets(reports)]
    lines.append("=" * 100)
    return "\n".join(lines)


def targets(reports: Sequence[RunReport]) -> list[str]:
    """The issue's targets against these numbers: met or not, and by how much."""
    out = []
    for r in reports:
        unbound = next((p for p in r.steady if p.server == "unbound"), None)
        rows = [("steady", p) for p in r.steady if p.server == "bridge"]
        rows += [("change", r.change_perf)] if r.change_perf else []
        for scenario, p in rows:
            if unbound:
                ratio = p.qps / unbound.qps
                verdict = "met" if ratio >= 1.0 else ("floor met" if ratio >= 0.8 else "NOT met")
                out.append(f"N={r.services} {scenario}: throughput ratio {ratio:.2f} "
                           f"(target >= 1.0, never < 0.8): {verdict}")
        wrong = sum(bad for name, (_, bad, _) in r.checks.items() if name == "bridge")
        if "bridge" in r.checks:
            out.append(f"N={r.services}: incorrect answers {wrong} (target 0): "
                       f"{'met' if wrong == 0 else 'NOT met'}")
        if r.change and (r.change.latencies or r.change.unseen_floors):
            p99 = r.change.delay(99)[0] * 1000
            out.append(f"N={r.services}: watch -> DNS p99 {r.change.delay_text(99)} (target < 100 ms): "
                       f"{'met' if p99 < 100 else f'NOT met ({p99 / 100:,.0f}x)'}")
            broken = r.change.mixed + r.change.went_back
            out.append(f"N={r.services}: answers mixing states {broken} (target 0): "
                       f"{'met' if broken == 0 else 'NOT met'}")
        if r.services >= 10_000 and r.endpoints >= 5:
            rss = max((m.get("VmRSS", 0) for m in r.memory.values()), default=0) / 1024
            hwm = max((m.get("VmHWM", 0) for m in r.memory.values()), default=0) / 1024
            out.append(f"N={r.services} x {r.endpoints}: resident memory {rss:.0f} MB (peak "
                       f"{hwm:.0f} MB) (target < 300 MB): "
                       f"{'met' if hwm < 300 else f'NOT met ({hwm / 300:.1f}x at peak)'}")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/dns", description="DNS benchmark: bridge vs unbound (issue 8).")
    parser.add_argument("--services", default="1000,10000",
                        help="comma-separated N values (default 1000,10000)")
    parser.add_argument("--endpoints", type=int, default=5, help="pods per service (default 5)")
    parser.add_argument("--duration", type=int, default=20,
                        help="seconds of dnsperf per server and scenario (default 20)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="steady: split the duration into this many alternating runs (2)")
    parser.add_argument("--scenario", choices=("steady", "change", "all"), default="all")
    parser.add_argument("--consul", choices=sorted(CONSUL_MODES), default="push",
                        help="bridge's Consul sync: off (DNS only), push (Kubernetes -> Consul; "
                        "the default), sync (both ways: one blocking query per Consul service)")
    parser.add_argument("--queries", type=int, default=100_000, help="queries in the file")
    parser.add_argument("--clients", type=int, default=1, help="dnsperf -c (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="dnsperf -T (default 1)")
    parser.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    parser.add_argument("--change-rate", type=float, default=100.0, help="endpoint changes/s")
    parser.add_argument("--probe-interval", type=float, default=0.002,
                        help="seconds between latency samples beside dnsperf (default 0.002)")
    parser.add_argument("--poll-interval", type=float, default=0.005,
                        help="seconds between polls of one changed name (default 0.005)")
    parser.add_argument("--settle", type=float, default=150.0,
                        help="after the last change, seconds to wait for DNS to show all")
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="experiment: run the bridge with sys.setswitchinterval(S)")
    parser.add_argument("--python-only", action="store_true",
                        help="the bridge without its compiled UDP path (dns.compiled: false)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="the bridge's dns.workers (default: the bridge's default)")
    parser.add_argument("--sample", type=int, default=500, help="answers checked per server")
    parser.add_argument("--timeout", type=float, default=600, help="deadline for each setup step")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(x) for x in str(args.services).split(",") if x.strip()]
    except ValueError:
        parser.error(f"--services: not a list of numbers: {args.services!r}")
    if not args.sizes or min(args.sizes) < 1 or not 1 <= args.endpoints <= 100:
        parser.error("--services needs N >= 1 and --endpoints 1..100")
    if args.rounds < 1 or args.duration < args.rounds:
        parser.error("--rounds must be between 1 and --duration")
    if args.endpoints < 2:
        parser.error("--endpoints must be at least 2 (changes keep one endpoint ready)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally`, which stop the processes

    signal.signal(signal.SIGTERM, terminate)
    ensure_tools()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-dns-"))
    root.mkdir(parents=True, exist_ok=True)
    say(f"work directory {root}; {os.cpu_count()} cores; dnsperf -B -l {args.duration} "
        f"-c {args.clients} -T {args.threads} -q {args.outstanding} -t 2; "
        f"latency sampled every {args.probe_interval * 1000:.0f} ms beside it")
    reports: list[RunReport] = []
    try:
        for n in args.sizes:
            reports.append(bench_one(n, args, root))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if reports:
            print(summary(reports), flush=True)
        if args.workdir and reports:
            (root / "summary.json").write_text(json.dumps(
                [_jsonable(r) for r in reports], indent=1, default=str))
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _jsonable(report: RunReport) -> dict[str, Any]:
    out = dict(report.__dict__)
    if report.change:
        change = dict(report.change.__dict__)
        change["latency_p50"] = report.change.delay_text(50)
        change["latency_p99"] = report.change.delay_text(99)
        change.pop("latencies")
        change.pop("unseen_floors")
        out["change"] = change
    out["steady"] = [{k: v for k, v in p.__dict__.items() if k != "samples"} for p in report.steady]
    out["change_perf"] = ({k: v for k, v in report.change_perf.__dict__.items() if k != "samples"}
                          if report.change_perf else None)
    return out


if __name__ == "__main__":
    sys.exit(main())
