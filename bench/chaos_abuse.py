"""DNS abuse for the chaos bench: fuzzed packets, a TCP connection flood past
`dns.max_tcp_connections`, slow TCP clients, and queries claiming a huge EDNS payload; with the
UDP query rate a closed-loop client gets before and during it all.

Each load runs in a process of its own (spawned: the bench has threads), so none of them slows
the measuring client. A sibling module of chaos_bench.py, imported with bench/ on sys.path.
"""

from __future__ import annotations

import multiprocessing
import random
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from chaos_world import Cluster, Kube
from common import headless_service, pod
from dns_bench import query_wire

BIG_PODS = 120  # A records: some 1,900 bytes of answer, past the 1,232 bytes the bridge offers
EDNS_CLAIMS = (4096, 65535)
UDP_LIMIT_NO_EDNS = 512
UDP_PAYLOAD = 1232  # dns.udp_payload's default: what a UDP answer is cut to


def add_big_service(kube: Kube, cluster: Cluster) -> str:
    """A headless Service with BIG_PODS ready Pods, kept out of Consul (service-sync false);
    its name."""
    namespace, name = "chaos-big", "big"
    kube.admin("apply", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for j in range(BIG_PODS):
        kube.admin("apply", pod(namespace, name, j, cluster.fresh_ip(), True))
    service = headless_service(namespace, name)
    service["metadata"]["annotations"] = {"consul.hashicorp.com/service-sync": "false"}
    kube.admin("apply", service)
    return f"{name}.{namespace}.svc.cluster.local."


# ========================================================================================
# The loads, each in a process of its own
# ========================================================================================

def blast(port: int, names: list[str], seconds: float, conn: Any) -> None:
    """Closed loop: 16 queries in flight, one more for each answer; sends answers per second."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.5)
    wires = [query_wire(n, 1, edns=False) for n in names]
    answered = 0
    qid = 0

    def send() -> None:
        nonlocal qid
        qid = (qid + 1) & 0xFFFF
        sock.send(struct.pack("!H", qid) + wires[qid % len(wires)][2:])

    started = time.monotonic()
    for _ in range(16):
        send()
    while time.monotonic() - started < seconds:
        try:
            sock.recv(65535)
        except TimeoutError:
            for _ in range(16):
                send()
            continue
        answered += 1
        send()
    conn.send(answered / (time.monotonic() - started))


def mutate(rng: random.Random, wire: bytes) -> bytes:
    """A broken query: bytes flipped, cut, extended, counts lied about, a name pointing at
    itself, a response bit, an unknown opcode, or plain noise."""
    packet = bytearray(wire)
    how = rng.randrange(9)
    if how == 0:
        for _ in range(rng.randint(1, 8)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
    elif how == 1:
        del packet[rng.randrange(len(packet)):]
    elif how == 2:
        packet += rng.randbytes(rng.randint(1, 600))
    elif how == 3:
        packet[4:12] = struct.pack("!HHHH", *(rng.randrange(65536) for _ in range(4)))
    elif how == 4:
        packet[12:14] = b"\xc0\x0c"  # a compression pointer to itself
    elif how == 5:
        packet[2] |= 0x80  # QR: a response, which must never be answered
    elif how == 6:
        packet[2] = (packet[2] & 0x87) | (rng.randrange(16) << 3)
    elif how == 7:
        packet[12] = rng.choice((63, 64, 127, 255))  # label lengths past the rules
    else:
        packet = bytearray(rng.randbytes(rng.randint(0, 700)))
    if packet == wire:  # a flip that wrote the byte already there
        packet.append(0)
    return bytes(packet)


def fuzz(port: int, names: list[str], count: int, seed: int, conn: Any) -> None:
    """Sends `count` mutated queries as fast as the socket takes them; sends (sent, replies)."""
    rng = random.Random(seed)
    base = [query_wire(n, t, edns=e) for n in names[:10] for t in (1, 28, 33, 255, 6, 12, 16)
            for e in (False, True)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    sent = replies = 0
    for i in range(count):
        packet = mutate(rng, rng.choice(base))
        while True:
            try:
                sock.send(packet)
                sent += 1
                break
            except BlockingIOError:
                select.select([], [sock], [], 0.01)
            except OSError:
                break  # ICMP unreachable from an earlier packet: go on
        if i % 32 == 0:
            replies += _drain(sock)
    time.sleep(0.5)
    conn.send((sent, replies + _drain(sock)))


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65535)
            count += 1
        except (BlockingIOError, OSError):
            return count


def tcp_flood(port: int, count: int, hold: float, conn: Any) -> None:
    """Opens `count` TCP connections and holds them idle for `hold` s; sends (opened, closed by
    the server)."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    time.sleep(hold)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    conn.send((len(socks), closed))


def slow_clients(port: int, count: int, seconds: float, wire: bytes, conn: Any) -> None:
    """`count` clients sending a length-prefixed query one byte every 0.5 s for `seconds`;
    sends (clients, closed by the server)."""
    message = struct.pack("!H", len(wire)) + wire
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    closed: set[int] = set()
    started = time.monotonic()
    position = 0
    while time.monotonic() - started < seconds and position < len(message):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                s.send(message[position:position + 1])
            except OSError:
                closed.add(i)
        position += 1
        time.sleep(0.5)
    for s in socks:
        s.close()
    conn.send((len(socks), len(closed)))


# ========================================================================================
# Checks from the bench process
# ========================================================================================

def tcp_query(port: int, wire: bytes, timeout: float = 3.0) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            head = _read(s, 2)
            return _read(s, struct.unpack("!H", head)[0]) if head else None
    except OSError:
        return None


def _read(s: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def edns_query(name: str, payload: int, qid: int) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split(".")) + b"\x00"
    return head + qname + struct.pack("!HH", 1, 1) + struct.pack("!BHHIH", 0, 41, payload, 0, 0)


def check_sizes(port: int, name: str, rounds: int = 50) -> tuple[int, int, int]:
    """Asks for the big name claiming huge EDNS payloads (and none); (answers, largest answer,
    answers past the size the query allows or our own cap)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1)
    answers = largest = over = 0
    plain = query_wire(name, 1, edns=False)
    for i in range(rounds):
        for claim in (*EDNS_CLAIMS, 0):
            wire = edns_query(name, claim, i) if claim else struct.pack("!H", i) + plain[2:]
            sock.send(wire)
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                continue
            answers += 1
            largest = max(largest, len(reply))
            if len(reply) > (UDP_PAYLOAD if claim else UDP_LIMIT_NO_EDNS):
                over += 1
    sock.close()
    return answers, largest, over


@dataclass
class AbuseResult:
    qps_before: float = 0.0
    qps_during: float = 0.0
    fuzz_sent: int = 0
    fuzz_replies: int = 0
    tcp_opened: int = 0
    tcp_closed: int = 0
    slow: int = 0
    slow_closed: int = 0
    sizes: tuple[int, int, int] = (0, 0, 0)
    tcp_after: bool = False
    problems: list[str] = field(default_factory=list)

    def figures(self) -> list[str]:
        answers, largest, over = self.sizes
        return [f"UDP {self.qps_before:,.0f} qps before, {self.qps_during:,.0f} during",
                f"fuzz {self.fuzz_sent:,} sent, {self.fuzz_replies:,} answered",
                f"TCP flood {self.tcp_opened} connected, {self.tcp_closed} closed by the bridge",
                f"slow clients {self.slow}, {self.slow_closed} cut",
                f"EDNS 65535: {answers} answers, largest {largest} B, {over} oversized",
                f"TCP after: {'answers' if self.tcp_after else 'NO ANSWER'}"]

    def failures(self) -> list[str]:
        out = list(self.problems)
        if self.sizes[2]:
            out.append(f"{self.sizes[2]} UDP answers larger than the query allows")
        if not self.tcp_after:
            out.append("no TCP answer after the abuse")
        if self.qps_during <= 0:
            out.append("UDP answering stopped during the abuse")
        return out


def abuse(port: int, names: list[str], big: str, *, fuzz_count: int, seconds: float, max_tcp: int,
          seed: int = 1) -> AbuseResult:
    ctx = multiprocessing.get_context("spawn")
    result = AbuseResult()

    def start(target: Any, *args: Any) -> tuple[Any, Any]:
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=target, args=(*args, theirs), daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def collect(process: Any, conn: Any, limit: float) -> Any:
        answer = conn.recv() if conn.poll(limit) else None
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        return answer

    measure = start(blast, port, names, seconds)
    result.qps_before = collect(*measure, seconds + 30) or 0.0
    loads = [start(fuzz, port, names, fuzz_count, seed),
             start(tcp_flood, port, max_tcp * 3, seconds),
             start(slow_clients, port, 20, seconds, query_wire(names[0], 1, edns=False))]
    measure = start(blast, port, names, seconds)
    result.sizes = check_sizes(port, big)
    result.qps_during = collect(*measure, seconds + 30) or 0.0
    fuzzed, flood, slow = (collect(p, c, seconds + 120) for p, c in loads)
    result.fuzz_sent, result.fuzz_replies = fuzzed or (0, 0)
    result.tcp_opened, result.tcp_closed = flood or (0, 0)
    result.slow, result.slow_closed = slow or (0, 0)
    for what, got in (("fuzzer", fuzzed), ("TCP flood", flood), ("slow clients", slow)):
        if got is None:
            result.problems.append(f"the {what} did not finish")
    reply = tcp_query(port, query_wire(big, 1, edns=False))
    result.tcp_after = reply is not None and len(reply) > UDP_PAYLOAD
    return result
